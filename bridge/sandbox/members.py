"""The v1 members endpoints: list, get, create, bulk create, update, delete, login links."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from bridge.sandbox import inputs
from bridge.sandbox.errors import ConflictError, SandboxError
from bridge.sandbox.extension import current_sandbox
from bridge.sandbox.responses import error_body, json_response, location, no_content
from bridge.sandbox.state import Member

bp = Blueprint("members", __name__)


@bp.get("/members")
def list_members() -> Response:
    """A page of members (without accessGroups), filtered and sorted by the query string."""
    query = inputs.parse_member_query(request.args)
    page = current_sandbox().state.list_members(query)
    return json_response(
        {"data": [member.to_json() for member in page.items], "pagination": page.pagination()}
    )


@bp.get("/members/<member_id>")
def get_member(member_id: str) -> Response:
    """One member with its access groups."""
    state = current_sandbox().state
    return json_response({"data": state.member_json(state.get_member(member_id))})


@bp.post("/members")
def create_member() -> Response:
    """Create a member: 201 with a Location header, 409 if the email is taken."""
    draft = inputs.parse_new_member(inputs.read_json_object(request.get_data()))
    state = current_sandbox().state
    member = state.create_member(draft)
    return json_response(
        {"data": state.member_json(member)},
        201,
        {"Location": location(f"/members/{member.id}")},
    )


@bp.post("/members/bulk")
def bulk_create_members() -> Response:
    """Create up to 500 members one by one: 207 with one outcome per entry, in input order."""
    items = inputs.parse_bulk(inputs.read_json_object(request.get_data()))
    drafts = [item.draft for item in items if item.draft is not None]
    outcomes = iter(current_sandbox().state.create_members(drafts))
    results: list[dict[str, Any]] = []
    for item in items:
        outcome: Member | SandboxError = item.error if item.error else next(outcomes)
        results.append(_bulk_result(item.email, outcome))
    created = sum(1 for result in results if result["status"] == "created")
    summary = {"total": len(results), "created": created, "failed": len(results) - created}
    return json_response({"data": results, "summary": summary}, 207)


@bp.patch("/members/<member_id>")
def update_member(member_id: str) -> Response:
    """Change email, displayName, paid or status; accessGroups are read-only here."""
    patch = inputs.parse_member_patch(inputs.read_json_object(request.get_data()))
    state = current_sandbox().state
    return json_response({"data": state.member_json(state.update_member(member_id, patch))})


@bp.delete("/members/<member_id>")
def delete_member(member_id: str) -> Response:
    """Delete a member and its group memberships: 204."""
    current_sandbox().state.delete_member(member_id)
    return no_content()


@bp.post("/members/<member_id>/login-links")
def create_login_link(member_id: str) -> Response:
    """Email a magic link (200, "sent") or, with sendEmail:false, return one (201, "created")."""
    wanted = inputs.parse_login_link(inputs.read_json_object(request.get_data(), required=False))
    sandbox = current_sandbox()
    # An unknown member is a 404 even when the budget is spent, and does not spend it.
    sandbox.state.get_member(member_id)
    sandbox.login_links.acquire(member_id)
    link = sandbox.state.issue_login_link(
        member_id,
        status="sent" if wanted.send_email else "created",
        api="v1",
        redirect_path=wanted.redirect_path,
    )
    if wanted.send_email:
        return json_response({"data": {"memberId": member_id, "status": "sent"}})
    data = {
        "memberId": member_id,
        "status": "created",
        "url": link.url,
        "expiresAt": link.expires_at,
    }
    return json_response({"data": data}, 201)


def _bulk_result(email: str | None, outcome: Member | SandboxError) -> dict[str, Any]:
    if isinstance(outcome, Member):
        return {"email": outcome.email, "status": "created", "member": outcome.to_json()}
    status = "conflict" if isinstance(outcome, ConflictError) else "error"
    return {"email": email, "status": status, **error_body(outcome.code, outcome.message)}
