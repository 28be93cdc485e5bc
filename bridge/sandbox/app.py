"""The sandbox's Flask app factory: wiring, standard headers and JSON error handling."""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from bridge.sandbox import api, control, legacy
from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.errors import SandboxError
from bridge.sandbox.extension import EXTENSION_KEY, SandboxExtension, current_sandbox
from bridge.sandbox.faults import ConnectionDropper, FaultInjector
from bridge.sandbox.ratelimit import FixedWindowLimiter, LoginLinkLimiter
from bridge.sandbox.responses import API_MOUNTS, error_body, error_response, json_response
from bridge.sandbox.state import SandboxState

__all__ = ["SandboxConfig", "create_sandbox_app"]

logger = logging.getLogger(__name__)

# Bodies above this get a JSON 413; a 500-member bulk request is far below it.
MAX_BODY_BYTES = 10 * 1024 * 1024
# Machine-readable v1 error codes for the HTTP errors Flask raises itself.
_HTTP_ERROR_CODES = {
    400: "validation_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def create_sandbox_app(
    config: SandboxConfig | None = None,
    state: SandboxState | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Flask:
    """Build a sandbox app; `clock` (Unix seconds) drives the rate-limit windows."""
    config = config or SandboxConfig()
    if state is None:
        state = SandboxState(state_file=config.state_file, rng=_seeded(config.seed, "state"))
    extension = SandboxExtension(
        config=config,
        state=state,
        faults=FaultInjector(
            latency=config.latency,
            fault_rate=config.fault_rate,
            hang_seconds=config.hang_seconds,
            rng=_seeded(config.seed, "faults"),
        ),
        limiter=FixedWindowLimiter(config.parsed_rate_limit(), clock),
        login_links=LoginLinkLimiter(clock),
    )
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.strict_slashes = False
    app.extensions[EXTENSION_KEY] = extension

    app.before_request(_assign_request_id)
    app.after_request(_add_standard_headers)
    app.register_error_handler(SandboxError, _domain_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)

    app.register_blueprint(api.bp, url_prefix=API_MOUNTS[0], name="api")
    app.register_blueprint(api.bp, url_prefix=API_MOUNTS[1], name="v1")
    if config.legacy_enabled:
        app.register_blueprint(legacy.bp)
    app.register_blueprint(control.bp)

    app.wsgi_app = ConnectionDropper(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _seeded(seed: int | None, purpose: str) -> random.Random | None:
    # One stream per purpose, so injecting faults does not shift the ids a seed produces.
    return None if seed is None else random.Random(f"{seed}:{purpose}")


def _assign_request_id() -> None:
    g.request_id = str(uuid.uuid4())


def _add_standard_headers(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id") or str(uuid.uuid4())
    if not _is_legacy_path():
        sandbox = current_sandbox()
        quota = g.get("quota") or sandbox.limiter.peek(sandbox.config.api_key)
        for name, value in quota.headers().items():
            response.headers.setdefault(name, value)
    return response


def _domain_error(error: SandboxError) -> Response:
    return error_response(error)


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    if _is_legacy_path():
        response = json_response({"error": error.name}, status)
    else:
        code = _HTTP_ERROR_CODES.get(status, error.name.lower().replace(" ", "_"))
        response = json_response(error_body(code, error.name), status)
    # Keep the headers that give these statuses meaning (Allow on 405, Location on redirects).
    original = error.get_response()
    for name in ("Allow", "Location"):
        if name in original.headers:
            response.headers[name] = original.headers[name]
    return response


def _unexpected_error(error: Exception) -> Response:
    logger.error("sandbox request failed path=%s", request.path, exc_info=error)
    if _is_legacy_path():
        return json_response({"error": "Server Error"}, 500)
    return json_response(error_body("internal_error", "Internal sandbox error"), 500)


def _is_legacy_path() -> bool:
    return request.path.startswith("/legacy/")
