"""Client for Sotion's legacy members API (key in the host name, site id in the path).

It implements the operations the legacy API has behind the same methods as
:class:`bridge.sotion.client.SotionClient`; the others raise UnsupportedOperationError.
What it cannot do: access groups, display names, blocking (the legacy ``blocked`` field
is read-only, "not used at the moment"), list sorting and cursors (one response holds
every member), and bulk create (done here as one create per member).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NoReturn
from urllib.parse import quote

from bridge.sotion.client import normalize_email
from bridge.sotion.errors import (
    ConflictError,
    PermanentError,
    SotionError,
    TransientError,
    UnsupportedOperationError,
)
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

# The legacy URL as documented; {key} and {site_id} are filled from settings.
LEGACY_URL_TEMPLATE = "https://{key}.api.sotion.app/sites/{site_id}"


class LegacySotionClient:
    """The legacy members API behind the v1 client's interface."""

    flavor = "legacy"

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def connect(
        cls,
        api_key: str,
        site_id: str,
        *,
        url_template: str = LEGACY_URL_TEMPLATE,
        **transport_options: Any,
    ) -> LegacySotionClient:
        """Build a client; ``url_template`` may use ``{key}`` and ``{site_id}``."""
        base_url = url_template.format(key=quote(api_key, safe=""), site_id=quote(site_id, safe=""))
        return cls(Transport(base_url, **transport_options))

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate-limit headers of the last response, if the legacy API sent any."""
        return self.transport.last_rate_limit

    def close(self) -> None:
        """Release the HTTP session."""
        self.transport.close()

    def site(self) -> Site:
        """The site, read from the envelope every legacy response carries."""
        body = self._call("GET", "")
        return Site(
            id=str(body.get("siteId")),
            status=body.get("status"),
            domain=body.get("domain"),
            slug=None,
            title=body.get("pageUrl"),
        )

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
        """All matching members in one page; ``q`` and ``status`` are filtered here."""
        if sort is not None or order is not None or after is not None:
            _unsupported("sorting and cursors")
        params = {
            "email": normalize_email(email) if email is not None else None,
            "paid": paid,
            "verified": verified,
        }
        members = [m for m in self._members("GET", "/members", params=params)]
        if q is not None:
            needle = q.lower()
            members = [m for m in members if needle in m.email.lower()]
        if status is not None:
            members = [m for m in members if m.status == status]
        if limit is not None:
            members = members[:limit]
        return Page(items=tuple(members), has_more=False, next_cursor=None)

    def iter_members(self, *, page_size: int = 100, **filters: Any) -> Iterator[Member]:
        """Every matching member (the legacy API does not paginate)."""
        return iter(self.list_members(**filters).items)

    def get_member(self, member_id: str) -> Member:
        """One member (the legacy API has no access groups: ``access_groups`` is empty)."""
        return self._one("GET", f"/members/{_segment(member_id)}")

    def find_member_by_email(self, email: str) -> Member | None:
        """The member with exactly this email, or None."""
        normalized = normalize_email(email)
        for member in self.list_members(email=normalized):
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
        """Create a member (email and paid only); a taken email raises ConflictError."""
        if display_name is not None:
            _unsupported("display names")
        if list(access_group_ids):
            _unsupported("access groups")
        return self._one("POST", "/members", json={"email": email, "paid": paid})

    def bulk_create_members(
        self, members: Iterable[NewMember], *, chunk_size: int = 500
    ) -> BulkResult:
        """One create per member, outcomes kept per email like the v1 bulk endpoint."""
        items: list[BulkItem] = []
        for new in members:
            try:
                member = self.create_member(
                    new.email,
                    display_name=new.display_name,
                    paid=new.paid,
                    access_group_ids=new.access_group_ids,
                )
            except ConflictError as exc:
                items.append(BulkItem(new.email, "conflict", None, "conflict", exc.message))
            except PermanentError as exc:
                items.append(BulkItem(new.email, "error", None, exc.code, exc.message))
            else:
                items.append(BulkItem(new.email, "created", member))
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
        """PATCH email and/or paid (the legacy API cannot block or rename)."""
        if display_name is not UNSET:
            _unsupported("display names")
        if status is not UNSET:
            _unsupported("blocking members")
        body = {k: v for k, v in (("email", email), ("paid", paid)) if v is not UNSET}
        if not body:
            raise ValueError("update_member needs at least one field to change")
        return self._one("PATCH", f"/members/{_segment(member_id)}", json=body)

    def delete_member(self, member_id: str) -> None:
        """Delete a member."""
        self._call("DELETE", f"/members/{_segment(member_id)}")

    def send_login_link(self, member_id: str, *, redirect_path: str | None = None) -> LoginLink:
        """Email the member a login link."""
        if redirect_path is not None:
            _unsupported("login-link redirect paths")
        self._call("GET", f"/members/{_segment(member_id)}/login-link/send")
        return LoginLink(member_id=member_id, status="sent")

    def create_login_link(self, member_id: str) -> LoginLink:
        """Return a login link without emailing it."""
        body = self._call("GET", f"/members/{_segment(member_id)}/login-link")
        return LoginLink(member_id=member_id, status="created", url=body.get("loginLink"))

    def list_access_groups(self, **_: Any) -> Page[AccessGroup]:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def iter_access_groups(self, **_: Any) -> Iterator[AccessGroup]:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def get_access_group(self, group_id: str) -> AccessGroup:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def create_access_group(self, name: str, *, description: str | None = None) -> AccessGroup:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def update_access_group(
        self, group_id: str, *, name: str = UNSET, description: str | None = UNSET
    ) -> AccessGroup:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def delete_access_group(self, group_id: str) -> None:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def list_group_members(self, group_id: str, **_: Any) -> Page[Member]:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def iter_group_members(self, group_id: str, **_: Any) -> Iterator[Member]:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def add_group_member(self, group_id: str, member_id: str) -> None:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    def remove_group_member(self, group_id: str, member_id: str) -> None:
        """Unsupported: the legacy API has no access groups."""
        _unsupported("access groups")

    # -- helpers -----------------------------------------------------------------------

    def _call(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> dict[str, Any]:
        try:
            body = self.transport.request(method, path, params=params, json=json).body
        except PermanentError as exc:
            raise _legacy_error(exc) from exc
        if not isinstance(body, dict):
            raise TransientError(
                "Sotion legacy response was not a JSON object",
                request_id=self.transport.last_request_id,
            )
        return body

    def _members(self, method: str, path: str, **kwargs: Any) -> list[Member]:
        body = self._call(method, path, **kwargs)
        config = body.get("config")
        rows = config.get("members") if isinstance(config, dict) else None
        if not isinstance(rows, list):
            raise TransientError(
                "Sotion legacy response had no config.members list",
                request_id=self.transport.last_request_id,
            )
        return [_member(row) for row in rows]

    def _one(self, method: str, path: str, **kwargs: Any) -> Member:
        members = self._members(method, path, **kwargs)
        if not members:
            raise TransientError(
                "Sotion legacy response held no member",
                request_id=self.transport.last_request_id,
            )
        return members[0]


def _member(row: dict[str, Any]) -> Member:
    """Map a legacy member (uuid, blocked) onto the v1 shape (id, status)."""
    return Member(
        id=str(row["uuid"]),
        email=str(row["email"]),
        display_name=None,
        status="blocked" if row.get("blocked") else "active",
        verified=row.get("verified"),
        paid=row.get("paid"),
        registered_at=row.get("registeredAt"),
        created_at=row.get("registeredAt"),
        access_groups=(),
    )


def _legacy_error(exc: PermanentError) -> SotionError:
    """The legacy API answers a duplicate email with 400 "Member already exists"."""
    if exc.status == 400 and "already exists" in exc.message.lower():
        return ConflictError(
            exc.message,
            status=exc.status,
            request_id=exc.request_id,
            code="conflict",
            body=exc.body_excerpt,
        )
    return exc


def _unsupported(what: str) -> NoReturn:
    raise UnsupportedOperationError(f"The legacy Sotion API does not support {what}")
