"""The `/_sandbox` control endpoints that out-of-process tests use to inspect and steer the fake."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from bridge.sandbox import inputs
from bridge.sandbox.errors import InvalidError
from bridge.sandbox.extension import current_sandbox
from bridge.sandbox.faults import FAULT_KINDS
from bridge.sandbox.responses import json_response

bp = Blueprint("control", __name__, url_prefix="/_sandbox")


@bp.get("/state")
def get_state() -> Response:
    """Every member (with group ids), group, login link and queued fault."""
    sandbox = current_sandbox()
    data = sandbox.state.snapshot()
    data["faults"] = [fault.to_json() for fault in sandbox.faults.pending()]
    return json_response({"data": data})


@bp.post("/reset")
def reset() -> Response:
    """Forget all data, queued faults and rate-limit windows."""
    current_sandbox().reset()
    return json_response({"data": {"reset": True}})


@bp.get("/faults")
def list_faults() -> Response:
    """The queued faults, oldest first."""
    pending = current_sandbox().faults.pending()
    return json_response({"data": [fault.to_json() for fault in pending]})


@bp.post("/faults")
def inject_fault() -> Response:
    """Queue a fault: `{kind, count?, method?, path_prefix?}`."""
    kind, count, method, path_prefix = _parse_fault(inputs.read_json_object(request.get_data()))
    fault = current_sandbox().faults.inject(kind, count, method, path_prefix)
    return json_response({"data": fault.to_json()}, 201)


@bp.delete("/faults")
def clear_faults() -> Response:
    """Drop every queued fault."""
    return json_response({"data": {"cleared": current_sandbox().faults.clear()}})


@bp.post("/scope-groups")
def create_scope_group() -> Response:
    """Create a read-only scope group, as Sotion does for a Notion collection."""
    name, description = inputs.parse_new_group(inputs.read_json_object(request.get_data()))
    state = current_sandbox().state
    return json_response({"data": state.group_json(state.add_scope_group(name, description))}, 201)


@bp.post("/access-groups/<group_id>/members")
def add_group_member(group_id: str) -> Response:
    """Put a member in any group, scope groups included (the public API forbids those)."""
    member_id = inputs.parse_group_member(inputs.read_json_object(request.get_data()))
    current_sandbox().state.add_member_to_group(group_id, member_id, allow_scope=True)
    return json_response({"data": {"groupId": group_id, "memberId": member_id}}, 201)


@bp.post("/members/<member_id>/verify")
def verify_member(member_id: str) -> Response:
    """Mark a member verified, as if they had clicked a login link."""
    state = current_sandbox().state
    return json_response({"data": state.member_json(state.verify_member(member_id))})


def _parse_fault(body: dict[str, Any]) -> tuple[str, int, str | None, str | None]:
    unknown = sorted(set(body) - {"kind", "count", "method", "path_prefix"})
    if unknown:
        raise InvalidError(f"Unknown field(s): {', '.join(unknown)}")
    kind = body.get("kind")
    if isinstance(kind, int) and not isinstance(kind, bool):
        kind = str(kind)
    if kind not in FAULT_KINDS:
        raise InvalidError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidError("count must be a positive integer")
    method = body.get("method")
    path_prefix = body.get("path_prefix")
    for name, value in (("method", method), ("path_prefix", path_prefix)):
        if value is not None and not isinstance(value, str):
            raise InvalidError(f"{name} must be a string or null")
    return str(kind), count, method, path_prefix
