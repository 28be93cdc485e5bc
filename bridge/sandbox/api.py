"""The v1 API blueprint: authentication, rate limiting and faults in front of every endpoint."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, g, request

from bridge.sandbox import groups, members
from bridge.sandbox.errors import RateLimitedError, UnauthorizedError
from bridge.sandbox.extension import current_sandbox
from bridge.sandbox.faults import apply_faults
from bridge.sandbox.responses import api_mount, json_response
from bridge.sandbox.state import SITE_DOMAIN, SITE_SLUG

# Sotion's documented body for a request without a key: flat, unlike the other errors.
MISSING_KEY_MESSAGE = "Missing API key. Pass Authorization: Bearer so_..."

bp = Blueprint("api", __name__)


@bp.before_request
def guard() -> Response | None:
    """Check the key, spend rate budget, then apply latency and faults, before any view."""
    sandbox = current_sandbox()
    header = request.headers.get("Authorization", "").strip()
    if not header:
        return json_response({"error": MISSING_KEY_MESSAGE}, 401)
    scheme, _, token = header.partition(" ")
    expected = sandbox.config.api_key.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise UnauthorizedError("Invalid API key")
    quota = sandbox.limiter.hit(sandbox.config.api_key)
    # The after-request hook reports this quota instead of peeking again.
    g.quota = quota
    if not quota.allowed:
        raise RateLimitedError("Too many requests", quota.retry_after)
    mount = api_mount(request.path) or ""
    return apply_faults(sandbox.faults, quota, request.path[len(mount) :])


@bp.get("/site")
def get_site() -> Response:
    """The site the key belongs to: the documented first call to check a key."""
    sandbox = current_sandbox()
    site = {
        "id": sandbox.state.site_id,
        "status": "active",
        "domain": SITE_DOMAIN,
        "slug": SITE_SLUG,
        "title": sandbox.config.site_title,
    }
    return json_response({"data": site})


bp.register_blueprint(members.bp)
bp.register_blueprint(groups.bp)
