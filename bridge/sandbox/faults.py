"""Fault injection: latency, random failures and a scripted queue of failures for tests."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Response, request

from bridge.sandbox.ratelimit import Quota
from bridge.sandbox.responses import error_body, json_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Every kind a test may script; "hang" stalls then answers, "reset" drops the connection.
FAULT_KINDS = ("500", "502", "503", "429", "hang", "reset")
# Random faults stick to answers a well-behaved client can retry without waiting on a socket.
RANDOM_FAULT_KINDS = ("500", "502", "503", "429")
# Marks a request whose connection the WSGI middleware must drop instead of answering.
DROP_CONNECTION_KEY = "sotion_sandbox.drop_connection"
# Injected 5xx bodies are flat, like an upstream proxy's, not the API's nested errors.
INJECTED_ERROR_BODY = {"error": "Injected fault"}


@dataclass
class ScriptedFault:
    """A queued fault: `remaining` more requests matching `method`/`path_prefix` will get it."""

    kind: str
    remaining: int
    method: str | None = None
    path_prefix: str | None = None

    def matches(self, method: str, paths: Iterable[str]) -> bool:
        """Whether a request with this method and (full or mount-relative) paths is targeted."""
        if self.method is not None and self.method != method.upper():
            return False
        return self.path_prefix is None or any(p.startswith(self.path_prefix) for p in paths)

    def to_json(self) -> dict[str, Any]:
        """The fault as shown by the control endpoints."""
        return {
            "kind": self.kind,
            "remaining": self.remaining,
            "method": self.method,
            "path_prefix": self.path_prefix,
        }


class FaultInjector:
    """Decides, request by request, whether to slow down or break the answer."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        hang_seconds: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.latency = latency
        self.fault_rate = fault_rate
        self.hang_seconds = hang_seconds
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._queue: list[ScriptedFault] = []
        self._released = threading.Event()

    def inject(
        self,
        kind: str | int,
        count: int = 1,
        method: str | None = None,
        path_prefix: str | None = None,
    ) -> ScriptedFault:
        """Queue `count` faults of `kind` for requests matching `method` and `path_prefix`."""
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}; got {kind!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"fault count must be a positive integer; got {count!r}")
        fault = ScriptedFault(kind, count, method.upper() if method else None, path_prefix or None)
        with self._lock:
            self._queue.append(fault)
        return fault

    def clear(self) -> int:
        """Drop every queued fault; returns how many requests they would still have hit."""
        with self._lock:
            dropped = sum(fault.remaining for fault in self._queue)
            self._queue.clear()
            return dropped

    def pending(self) -> list[ScriptedFault]:
        """Copies of the queued faults, oldest first."""
        with self._lock:
            return [ScriptedFault(**vars(fault)) for fault in self._queue]

    def take(self, method: str, *paths: str) -> str | None:
        """The fault kind this request gets, if any: scripted first (FIFO), then random."""
        with self._lock:
            for index, fault in enumerate(self._queue):
                if fault.matches(method, paths):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        del self._queue[index]
                    return fault.kind
            if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
                return self._rng.choice(RANDOM_FAULT_KINDS)
        return None

    def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server is shutting down."""
        if seconds > 0:
            self._released.wait(seconds)

    def release(self) -> None:
        """End every current and future pause (called when the server stops)."""
        self._released.set()

    def resume(self) -> None:
        """Make pauses sleep again (called when a server starts)."""
        self._released.clear()


def apply_faults(injector: FaultInjector, quota: Quota, relative_path: str) -> Response | None:
    """Apply latency and any fault to the current request; a response short-circuits the view."""
    injector.pause(injector.latency)
    kind = injector.take(request.method, request.path, relative_path)
    if kind is None:
        return None
    if kind == "hang":
        injector.pause(injector.hang_seconds)
        return None
    if kind == "reset":
        request.environ[DROP_CONNECTION_KEY] = True
        return Response(status=500)
    if kind == "429":
        spent = quota.exhausted()
        headers = {**spent.headers(), "Retry-After": str(spent.retry_after)}
        return json_response(error_body("rate_limited", "Too many requests"), 429, headers)
    return json_response(INJECTED_ERROR_BODY, int(kind))


class ConnectionDropper:
    """WSGI middleware: closes the socket without any response when a fault asked for it."""

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Run the app, then drop the connection if the request was marked for a reset."""
        body = self._app(environ, start_response)
        if not environ.get(DROP_CONNECTION_KEY):
            return body
        close = getattr(body, "close", None)
        if close is not None:
            close()
        sock = environ.get("werkzeug.socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                # Zero linger makes the server's eventual close() send a TCP RST.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
        # Werkzeug treats a ConnectionError from the app as a dropped connection: nothing is sent.
        raise ConnectionAbortedError("sandbox fault: connection reset")
