"""Value objects returned by the Sotion client (both API flavours map onto these)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Unset:
    """Marker for "leave this field alone" in PATCH calls (``None`` means "clear")."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass(frozen=True)
class RateLimit:
    """The ``X-RateLimit-*`` headers of one response."""

    limit: int | None
    remaining: int | None
    reset_at: float | None  # Unix seconds when the window reopens

    def seconds_until_reset(self, now: float) -> float:
        """Seconds from ``now`` until the window reopens (0 when unknown or past)."""
        return 0.0 if self.reset_at is None else max(self.reset_at - now, 0.0)


@dataclass(frozen=True)
class GroupRef:
    """An access group as listed on a member: id and name."""

    id: str
    name: str | None = None


@dataclass(frozen=True)
class Member:
    """A Sotion member. ``access_groups`` is None where the API did not include it (lists)."""

    id: str
    email: str
    display_name: str | None = None
    status: str = "active"
    verified: bool | None = None
    paid: bool | None = None
    registered_at: str | None = None
    last_login_at: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    access_groups: tuple[GroupRef, ...] | None = None

    @property
    def blocked(self) -> bool:
        """True when the member is denied access."""
        return self.status == "blocked"

    @property
    def access_group_ids(self) -> frozenset[str] | None:
        """The ids of the member's groups, or None when the response did not list them."""
        if self.access_groups is None:
            return None
        return frozenset(group.id for group in self.access_groups)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Member:
        """Build from a v1 API member object."""
        groups = data.get("accessGroups")
        return cls(
            id=str(data["id"]),
            email=str(data["email"]),
            display_name=data.get("displayName"),
            status=str(data.get("status") or "active"),
            verified=data.get("verified"),
            paid=data.get("paid"),
            registered_at=data.get("registeredAt"),
            last_login_at=data.get("lastLoginAt"),
            created_at=data.get("createdAt"),
            updated_at=data.get("updatedAt"),
            access_groups=None
            if groups is None
            else tuple(GroupRef(id=str(g["id"]), name=g.get("name")) for g in groups),
        )


@dataclass(frozen=True)
class AccessGroup:
    """A Sotion access group (``type`` is ``custom`` or the read-only ``scope``)."""

    id: str
    name: str
    description: str | None = None
    type: str = "custom"
    member_count: int | None = None
    created_at: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> AccessGroup:
        """Build from a v1 API access-group object."""
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            description=data.get("description"),
            type=str(data.get("type") or "custom"),
            member_count=data.get("memberCount"),
            created_at=data.get("createdAt"),
            updated_at=data.get("updatedAt"),
        )


@dataclass(frozen=True)
class Site:
    """The site the API key belongs to."""

    id: str
    status: str | None = None
    domain: str | None = None
    slug: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a cursor-paginated list."""

    items: tuple[T, ...]
    has_more: bool = False
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class NewMember:
    """One member to create in a bulk call."""

    email: str
    display_name: str | None = None
    paid: bool = False
    access_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class BulkItem:
    """The outcome for one email of a bulk create: created, conflict or error."""

    email: str
    status: str
    member: Member | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class BulkResult:
    """All outcomes of a (possibly chunked) bulk create, in input order."""

    items: tuple[BulkItem, ...] = field(default_factory=tuple)

    @property
    def created(self) -> tuple[BulkItem, ...]:
        """Items whose member was created."""
        return tuple(item for item in self.items if item.status == "created")

    @property
    def conflicts(self) -> tuple[BulkItem, ...]:
        """Items whose email already belonged to a member."""
        return tuple(item for item in self.items if item.status == "conflict")

    @property
    def errors(self) -> tuple[BulkItem, ...]:
        """Items that failed for another reason."""
        return tuple(item for item in self.items if item.status == "error")


@dataclass(frozen=True)
class LoginLink:
    """A login link: ``sent`` by email, or ``created`` with its ``url`` returned."""

    member_id: str
    status: str
    url: str | None = None
    expires_at: str | None = None
