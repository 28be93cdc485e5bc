"""Client for Sotion's v1 REST API (per-site ``so_`` keys, Bearer auth)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from bridge.sotion.errors import TransientError
from bridge.sotion.models import (
    UNSET,
    AccessGroup,
    BulkItem,
    BulkResult,
    LoginLink,
    Member,
    NewMember,
    Page,
    RateLimit,
    Site,
)
from bridge.sotion.transport import Transport
from bridge.sotion.transport import path_segment as _segment

T = TypeVar("T")

# The documented bounds of one bulk call and of one list page.
BULK_MAX = 500
PAGE_MAX = 100


class SotionClient:
    """Every documented v1 operation; errors are :mod:`bridge.sotion.errors` types."""

    flavor = "v1"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def connect(cls, base_url: str, api_key: str, **transport_options: Any) -> SotionClient:
        """Build a client for ``base_url`` authenticating with ``api_key``."""
        headers = {"Authorization": f"Bearer {api_key}"}
        return cls(Transport(base_url, headers=headers, **transport_options))

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate-limit headers of the last response (None before any call)."""
        return self.transport.last_rate_limit

    def close(self) -> None:
        """Release the HTTP session."""
        self.transport.close()

    # -- site -------------------------------------------------------------------------

    def site(self) -> Site:
        """The site the key belongs to (also the cheapest way to check the key works)."""
        data = self._data("GET", "/site")
        return Site(
            id=str(data["id"]),
            status=data.get("status"),
            domain=data.get("domain"),
            slug=data.get("slug"),
            title=data.get("title"),
        )

    # -- members ----------------------------------------------------------------------

    def list_members(
        self,
        *,
        email: str | None = None,
        q: str | None = None,
        status: str | None = None,
        paid: bool | None = None,
        verified: bool | None = None,
        sort: str | None = None,
        order: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Page[Member]:
        """One page of members matching every filter given."""
        params = {
            "email": email,
            "q": q,
            "status": status,
            "paid": paid,
            "verified": verified,
            "sort": sort,
            "order": order,
            "limit": limit,
            "after": after,
        }
        return self._page("/members", params, Member.from_api)

    def iter_members(self, *, page_size: int = PAGE_MAX, **filters: Any) -> Iterator[Member]:
        """Every member matching ``filters``, following the cursor across pages."""
        return _follow(lambda after: self.list_members(limit=page_size, after=after, **filters))

    def get_member(self, member_id: str) -> Member:
        """One member with their access groups."""
        return Member.from_api(self._data("GET", f"/members/{_segment(member_id)}"))

    def find_member_by_email(self, email: str) -> Member | None:
        """The member with exactly this email (normalized as Sotion does), or None."""
        normalized = normalize_email(email)
        page = self.list_members(email=normalized, limit=1)
        for member in page:
            if member.email == normalized:
                return member
        return None

    def create_member(
        self,
        email: str,
        *,
        display_name: str | None = None,
        paid: bool = False,
        access_group_ids: Iterable[str] = (),
    ) -> Member:
        """Create a member; a taken email raises ConflictError."""
        body: dict[str, Any] = {"email": email, "paid": paid}
        if display_name is not None:
            body["displayName"] = display_name
        groups = list(access_group_ids)
        if groups:
            body["accessGroupIds"] = groups
        return Member.from_api(self._data("POST", "/members", json=body))

    def bulk_create_members(
        self, members: Iterable[NewMember], *, chunk_size: int = BULK_MAX
    ) -> BulkResult:
        """Create many members, ``chunk_size`` (1-500) per call; outcomes kept per email."""
        if not 1 <= chunk_size <= BULK_MAX:
            raise ValueError(f"chunk_size must be between 1 and {BULK_MAX}")
        items: list[BulkItem] = []
        chunk: list[NewMember] = []
        for member in members:
            chunk.append(member)
            if len(chunk) == chunk_size:
                items.extend(self._bulk_chunk(chunk))
                chunk = []
        if chunk:
            items.extend(self._bulk_chunk(chunk))
        return BulkResult(items=tuple(items))

    def update_member(
        self,
        member_id: str,
        *,
        email: str = UNSET,
        display_name: str | None = UNSET,
        paid: bool = UNSET,
        status: str = UNSET,
    ) -> Member:
        """PATCH only the fields given (``display_name=None`` clears the name)."""
        body: dict[str, Any] = {
            key: value
            for key, value in (
                ("email", email),
                ("displayName", display_name),
                ("paid", paid),
                ("status", status),
            )
            if value is not UNSET
        }
        if not body:
            raise ValueError("update_member needs at least one field to change")
        return Member.from_api(self._data("PATCH", f"/members/{_segment(member_id)}", json=body))

    def delete_member(self, member_id: str) -> None:
        """Delete a member for good (their group memberships go with them)."""
        self.transport.request("DELETE", f"/members/{_segment(member_id)}")

    def send_login_link(self, member_id: str, *, redirect_path: str | None = None) -> LoginLink:
        """Email the member a magic login link."""
        body: dict[str, Any] = {}
        if redirect_path is not None:
            body["redirectPath"] = redirect_path
        data = self._data("POST", f"/members/{_segment(member_id)}/login-links", json=body)
        return _login_link(member_id, data)

    def create_login_link(self, member_id: str) -> LoginLink:
        """Create a login link and return its URL instead of emailing it (24 h validity)."""
        path = f"/members/{_segment(member_id)}/login-links"
        data = self._data("POST", path, json={"sendEmail": False})
        return _login_link(member_id, data)

    # -- access groups -----------------------------------------------------------------

    def list_access_groups(
        self, *, limit: int | None = None, after: str | None = None
    ) -> Page[AccessGroup]:
        """One page of access groups."""
        params = {"limit": limit, "after": after}
        return self._page("/access-groups", params, AccessGroup.from_api)

    def iter_access_groups(self, *, page_size: int = PAGE_MAX) -> Iterator[AccessGroup]:
        """Every access group, following the cursor."""
        return _follow(lambda after: self.list_access_groups(limit=page_size, after=after))

    def get_access_group(self, group_id: str) -> AccessGroup:
        """One access group."""
        return AccessGroup.from_api(self._data("GET", f"/access-groups/{_segment(group_id)}"))

    def create_access_group(self, name: str, *, description: str | None = None) -> AccessGroup:
        """Create a custom access group; a taken name raises ConflictError."""
        body: dict[str, Any] = {"name": name}
        if description is not None:
            body["description"] = description
        return AccessGroup.from_api(self._data("POST", "/access-groups", json=body))

    def update_access_group(
        self, group_id: str, *, name: str = UNSET, description: str | None = UNSET
    ) -> AccessGroup:
        """PATCH a custom group's name and/or description (scope groups raise Forbidden)."""
        body = {
            key: value
            for key, value in (("name", name), ("description", description))
            if value is not UNSET
        }
        if not body:
            raise ValueError("update_access_group needs at least one field to change")
        path = f"/access-groups/{_segment(group_id)}"
        return AccessGroup.from_api(self._data("PATCH", path, json=body))

    def delete_access_group(self, group_id: str) -> None:
        """Delete a custom access group (its members stay)."""
        self.transport.request("DELETE", f"/access-groups/{_segment(group_id)}")

    def list_group_members(
        self, group_id: str, *, limit: int | None = None, after: str | None = None
    ) -> Page[Member]:
        """One page of a group's members."""
        path = f"/access-groups/{_segment(group_id)}/members"
        return self._page(path, {"limit": limit, "after": after}, Member.from_api)

    def iter_group_members(self, group_id: str, *, page_size: int = PAGE_MAX) -> Iterator[Member]:
        """Every member of a group, following the cursor."""
        return _follow(
            lambda after: self.list_group_members(group_id, limit=page_size, after=after)
        )

    def add_group_member(self, group_id: str, member_id: str) -> None:
        """Put a member in a group; already there raises ConflictError."""
        path = f"/access-groups/{_segment(group_id)}/members"
        self.transport.request("POST", path, json={"memberId": member_id})

    def remove_group_member(self, group_id: str, member_id: str) -> None:
        """Take a member out of a group (the member is kept)."""
        path = f"/access-groups/{_segment(group_id)}/members/{_segment(member_id)}"
        self.transport.request("DELETE", path)

    # -- helpers -----------------------------------------------------------------------

    def _data(self, method: str, path: str, *, json: Any = None) -> Any:
        """The ``data`` member of a JSON response."""
        body = self.transport.request(method, path, json=json).body
        return _unwrap(body, self.transport.last_request_id)

    def _page(
        self, path: str, params: dict[str, Any], parse: Callable[[dict[str, Any]], T]
    ) -> Page[T]:
        body = self.transport.request("GET", path, params=params).body
        rows = _unwrap(body, self.transport.last_request_id)
        if not isinstance(rows, list):
            raise _malformed("a list", self.transport.last_request_id)
        pagination = body.get("pagination") or {}
        cursor = pagination.get("nextCursor")
        return Page(
            items=tuple(parse(row) for row in rows),
            has_more=bool(pagination.get("hasMore")) and cursor is not None,
            next_cursor=cursor,
        )

    def _bulk_chunk(self, chunk: list[NewMember]) -> list[BulkItem]:
        payload = {"members": [_new_member_body(member) for member in chunk]}
        body = self.transport.request("POST", "/members/bulk", json=payload).body
        rows = _unwrap(body, self.transport.last_request_id)
        if not isinstance(rows, list):
            raise _malformed("a list of results", self.transport.last_request_id)
        items = []
        for row in rows:
            error = row.get("error") or {}
            member = row.get("member")
            items.append(
                BulkItem(
                    email=str(row.get("email")),
                    status=str(row.get("status")),
                    member=Member.from_api(member) if member else None,
                    error_code=error.get("code") if isinstance(error, dict) else None,
                    error_message=error.get("message") if isinstance(error, dict) else str(error),
                )
            )
        return items


def normalize_email(email: str) -> str:
    """Sotion's email normalization: trimmed and lowercased."""
    return email.strip().lower()


def _new_member_body(member: NewMember) -> dict[str, Any]:
    body: dict[str, Any] = {"email": member.email, "paid": member.paid}
    if member.display_name is not None:
        body["displayName"] = member.display_name
    if member.access_group_ids:
        body["accessGroupIds"] = list(member.access_group_ids)
    return body


def _login_link(member_id: str, data: dict[str, Any]) -> LoginLink:
    return LoginLink(
        member_id=str(data.get("memberId") or member_id),
        status=str(data.get("status") or "sent"),
        url=data.get("url"),
        expires_at=data.get("expiresAt"),
    )


def _follow(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    """Yield every item of a cursor-paginated list, one page request at a time."""
    after: str | None = None
    while True:
        page = fetch(after)
        yield from page.items
        if not page.has_more or page.next_cursor is None or page.next_cursor == after:
            return
        after = page.next_cursor


def _unwrap(body: Any, request_id: str | None) -> Any:
    if not isinstance(body, dict) or "data" not in body:
        raise _malformed("a data envelope", request_id)
    return body["data"]


def _malformed(expected: str, request_id: str | None) -> TransientError:
    return TransientError(f"Sotion response was not {expected}", request_id=request_id)
