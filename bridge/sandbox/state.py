"""The sandbox's data: members, access groups, memberships and login links, in memory or on disk."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from bridge.sandbox.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    SandboxError,
)

# The fake site's identity, used in v1 and legacy responses and in login-link URLs.
SITE_DOMAIN = "sandbox.sotion.site"
SITE_SLUG = "sandbox"
# Newer login-links page: links created with sendEmail:false expire after 24 hours.
LOGIN_LINK_TTL = timedelta(hours=24)
# Enumerations Sotion documents for members and list queries.
MEMBER_STATUSES = ("active", "blocked")
MEMBER_SORTS = ("createdAt", "updatedAt", "email")
SORT_ORDERS = ("asc", "desc")
GROUP_TYPES = ("custom", "scope")
# Documented field limits; the display-name and email limits are ours (undocumented).
GROUP_NAME_MAX = 100
GROUP_DESCRIPTION_MAX = 500
DISPLAY_NAME_MAX = 200
EMAIL_MAX = 254
# Bumped when the state file layout changes, so an old file fails loudly instead of oddly.
STATE_FORMAT_VERSION = 1

# Deliberately simple: one @, no spaces, a dot-separated domain with non-empty labels.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

T = TypeVar("T")


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Identified)


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, as Sotion formats timestamps."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def normalize_email(raw: str) -> str:
    """Lowercase and trim an email address, or raise InvalidError if it is not one."""
    email = raw.strip().lower()
    if len(email) > EMAIL_MAX or not _EMAIL_RE.match(email):
        raise InvalidError(f"Invalid email address: {raw!r}")
    return email


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Member:
    """One member of the site."""

    id: str
    email: str
    display_name: str | None
    status: str
    verified: bool
    paid: bool
    registered_at: str
    last_login_at: str | None
    created_at: str
    updated_at: str
    seq: int

    def to_json(self) -> dict[str, Any]:
        """The v1 member object (without accessGroups)."""
        return {
            "id": self.id,
            "email": self.email,
            "displayName": self.display_name,
            "status": self.status,
            "verified": self.verified,
            "paid": self.paid,
            "registeredAt": self.registered_at,
            "lastLoginAt": self.last_login_at,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True)
class AccessGroup:
    """One access group: `custom` (editable) or `scope` (read-only, from Notion)."""

    id: str
    name: str
    description: str | None
    type: str
    created_at: str
    updated_at: str
    seq: int

    def to_json(self, member_count: int) -> dict[str, Any]:
        """The v1 access-group object."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "memberCount": member_count,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }

    def ref(self) -> dict[str, Any]:
        """The `{id, name}` entry of a member's accessGroups array."""
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True)
class LoginLink:
    """A login link the sandbox sent (`sent`) or handed back to the caller (`created`)."""

    member_id: str
    email: str
    status: str
    url: str
    expires_at: str
    redirect_path: str | None
    created_at: str
    api: str

    def to_json(self) -> dict[str, Any]:
        """The login link as shown by the control endpoint."""
        return {
            "memberId": self.member_id,
            "email": self.email,
            "status": self.status,
            "url": self.url,
            "expiresAt": self.expires_at,
            "redirectPath": self.redirect_path,
            "createdAt": self.created_at,
            "api": self.api,
        }


@dataclass(frozen=True)
class NewMember:
    """A member to create, with types already checked (values are checked by the state)."""

    email: str
    display_name: str | None = None
    paid: bool = False
    access_group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class MemberPatch:
    """Changes to a member; None means "leave as is" except where `*_set` says otherwise."""

    email: str | None = None
    display_name: str | None = None
    display_name_set: bool = False
    paid: bool | None = None
    status: str | None = None


@dataclass(frozen=True)
class GroupPatch:
    """Changes to an access group; `description_set` distinguishes null from absent."""

    name: str | None = None
    description: str | None = None
    description_set: bool = False


@dataclass(frozen=True)
class MemberQuery:
    """Filters, order and page of a member listing."""

    after: str | None = None
    limit: int = 50
    email: str | None = None
    q: str | None = None
    status: str | None = None
    paid: bool | None = None
    verified: bool | None = None
    sort: str = "createdAt"
    order: str = "desc"

    def matches(self, member: Member) -> bool:
        """Whether `member` passes every filter of this query."""
        if self.email is not None and member.email != self.email.strip().lower():
            return False
        if self.q is not None:
            needle = self.q.lower()
            name = (member.display_name or "").lower()
            if needle not in member.email and needle not in name:
                return False
        return (
            (self.status is None or member.status == self.status)
            and (self.paid is None or member.paid == self.paid)
            and (self.verified is None or member.verified == self.verified)
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a cursor-paginated listing."""

    items: list[T]
    has_more: bool
    next_cursor: str | None

    def pagination(self) -> dict[str, Any]:
        """The `pagination` object of a v1 list response."""
        return {"hasMore": self.has_more, "nextCursor": self.next_cursor}


@dataclass
class _Data:
    """Everything that is persisted; the lock in SandboxState guards it."""

    site_id: str
    seq: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    by_email: dict[str, str] = field(default_factory=dict)
    groups: dict[str, AccessGroup] = field(default_factory=dict)
    # group id -> member id -> sequence number of the join, which orders group listings.
    memberships: dict[str, dict[str, int]] = field(default_factory=dict)
    login_links: list[LoginLink] = field(default_factory=list)


class SandboxState:
    """Thread-safe store of the sandbox's data, rewritten atomically to `state_file` if given."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utc_now,
        state_file: str | os.PathLike[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._lock = threading.RLock()
        self._path = None if state_file is None else Path(state_file)
        self._data = _Data(site_id=self._new_id())
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if self._path.exists():
                self._data = _load(self._path)
            else:
                self._save()

    @property
    def site_id(self) -> str:
        """The id of the fake site (stable across resets and restarts with a state file)."""
        return self._data.site_id

    @property
    def state_file(self) -> Path | None:
        """Where the state is persisted, if anywhere."""
        return self._path

    # Members

    def create_member(self, draft: NewMember) -> Member:
        """Create a member, adding it to the requested custom groups."""
        with self._lock:
            member = self._insert_member(draft)
            self._save()
            return member

    def create_members(self, drafts: Sequence[NewMember]) -> list[Member | SandboxError]:
        """Create members one by one (not atomically): each yields a member or its error."""
        outcomes: list[Member | SandboxError] = []
        with self._lock:
            for draft in drafts:
                try:
                    outcomes.append(self._insert_member(draft))
                except SandboxError as exc:
                    outcomes.append(exc)
            # One rewrite per batch: a 500-item bulk would otherwise rewrite the file 500 times.
            self._save()
        return outcomes

    def get_member(self, member_id: str) -> Member:
        """The member with this id, or NotFoundError."""
        with self._lock:
            return self._require_member(member_id)

    def find_member_by_email(self, email: str) -> Member | None:
        """The member with this email (trimmed, case-insensitive), if any."""
        with self._lock:
            member_id = self._data.by_email.get(email.strip().lower())
            return None if member_id is None else self._data.members[member_id]

    def list_members(self, query: MemberQuery) -> Page[Member]:
        """One page of members matching `query`, in its sort order."""
        with self._lock:
            key = _member_sort_key(query.sort)
            descending = query.order == "desc"
            members = sorted(
                (m for m in self._data.members.values() if query.matches(m)),
                key=key,
                reverse=descending,
            )
            if query.after is not None:
                anchor = self._data.members.get(query.after)
                if anchor is None:
                    raise InvalidError(f"Unknown cursor: {query.after!r}")
                # Position by sort key rather than by index, so the anchor need not match filters.
                mark = key(anchor)
                members = [m for m in members if (key(m) < mark if descending else key(m) > mark)]
            return _paginate(members, query.limit)

    def update_member(self, member_id: str, patch: MemberPatch) -> Member:
        """Apply `patch`; updatedAt moves only if a value actually changed."""
        with self._lock:
            member = self._require_member(member_id)
            updated = member
            if patch.email is not None:
                email = normalize_email(patch.email)
                owner = self._data.by_email.get(email)
                if owner is not None and owner != member_id:
                    raise ConflictError("A member with this email already exists")
                updated = replace(updated, email=email)
            if patch.display_name_set:
                updated = replace(updated, display_name=_clean_display_name(patch.display_name))
            if patch.paid is not None:
                updated = replace(updated, paid=patch.paid)
            if patch.status is not None:
                updated = replace(updated, status=_check_status(patch.status))
            if updated == member:
                return member
            updated = replace(updated, updated_at=self._now())
            self._store_member(updated, previous_email=member.email)
            self._save()
            return updated

    def verify_member(self, member_id: str) -> Member:
        """Mark the member's email as verified (as clicking a login link would)."""
        with self._lock:
            member = self._require_member(member_id)
            if member.verified:
                return member
            updated = replace(member, verified=True, updated_at=self._now())
            self._store_member(updated, previous_email=member.email)
            self._save()
            return updated

    def delete_member(self, member_id: str) -> None:
        """Delete the member and every group membership it had."""
        with self._lock:
            member = self._require_member(member_id)
            del self._data.members[member_id]
            del self._data.by_email[member.email]
            for members in self._data.memberships.values():
                members.pop(member_id, None)
            self._save()

    def groups_of(self, member_id: str) -> list[AccessGroup]:
        """The access groups the member belongs to, oldest group first."""
        with self._lock:
            groups = [
                self._data.groups[group_id]
                for group_id, members in self._data.memberships.items()
                if member_id in members
            ]
            return sorted(groups, key=lambda group: group.seq)

    def member_json(self, member: Member) -> dict[str, Any]:
        """The v1 member object including its accessGroups array."""
        body = member.to_json()
        body["accessGroups"] = [group.ref() for group in self.groups_of(member.id)]
        return body

    # Access groups

    def create_group(self, name: str, description: str | None = None) -> AccessGroup:
        """Create a custom access group with a unique name."""
        with self._lock:
            group = self._insert_group(name, description, "custom")
            self._save()
            return group

    def add_scope_group(self, name: str, description: str | None = None) -> AccessGroup:
        """Create a scope group, as Sotion does for a Notion collection."""
        with self._lock:
            group = self._insert_group(name, description, "scope")
            self._save()
            return group

    def ensure_scope_group(self, name: str) -> AccessGroup:
        """The scope group called `name`, created if missing (ConflictError if it is custom)."""
        with self._lock:
            for group in self._data.groups.values():
                if group.name == name.strip() and group.type == "scope":
                    return group
            return self.add_scope_group(name)

    def get_group(self, group_id: str) -> AccessGroup:
        """The access group with this id, or NotFoundError."""
        with self._lock:
            return self._require_group(group_id)

    def list_groups(self, after: str | None, limit: int) -> Page[AccessGroup]:
        """One page of access groups, oldest first."""
        with self._lock:
            groups = sorted(self._data.groups.values(), key=lambda group: group.seq)
            if after is not None:
                anchor = self._data.groups.get(after)
                if anchor is None:
                    raise InvalidError(f"Unknown cursor: {after!r}")
                groups = [group for group in groups if group.seq > anchor.seq]
            return _paginate(groups, limit)

    def group_json(self, group: AccessGroup) -> dict[str, Any]:
        """The v1 access-group object with its current memberCount."""
        with self._lock:
            return group.to_json(len(self._data.memberships.get(group.id, {})))

    def update_group(self, group_id: str, patch: GroupPatch) -> AccessGroup:
        """Rename or re-describe a custom group; updatedAt moves only on a real change."""
        with self._lock:
            group = self._require_custom_group(group_id)
            updated = group
            if patch.name is not None:
                name = _check_group_name(patch.name)
                if any(g.name == name and g.id != group_id for g in self._data.groups.values()):
                    raise ConflictError("An access group with this name already exists")
                updated = replace(updated, name=name)
            if patch.description_set:
                updated = replace(updated, description=_check_description(patch.description))
            if updated == group:
                return group
            updated = replace(updated, updated_at=self._now())
            self._data.groups[group_id] = updated
            self._save()
            return updated

    def delete_group(self, group_id: str) -> None:
        """Delete a custom group; its members stay."""
        with self._lock:
            self._require_custom_group(group_id)
            del self._data.groups[group_id]
            self._data.memberships.pop(group_id, None)
            self._save()

    def list_group_members(self, group_id: str, after: str | None, limit: int) -> Page[Member]:
        """One page of the group's members, in the order they joined."""
        with self._lock:
            self._require_group(group_id)
            joined = self._data.memberships.get(group_id, {})
            order = sorted(joined.items(), key=lambda item: item[1])
            if after is not None:
                if after not in joined:
                    raise InvalidError(f"Unknown cursor: {after!r}")
                order = [item for item in order if item[1] > joined[after]]
            return _paginate([self._data.members[member_id] for member_id, _ in order], limit)

    def add_member_to_group(
        self, group_id: str, member_id: str, *, allow_scope: bool = False
    ) -> None:
        """Put a member in a custom group (`allow_scope` lets tests fill scope groups too)."""
        with self._lock:
            group = self._require_group(group_id)
            if group.type == "scope" and not allow_scope:
                raise _scope_is_read_only(group)
            self._require_member(member_id)
            members = self._data.memberships.setdefault(group_id, {})
            if member_id in members:
                raise ConflictError("Member is already in this access group")
            members[member_id] = self._next_seq()
            self._save()

    def remove_member_from_group(
        self, group_id: str, member_id: str, *, allow_scope: bool = False
    ) -> None:
        """Take a member out of a custom group without deleting the member."""
        with self._lock:
            group = self._require_group(group_id)
            if group.type == "scope" and not allow_scope:
                raise _scope_is_read_only(group)
            members = self._data.memberships.get(group_id, {})
            if member_id not in members:
                raise NotFoundError("Member is not in this access group")
            del members[member_id]
            self._save()

    # Login links

    def issue_login_link(
        self,
        member_id: str,
        *,
        status: str,
        api: str,
        redirect_path: str | None = None,
        url: str | None = None,
    ) -> LoginLink:
        """Record a login link sent to, or created for, a member; the URL defaults to a token."""
        with self._lock:
            member = self._require_member(member_id)
            now = self._clock()
            link = LoginLink(
                member_id=member.id,
                email=member.email,
                status=status,
                url=url or f"https://{SITE_DOMAIN}/_auth?token={self._new_token()}",
                expires_at=format_timestamp(now + LOGIN_LINK_TTL),
                redirect_path=redirect_path,
                created_at=format_timestamp(now),
                api=api,
            )
            self._data.login_links.append(link)
            self._save()
            return link

    def login_links(self) -> list[LoginLink]:
        """Every login link sent or created, oldest first."""
        with self._lock:
            return list(self._data.login_links)

    # Whole-state operations

    def reset(self) -> None:
        """Forget every member, group and login link (the site id stays)."""
        with self._lock:
            self._data = _Data(site_id=self._data.site_id)
            self._save()

    def members_snapshot(self) -> list[dict[str, Any]]:
        """Every member as v1 JSON plus `accessGroupIds`, oldest first."""
        with self._lock:
            snapshot = []
            for member in sorted(self._data.members.values(), key=lambda m: m.seq):
                body = member.to_json()
                body["accessGroupIds"] = [group.id for group in self.groups_of(member.id)]
                snapshot.append(body)
            return snapshot

    def snapshot(self) -> dict[str, Any]:
        """Everything in the store, for the control endpoint and for assertions."""
        with self._lock:
            groups = sorted(self._data.groups.values(), key=lambda group: group.seq)
            return {
                "siteId": self._data.site_id,
                "members": self.members_snapshot(),
                "accessGroups": [self.group_json(group) for group in groups],
                "loginLinks": [link.to_json() for link in self._data.login_links],
            }

    # Internals (callers hold the lock)

    def _insert_member(self, draft: NewMember) -> Member:
        email = normalize_email(draft.email)
        display_name = _clean_display_name(draft.display_name)
        groups = self._resolve_groups(draft.access_group_ids)
        if email in self._data.by_email:
            raise ConflictError("A member with this email already exists")
        now = self._now()
        member = Member(
            id=self._new_id(),
            email=email,
            display_name=display_name,
            status="active",
            verified=False,
            paid=draft.paid,
            registered_at=now,
            last_login_at=None,
            created_at=now,
            updated_at=now,
            seq=self._next_seq(),
        )
        self._store_member(member, previous_email=None)
        for group in groups:
            self._data.memberships.setdefault(group.id, {})[member.id] = self._next_seq()
        return member

    def _resolve_groups(self, group_ids: Iterable[str]) -> list[AccessGroup]:
        groups: list[AccessGroup] = []
        for group_id in dict.fromkeys(group_ids):
            group = self._data.groups.get(group_id)
            if group is None:
                raise InvalidError(f"Unknown access group id: {group_id!r}")
            if group.type == "scope":
                raise _scope_is_read_only(group)
            groups.append(group)
        return groups

    def _store_member(self, member: Member, previous_email: str | None) -> None:
        if previous_email is not None:
            del self._data.by_email[previous_email]
        self._data.members[member.id] = member
        self._data.by_email[member.email] = member.id

    def _insert_group(self, name: str, description: str | None, kind: str) -> AccessGroup:
        name = _check_group_name(name)
        description = _check_description(description)
        if any(group.name == name for group in self._data.groups.values()):
            raise ConflictError("An access group with this name already exists")
        now = self._now()
        group = AccessGroup(
            id=self._new_id(),
            name=name,
            description=description,
            type=kind,
            created_at=now,
            updated_at=now,
            seq=self._next_seq(),
        )
        self._data.groups[group.id] = group
        return group

    def _require_member(self, member_id: str) -> Member:
        member = self._data.members.get(member_id)
        if member is None:
            raise NotFoundError("Member not found")
        return member

    def _require_group(self, group_id: str) -> AccessGroup:
        group = self._data.groups.get(group_id)
        if group is None:
            raise NotFoundError("Access group not found")
        return group

    def _require_custom_group(self, group_id: str) -> AccessGroup:
        group = self._require_group(group_id)
        if group.type == "scope":
            raise _scope_is_read_only(group)
        return group

    def _next_seq(self) -> int:
        self._data.seq += 1
        return self._data.seq

    def _now(self) -> str:
        return format_timestamp(self._clock())

    def _new_id(self) -> str:
        if self._rng is None:
            return str(uuid.uuid4())
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_token(self) -> str:
        if self._rng is None:
            return secrets.token_urlsafe(24)
        return f"{self._rng.getrandbits(192):048x}"

    def _save(self) -> None:
        if self._path is None:
            return
        _write_atomically(self._path, _dump(self._data))


def _member_sort_key(sort: str) -> Callable[[Member], tuple[str, int]]:
    # The insertion sequence breaks ties, so equal timestamps still page deterministically.
    if sort == "updatedAt":
        return lambda member: (member.updated_at, member.seq)
    if sort == "email":
        return lambda member: (member.email, member.seq)
    return lambda member: (member.created_at, member.seq)


def _paginate(items: list[R], limit: int) -> Page[R]:
    page = items[:limit]
    has_more = len(items) > limit
    return Page(page, has_more, page[-1].id if has_more and page else None)


def _clean_display_name(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > DISPLAY_NAME_MAX:
        raise InvalidError(f"displayName must be at most {DISPLAY_NAME_MAX} characters")
    # A blank name is no name: store null rather than an invisible string.
    return value.strip() or None


def _check_status(value: str) -> str:
    if value not in MEMBER_STATUSES:
        raise InvalidError("status must be 'active' or 'blocked'")
    return value


def _check_group_name(value: str) -> str:
    name = value.strip()
    if not 1 <= len(name) <= GROUP_NAME_MAX:
        raise InvalidError(f"name must be 1 to {GROUP_NAME_MAX} characters")
    return name


def _check_description(value: str | None) -> str | None:
    if value is not None and len(value) > GROUP_DESCRIPTION_MAX:
        raise InvalidError(f"description must be at most {GROUP_DESCRIPTION_MAX} characters")
    return value


def _scope_is_read_only(group: AccessGroup) -> ForbiddenError:
    return ForbiddenError(f"Access group {group.name!r} is a scope group and is read-only")


def _dump(data: _Data) -> dict[str, Any]:
    return {
        "version": STATE_FORMAT_VERSION,
        "siteId": data.site_id,
        "seq": data.seq,
        "members": [asdict(member) for member in data.members.values()],
        "accessGroups": [asdict(group) for group in data.groups.values()],
        "memberships": data.memberships,
        "loginLinks": [asdict(link) for link in data.login_links],
    }


def _load(path: Path) -> _Data:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != STATE_FORMAT_VERSION:
            raise ValueError(f"unsupported version {raw.get('version')!r}")
        members = {item["id"]: Member(**item) for item in raw["members"]}
        return _Data(
            site_id=str(raw["siteId"]),
            seq=int(raw["seq"]),
            members=members,
            by_email={member.email: member.id for member in members.values()},
            groups={item["id"]: AccessGroup(**item) for item in raw["accessGroups"]},
            memberships={
                group_id: {member_id: int(seq) for member_id, seq in joined.items()}
                for group_id, joined in raw["memberships"].items()
            },
            login_links=[LoginLink(**item) for item in raw["loginLinks"]],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"cannot load sandbox state file {path}: {exc}") from exc


def _write_atomically(path: Path, payload: dict[str, Any]) -> None:
    # Temp file in the same directory + os.replace: readers see the old file or the new one.
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            json.dump(payload, temp, indent=1)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
