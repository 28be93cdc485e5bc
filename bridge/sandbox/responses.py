"""JSON response builders and mount-point helpers shared by the sandbox's blueprints."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Response, request

from bridge.sandbox.errors import RateLimitedError, SandboxError

# The docs disagree on the v1 base path, so the API is served under both.
API_MOUNTS = ("/api/v1", "/v1")
JSON_MIMETYPE = "application/json"


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A compact JSON response (keys in insertion order, unlike Flask's sorted default)."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return Response(text, status=status, headers=dict(headers or {}), mimetype=JSON_MIMETYPE)


def no_content() -> Response:
    """An empty 204 response without a misleading Content-Type."""
    response = Response(status=204)
    response.headers.remove("Content-Type")
    return response


def error_body(code: str, message: str) -> dict[str, Any]:
    """The nested v1 error object `{"error": {"code", "message"}}`."""
    return {"error": {"code": code, "message": message}}


def error_response(error: SandboxError) -> Response:
    """The v1 JSON response for a domain error (with Retry-After for rate limits)."""
    headers = {}
    if isinstance(error, RateLimitedError):
        headers["Retry-After"] = str(error.retry_after)
    return json_response(error_body(error.code, error.message), error.status, headers)


def api_mount(path: str) -> str | None:
    """The v1 mount point `path` lies under, if any."""
    for mount in API_MOUNTS:
        if path == mount or path.startswith(mount + "/"):
            return mount
    return None


def location(resource_path: str) -> str:
    """The path of a resource under the mount point the current request used."""
    return f"{api_mount(request.path) or API_MOUNTS[0]}{resource_path}"
