"""gunicorn settings the command lines do not carry (``-c python:bridge.gunicorn_conf``).

The Procfile's web process, the Dockerfile and ``bridge run`` all load this module. Its
``on_starting`` hook runs the web's start-up (``.env``, settings, banner) once, in the
master, before any worker exists.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding
from gunicorn.workers.ggevent import GeventWorker

from bridge.errors import SettingsError
from bridge.redact import RedactingFormatter, redact
from bridge.startup import StartupError, prepare_web


class BridgeGeventWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, answering 400 to a Transfer-Encoding it does not know.

    gunicorn answers 501 there (RFC 9112's choice), but the bridge's contract is that
    nothing a client sends yields a 5xx: an unknown coding is the client's error.
    """

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """As gunicorn does, with an unknown transfer coding as a bad header (400)."""
        if isinstance(exc, UnsupportedTransferCoding):
            exc = InvalidHeader("Transfer-Encoding", req)
        super().handle_error(req, client, addr, exc)


# gevent: every connection is a greenlet, so slow or idle clients (one byte a second,
# or none) cost memory, not a worker; the sync and threaded workers are stalled by a
# few dozen of them (measured: README, "Security"). Webhook handling is I/O (Redis).
worker_class = "bridge.gunicorn_conf.BridgeGeventWorker"
# Simultaneous connections per worker process.
worker_connections = 1000
# Idle keep-alive connections are closed after this many seconds.
keepalive = 5
# On SIGTERM gunicorn stops accepting connections and lets in-flight requests finish for
# this long: webhooks take milliseconds, and Heroku sends SIGKILL 30 s after SIGTERM.
graceful_timeout = 20
# Request lines and headers are small for every provider; past these, 4xx at once.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with every line redacted (a bad request line or a worker
    timeout would otherwise write the Gumroad ping URL, token included)."""

    def setup(self, cfg: Any) -> None:
        """Set gunicorn's handlers up, then make each of them redact."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                current = handler.formatter or logging.Formatter()
                handler.setFormatter(RedactingFormatter(current._fmt, current.datefmt))


logger_class = RedactingLogger


def on_starting(server: Any) -> None:
    """gunicorn's master, before any worker: read ``.env``, validate the settings and the
    products file, log the banner once.

    A bad value ends gunicorn here with one line naming the variable; in the workers it
    would be a traceback per worker, then "Worker failed to boot".
    """
    try:
        prepare_web()
    except (SettingsError, StartupError) as exc:
        raise SystemExit(f"Error: {redact(str(exc))}") from None
