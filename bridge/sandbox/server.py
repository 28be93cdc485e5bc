"""The sandbox on a real socket: in a daemon thread for tests, in the foreground for the CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from bridge.sandbox.app import create_sandbox_app
from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.extension import EXTENSION_KEY, SandboxExtension
from bridge.sandbox.faults import FaultInjector
from bridge.sandbox.responses import API_MOUNTS
from bridge.sandbox.state import SandboxState

# How long stop() waits for the serving thread before giving up on it (it is a daemon).
STOP_TIMEOUT_SECONDS = 5.0
# How often the serving loop checks for shutdown: stop() waits up to this long.
POLL_INTERVAL_SECONDS = 0.05


class _LoggingRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, subclassed so make_server's HTTP/1.1 switch stays off the base class."""


class _QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without the access log line per request (noise in test output)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class SandboxServer:
    """A Sotion sandbox listening on `host:port` (port 0 picks a free port)."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        state: SandboxState | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_requests: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SandboxConfig()
        self.app: Flask = create_sandbox_app(self.config, state, clock=clock)
        extension = self.app.extensions[EXTENSION_KEY]
        assert isinstance(extension, SandboxExtension)
        self._extension = extension
        self._host = host
        self._port = port
        self._handler = _LoggingRequestHandler if log_requests else _QuietRequestHandler
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SandboxState:
        """The sandbox's data, for in-process assertions and setup."""
        return self._extension.state

    @property
    def faults(self) -> FaultInjector:
        """The fault injector, for scripting failures in-process."""
        return self._extension.faults

    @property
    def port(self) -> int:
        """The bound port (the real one once started, even if 0 was asked for)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        """`http://host:port` without any API path."""
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The v1 API base URL, e.g. `http://127.0.0.1:PORT/api/v1`."""
        return f"{self.root_url}{API_MOUNTS[0]}"

    @property
    def legacy_url(self) -> str | None:
        """The legacy API base URL, or None when legacy mode is off."""
        if not self.config.legacy_enabled:
            return None
        return f"{self.root_url}/legacy/{self.config.legacy_key}/sites/{self.config.legacy_site_id}"

    def start(self) -> SandboxServer:
        """Bind the socket and serve from a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("sandbox server already started")
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_SECONDS},
            name=f"sotion-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake any hanging requests and close the socket."""
        server, thread = self._server, self._thread
        self.faults.release()
        if server is not None and thread is not None:
            server.shutdown()
            thread.join(STOP_TIMEOUT_SECONDS)
        if server is not None:
            server.server_close()
        self._server, self._thread = None, None

    def serve_forever(self, ready: Callable[[SandboxServer], None] | None = None) -> None:
        """Serve in the foreground until interrupted (Ctrl-C); `ready` runs once bound."""
        server = self._bind()
        if ready is not None:
            ready(self)
        try:
            # Werkzeug's serve_forever swallows KeyboardInterrupt and closes the socket.
            server.serve_forever()
        finally:
            self.faults.release()
            server.server_close()
            self._server = None

    def __enter__(self) -> SandboxServer:
        """Start on entry."""
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        """Stop on exit."""
        self.stop()

    def _bind(self) -> BaseWSGIServer:
        if self._server is not None:
            raise RuntimeError("sandbox server already bound")
        self.faults.resume()
        self._server = make_server(
            self._host, self._port, self.app, threaded=True, request_handler=self._handler
        )
        return self._server
