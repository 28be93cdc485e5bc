"""The v1 access-group endpoints, including group membership."""

from __future__ import annotations

from flask import Blueprint, Response, request

from bridge.sandbox import inputs
from bridge.sandbox.extension import current_sandbox
from bridge.sandbox.responses import json_response, location, no_content

bp = Blueprint("groups", __name__)


@bp.get("/access-groups")
def list_groups() -> Response:
    """A page of access groups, oldest first."""
    after, limit = inputs.parse_page(request.args)
    state = current_sandbox().state
    page = state.list_groups(after, limit)
    return json_response(
        {"data": [state.group_json(group) for group in page.items], "pagination": page.pagination()}
    )


@bp.post("/access-groups")
def create_group() -> Response:
    """Create a custom group: 201 with a Location header, 409 on a duplicate name."""
    name, description = inputs.parse_new_group(inputs.read_json_object(request.get_data()))
    state = current_sandbox().state
    group = state.create_group(name, description)
    return json_response(
        {"data": state.group_json(group)},
        201,
        {"Location": location(f"/access-groups/{group.id}")},
    )


@bp.get("/access-groups/<group_id>")
def get_group(group_id: str) -> Response:
    """One access group."""
    state = current_sandbox().state
    return json_response({"data": state.group_json(state.get_group(group_id))})


@bp.patch("/access-groups/<group_id>")
def update_group(group_id: str) -> Response:
    """Rename or re-describe a custom group (403 for scope groups)."""
    patch = inputs.parse_group_patch(inputs.read_json_object(request.get_data()))
    state = current_sandbox().state
    return json_response({"data": state.group_json(state.update_group(group_id, patch))})


@bp.delete("/access-groups/<group_id>")
def delete_group(group_id: str) -> Response:
    """Delete a custom group (403 for scope groups): 204."""
    current_sandbox().state.delete_group(group_id)
    return no_content()


@bp.get("/access-groups/<group_id>/members")
def list_group_members(group_id: str) -> Response:
    """A page of the group's members (without accessGroups), in the order they joined."""
    after, limit = inputs.parse_page(request.args)
    page = current_sandbox().state.list_group_members(group_id, after, limit)
    return json_response(
        {"data": [member.to_json() for member in page.items], "pagination": page.pagination()}
    )


@bp.post("/access-groups/<group_id>/members")
def add_group_member(group_id: str) -> Response:
    """Add a member to a custom group: 201, 404 unknown, 409 already in, 403 scope."""
    member_id = inputs.parse_group_member(inputs.read_json_object(request.get_data()))
    current_sandbox().state.add_member_to_group(group_id, member_id)
    return json_response({"data": {"groupId": group_id, "memberId": member_id}}, 201)


@bp.delete("/access-groups/<group_id>/members/<member_id>")
def remove_group_member(group_id: str, member_id: str) -> Response:
    """Remove a member from a custom group (the member stays): 204."""
    current_sandbox().state.remove_member_from_group(group_id, member_id)
    return no_content()
