"""One listing of the Sotion site: every member, and the members of each managed group.

Sotion's member lists carry no groups, so the groups the bridge manages (the products
file's and those it added to members) are listed one by one: ceil(N/100) pages for the
members, plus a page per 100 members of each such group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bridge.membership import MemberSnapshot
from bridge.sotion import Member, SotionAPI
from bridge.sotion.client import PAGE_MAX

# (what is being read, how many read so far)
Progress = Callable[[str, int], None]


@dataclass
class SiteListing:
    """The members as Sotion listed them, by email and by id, and their managed groups."""

    by_email: dict[str, Member] = field(default_factory=dict)
    by_id: dict[str, Member] = field(default_factory=dict)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)  # member id -> groups

    @classmethod
    def read(
        cls,
        sotion: SotionAPI,
        managed_groups: Iterable[str],
        calls: Counter[str],
        progress: Progress | None = None,
    ) -> SiteListing:
        """List the site (``calls`` counts the pages read, by kind)."""
        listing = cls()
        after: str | None = None
        while True:
            page = sotion.list_members(limit=PAGE_MAX, after=after)
            calls["list members"] += 1
            for member in page:
                listing.by_email[member.email] = member
                listing.by_id[member.id] = member
            if progress is not None:
                progress("sotion", len(listing.by_email))
            if not page.has_more:
                break
            after = page.next_cursor
        groups: dict[str, set[str]] = {}
        for group_id in sorted(set(managed_groups)):
            after = None
            while True:
                page = sotion.list_group_members(group_id, limit=PAGE_MAX, after=after)
                calls["list group members"] += 1
                for member in page:
                    groups.setdefault(member.id, set()).add(group_id)
                if not page.has_more:
                    break
                after = page.next_cursor
        listing.groups = {member_id: frozenset(ids) for member_id, ids in groups.items()}
        return listing

    def member(self, email: str, member_id: str | None) -> Member | None:
        """The member by the id the bridge knows first (a login email can change), else
        by email."""
        return self.by_id.get(member_id or "") or self.by_email.get(email)

    def snapshot(self, member: Member | None) -> MemberSnapshot | None:
        """What the plan compares against."""
        if member is None:
            return None
        return MemberSnapshot(
            paid=bool(member.paid),
            blocked=member.blocked,
            groups=self.groups.get(member.id, frozenset()),
        )
