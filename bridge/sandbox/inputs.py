"""Parsing and type-checking of v1 request bodies and query strings into domain inputs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.sandbox.errors import InvalidError
from bridge.sandbox.state import (
    MEMBER_SORTS,
    MEMBER_STATUSES,
    SORT_ORDERS,
    GroupPatch,
    MemberPatch,
    MemberQuery,
    NewMember,
)

# Documented page-size bounds of every list endpoint.
PAGE_LIMIT_MIN = 1
PAGE_LIMIT_MAX = 100
PAGE_LIMIT_DEFAULT = 50
# Documented size bounds of a bulk create.
BULK_MIN = 1
BULK_MAX = 500

_NEW_MEMBER_FIELDS = frozenset({"email", "displayName", "paid", "accessGroupIds"})
_MEMBER_PATCH_FIELDS = frozenset({"email", "displayName", "paid", "status"})
_READ_ONLY_MEMBER_FIELDS = ("accessGroups", "accessGroupIds")
_BOOLEAN_QUERY = {"true": True, "false": False}


@dataclass(frozen=True)
class BulkItem:
    """One entry of a bulk create: a member to create, or why it cannot be created."""

    email: str | None
    draft: NewMember | None
    error: InvalidError | None


@dataclass(frozen=True)
class LoginLinkRequest:
    """What a login-link request asks for: an email sent, or a link handed back."""

    send_email: bool
    redirect_path: str | None


def read_json_object(raw: bytes, *, required: bool = True) -> dict[str, Any]:
    """Decode a request body that must be a JSON object (an empty body is `{}` if optional)."""
    if not raw.strip():
        if required:
            raise InvalidError("Request body must be a JSON object")
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidError("Request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidError("Request body must be a JSON object")
    return value


def parse_new_member(body: Mapping[str, Any]) -> NewMember:
    """A create-member body: `email` required; `displayName`, `paid`, `accessGroupIds` optional."""
    _reject_unknown(body, _NEW_MEMBER_FIELDS)
    email = _string(body, "email")
    if email is None:
        raise InvalidError("email is required")
    paid = _boolean(body, "paid")
    return NewMember(
        email=email,
        display_name=_nullable_string(body, "displayName"),
        paid=False if paid is None else paid,
        access_group_ids=_string_list(body, "accessGroupIds"),
    )


def parse_bulk(body: Mapping[str, Any]) -> list[BulkItem]:
    """A bulk body: `members` (1-500 create bodies) and optional `accessGroupIds` for all."""
    _reject_unknown(body, frozenset({"members", "accessGroupIds"}))
    members = body.get("members")
    if not isinstance(members, list) or not BULK_MIN <= len(members) <= BULK_MAX:
        raise InvalidError(f"members must be an array of {BULK_MIN} to {BULK_MAX} members")
    shared_groups = _string_list(body, "accessGroupIds")
    return [_bulk_item(item, shared_groups) for item in members]


def parse_member_patch(body: Mapping[str, Any]) -> MemberPatch:
    """An update-member body: at least one of `email`, `displayName`, `paid`, `status`."""
    for name in _READ_ONLY_MEMBER_FIELDS:
        if name in body:
            raise InvalidError(
                f"{name} is read-only here; use /access-groups/{{groupId}}/members instead"
            )
    _reject_unknown(body, _MEMBER_PATCH_FIELDS)
    if not body:
        raise InvalidError("Provide at least one of: displayName, email, paid, status")
    status = _string(body, "status")
    if status is not None and status not in MEMBER_STATUSES:
        raise InvalidError("status must be 'active' or 'blocked'")
    return MemberPatch(
        email=_string(body, "email"),
        display_name=_nullable_string(body, "displayName"),
        display_name_set="displayName" in body,
        paid=_boolean(body, "paid"),
        status=status,
    )


def parse_member_query(args: Mapping[str, str]) -> MemberQuery:
    """The query string of GET /members."""
    after, limit = parse_page(args)
    sort = args.get("sort", "createdAt")
    if sort not in MEMBER_SORTS:
        raise InvalidError(f"sort must be one of {', '.join(MEMBER_SORTS)}")
    order = args.get("order", "desc")
    if order not in SORT_ORDERS:
        raise InvalidError("order must be 'asc' or 'desc'")
    status = args.get("status")
    if status is not None and status not in MEMBER_STATUSES:
        raise InvalidError("status must be 'active' or 'blocked'")
    return MemberQuery(
        after=after,
        limit=limit,
        email=args.get("email"),
        q=args.get("q"),
        status=status,
        paid=_boolean_query(args, "paid"),
        verified=_boolean_query(args, "verified"),
        sort=sort,
        order=order,
    )


def parse_page(args: Mapping[str, str]) -> tuple[str | None, int]:
    """The `after` cursor and `limit` (1-100, default 50) of any list endpoint."""
    raw_limit = args.get("limit")
    if raw_limit is None:
        limit = PAGE_LIMIT_DEFAULT
    else:
        try:
            limit = int(raw_limit)
        except ValueError as exc:
            raise InvalidError("limit must be an integer") from exc
        if not PAGE_LIMIT_MIN <= limit <= PAGE_LIMIT_MAX:
            raise InvalidError(f"limit must be between {PAGE_LIMIT_MIN} and {PAGE_LIMIT_MAX}")
    after = args.get("after")
    return (after or None), limit


def parse_new_group(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """A create-group body: `name` required, `description` optional."""
    _reject_unknown(body, frozenset({"name", "description"}))
    name = _string(body, "name")
    if name is None:
        raise InvalidError("name is required")
    return name, _nullable_string(body, "description")


def parse_group_patch(body: Mapping[str, Any]) -> GroupPatch:
    """An update-group body: at least one of `name`, `description`."""
    _reject_unknown(body, frozenset({"name", "description"}))
    if not body:
        raise InvalidError("Provide at least one of: description, name")
    return GroupPatch(
        name=_string(body, "name"),
        description=_nullable_string(body, "description"),
        description_set="description" in body,
    )


def parse_group_member(body: Mapping[str, Any]) -> str:
    """An add-to-group body: `{memberId}`."""
    _reject_unknown(body, frozenset({"memberId"}))
    member_id = _string(body, "memberId")
    if member_id is None:
        raise InvalidError("memberId is required")
    return member_id


def parse_login_link(body: Mapping[str, Any]) -> LoginLinkRequest:
    """A login-link body: optional `sendEmail` (default true) and `redirectPath`."""
    _reject_unknown(body, frozenset({"sendEmail", "redirectPath"}))
    send_email = _boolean(body, "sendEmail")
    redirect_path = _nullable_string(body, "redirectPath")
    if redirect_path is not None and not redirect_path.startswith("/"):
        raise InvalidError("redirectPath must start with '/'")
    return LoginLinkRequest(send_email is not False, redirect_path)


def _bulk_item(item: Any, shared_groups: tuple[str, ...]) -> BulkItem:
    if not isinstance(item, dict):
        return BulkItem(None, None, InvalidError("Each member must be a JSON object"))
    raw_email = item.get("email")
    email = raw_email.strip().lower() if isinstance(raw_email, str) else None
    try:
        draft = parse_new_member(item)
    except InvalidError as exc:
        return BulkItem(email, None, exc)
    groups = tuple(dict.fromkeys(draft.access_group_ids + shared_groups))
    return BulkItem(email, NewMember(draft.email, draft.display_name, draft.paid, groups), None)


def _reject_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidError(f"Unknown field(s): {', '.join(unknown)}")


def _string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidError(f"{name} must be a string")
    if value is None and name in body:
        raise InvalidError(f"{name} must not be null")
    return value


def _nullable_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidError(f"{name} must be a string or null")
    return value


def _boolean(body: Mapping[str, Any], name: str) -> bool | None:
    if name not in body:
        return None
    value = body[name]
    if not isinstance(value, bool):
        raise InvalidError(f"{name} must be a boolean")
    return value


def _string_list(body: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidError(f"{name} must be an array of strings")
    return tuple(value)


def _boolean_query(args: Mapping[str, str], name: str) -> bool | None:
    value = args.get(name)
    if value is None:
        return None
    if value not in _BOOLEAN_QUERY:
        raise InvalidError(f"{name} must be 'true' or 'false'")
    return _BOOLEAN_QUERY[value]
