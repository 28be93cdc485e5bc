"""The legacy members API (key in the URL, site envelope responses) over the same state."""

from __future__ import annotations

import hmac
import sys
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, g, request

from bridge.sandbox import inputs
from bridge.sandbox.errors import (
    ConflictError,
    InvalidError,
    NotFoundError,
    SandboxError,
    UnauthorizedError,
)
from bridge.sandbox.extension import current_sandbox
from bridge.sandbox.faults import apply_faults
from bridge.sandbox.responses import json_response
from bridge.sandbox.state import SITE_DOMAIN, Member, MemberPatch, MemberQuery, NewMember

# The real API puts the key in the host name; tests run on 127.0.0.1, so it goes in the path.
LEGACY_PREFIX = "/legacy/<legacy_key>/sites/<site_id>"
_BOOLEAN_QUERY = {"true": True, "false": False}

bp = Blueprint("legacy", __name__, url_prefix=LEGACY_PREFIX)


@bp.url_value_preprocessor
def take_credentials(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Move the key and site id out of the view arguments; the guard checks them."""
    values = values if values is not None else {}
    g.legacy_key = values.pop("legacy_key", "")
    g.legacy_site_id = values.pop("site_id", "")


@bp.before_request
def guard() -> Response | None:
    """Check the key (401) and the site id (400), then apply latency and faults."""
    sandbox = current_sandbox()
    key = str(sandbox.config.legacy_key).encode()
    if not hmac.compare_digest(str(g.legacy_key).encode(), key):
        raise UnauthorizedError("Unauthorized")
    if g.legacy_site_id != sandbox.config.legacy_site_id:
        raise InvalidError("Invalid siteId")
    prefix = f"/legacy/{g.legacy_key}/sites/{g.legacy_site_id}"
    quota = sandbox.limiter.peek(sandbox.config.api_key)
    return apply_faults(sandbox.faults, quota, request.path[len(prefix) :])


@bp.errorhandler(SandboxError)
def legacy_error(error: SandboxError) -> Response:
    """Domain errors in the legacy API's flat `{"error": "..."}` vocabulary."""
    if isinstance(error, UnauthorizedError):
        return json_response({"error": "Unauthorized"}, 401)
    if isinstance(error, NotFoundError):
        return json_response({"error": "Member not found"}, 404)
    if isinstance(error, ConflictError):
        # The legacy API reports a duplicate as a 400, not a 409.
        return json_response({"error": "Bad Request: Member already exists"}, 400)
    if isinstance(error, InvalidError):
        return json_response({"error": f"Bad Request: {error.message}"}, 400)
    return json_response({"error": error.message}, error.status)


@bp.get("")
def site() -> Response:
    """The site URL itself (the docs' authentication example): the site envelope."""
    return list_members()


@bp.get("/members")
def list_members() -> Response:
    """Every member, optionally filtered by `email`, `verified` and `paid`."""
    query = MemberQuery(
        limit=sys.maxsize,
        order="asc",
        email=request.args.get("email"),
        verified=_boolean_query("verified"),
        paid=_boolean_query("paid"),
    )
    return _envelope(current_sandbox().state.list_members(query).items)


@bp.get("/members/<member_id>")
def get_member(member_id: str) -> Response:
    """The envelope with one member."""
    return _envelope([current_sandbox().state.get_member(member_id)])


@bp.post("/members")
def create_member() -> Response:
    """Create a member from `{email, paid}` (a duplicate is a 400)."""
    body = inputs.read_json_object(request.get_data())
    email = body.get("email")
    if not isinstance(email, str) or not email.strip():
        raise InvalidError("Member email required")
    member = current_sandbox().state.create_member(NewMember(email, paid=_paid(body) or False))
    return _envelope([member])


@bp.patch("/members/<member_id>")
def update_member(member_id: str) -> Response:
    """Change a member's `email` and/or `paid`."""
    body = inputs.read_json_object(request.get_data())
    email = body.get("email")
    if email is not None and not isinstance(email, str):
        raise InvalidError("email must be a string")
    patch = MemberPatch(email=email, paid=_paid(body))
    return _envelope([current_sandbox().state.update_member(member_id, patch)])


@bp.delete("/members/<member_id>")
def delete_member(member_id: str) -> Response:
    """Delete a member."""
    sandbox = current_sandbox()
    sandbox.state.delete_member(member_id)
    site_id = sandbox.config.legacy_site_id
    return json_response({"siteId": site_id, "memberId": member_id, "status": "Deleted"})


@bp.get("/members/<member_id>/login-link")
def get_login_link(member_id: str) -> Response:
    """A magic login link for the member, handed back rather than emailed."""
    link = _issue_link(member_id, "created")
    return json_response({"loginLink": link})


@bp.get("/members/<member_id>/login-link/send")
def send_login_link(member_id: str) -> Response:
    """Email the member a magic login link; answers with the member's envelope."""
    _issue_link(member_id, "sent")
    return _envelope([current_sandbox().state.get_member(member_id)])


def _issue_link(member_id: str, status: str) -> str:
    state = current_sandbox().state
    member = state.get_member(member_id)
    query = urlencode({"uuid": member.id, "email": member.email, "magic": "verify"})
    url = f"https://{SITE_DOMAIN}/_auth?{query}"
    state.issue_login_link(member_id, status=status, api="legacy", url=url)
    return url


def _envelope(members: list[Member]) -> Response:
    sandbox = current_sandbox()
    page_id = sandbox.state.site_id.replace("-", "")
    return json_response(
        {
            "siteId": sandbox.config.legacy_site_id,
            "status": "active",
            "domain": SITE_DOMAIN,
            "pageUrl": f"https://{SITE_DOMAIN}/{page_id}",
            "authType": "email",
            "config": {"members": [_legacy_member(member) for member in members]},
        }
    )


def _legacy_member(member: Member) -> dict[str, Any]:
    return {
        "email": member.email,
        "uuid": member.id,
        "registeredAt": member.registered_at,
        "verified": member.verified,
        "blocked": member.status == "blocked",
        "paid": member.paid,
    }


def _paid(body: dict[str, Any]) -> bool | None:
    paid = body.get("paid")
    if paid is not None and not isinstance(paid, bool):
        raise InvalidError("paid must be a boolean")
    return paid


def _boolean_query(name: str) -> bool | None:
    value = request.args.get(name)
    if value is None:
        return None
    if value not in _BOOLEAN_QUERY:
        raise InvalidError(f"{name} must be 'true' or 'false'")
    return _BOOLEAN_QUERY[value]
