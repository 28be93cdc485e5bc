"""The Sotion end of a job: bring one member to the desired state from what the bridge knows.

The bridge keeps, per member, the Sotion id and the member as it last read or wrote it
(``MemberRecord.seen``). The plan is the diff against that, so a job makes only the calls
that change something: a create for a new email, a PATCH by id for a known one, nothing
when the member already is what the ledger calls for. Sotion is read only when the bridge
knows too little: a record without ``seen`` (a GET by id), a create that meets an existing
member (409: look it up, then patch it), a member deleted meanwhile (404: look up again).
Changes made by hand in Sotion are not seen here; a reconcile re-reads Sotion and repairs
drift (``workers/bulk_sync.py``).

What the bridge is about to set is recorded as its own before the call, and what it is
about to undo is forgotten only after: a crash between the two never leaves a field the
bridge set looking like someone else's (which it would never undo).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from bridge.membership import (
    DesiredMember,
    MemberSnapshot,
    Plan,
    Policy,
    plan_changes,
    reasserted,
)
from bridge.redact import mask_email
from bridge.sotion import ConflictError, Member, NotFoundError, SotionAPI, TransientError
from workers.records import MemberRecord
from workers.store import Store

log = logging.getLogger(__name__)

Guard = Callable[[], None]


def _unguarded() -> None:
    """No lease to check (a caller without a lock, e.g. a test)."""


class MemberGoneError(TransientError):
    """The member the bridge knew by id was deleted in Sotion (looked up again)."""

    def __init__(self) -> None:
        super().__init__("the member was deleted in Sotion")


@dataclass(frozen=True)
class Known:
    """The member as the bridge knows it: its record, and its state (None: no member)."""

    record: MemberRecord
    member: MemberSnapshot | None
    read: bool = False  # just read from Sotion (not what the bridge last wrote)


class MemberWriter:
    """Plans and makes one member's Sotion calls (the caller holds the email's lock)."""

    def __init__(self, store: Store, sotion: SotionAPI, policy: Policy) -> None:
        self.store = store
        self.sotion = sotion
        self.policy = policy

    def write(
        self,
        email: str,
        desired: DesiredMember,
        record: MemberRecord,
        *,
        display_name: str | None = None,
        guard: Guard = _unguarded,
        fresh: bool = False,
        reassert: bool = False,
    ) -> list[str]:
        """Make the member ``desired``; returns the calls made.

        ``fresh``: read Sotion even where the record knows the member (a listing found it
        missing, or another creator's conflict). ``reassert``: a new grant, which writes
        what the bridge grants even where it was written before (``reasserted``).
        """
        try:
            return self._write(email, desired, record, display_name, guard, fresh, reassert)
        except MemberGoneError:
            # Deleted by hand since the bridge last wrote it: nothing on Sotion is the
            # bridge's any more; look the email up again (a new signup may hold it).
            log.info("known member is gone; looking up again email=%s", mask_email(email))
            self.store.save_member_record(email, MemberRecord())
            try:
                return self._write(
                    email, desired, MemberRecord(), display_name, guard, True, reassert
                )
            except MemberGoneError:
                raise TransientError("the member was deleted again while being updated") from None

    def _write(
        self,
        email: str,
        desired: DesiredMember,
        record: MemberRecord,
        display_name: str | None,
        guard: Guard,
        fresh: bool,
        reassert: bool,
    ) -> list[str]:
        known = self.know(email, desired, record, fresh=fresh)
        current, plan = self._planned(desired, known, reassert)
        if not known.read and _claims_anew(known.record, plan):
            # The bridge is about to take a paid or a block as its own: it may be there by
            # hand already (unseen since the bridge wrote), which must stay someone else's.
            known = self.know(email, desired, known.record, fresh=True)
            current, plan = self._planned(desired, known, reassert)
        if known.record != record:
            self.store.save_member_record(email, known.record)  # what was just read
        record = known.record
        if not plan.create:
            if record.id is None or current is None:
                return []  # no member, and none to make
            return self.change(email, record.id, current, record, plan, guard)
        self.claim(email, record, plan)
        guard()
        try:
            member = self.sotion.create_member(
                email,
                display_name=display_name,
                paid=desired.paid,
                access_group_ids=sorted(plan.add_groups),
            )
        except ConflictError:
            # Someone else made the member (a signup, an import): nothing on it is the
            # bridge's yet; plan again against it as it is.
            disowned = replace(record, bridge_blocked=False, bridge_paid=False, seen=None)
            self.store.save_member_record(email, disowned)
            found = self._lookup(email, need_groups=True)
            if found is None:
                raise TransientError("Sotion said 409 but the member is not listed yet") from None
            seen = snapshot(found)
            record = replace(disowned, id=found.id, seen=seen)
            again = self.plan(desired, seen, record)
            return [
                "create:conflict",
                *self.change(email, found.id, seen, record, again, guard, made=True),
            ]
        actions = [f"create:paid={desired.paid}"]
        actions += [f"add-group:{group_id}" for group_id in sorted(plan.add_groups)]
        created = snapshot(member, groups=plan.add_groups)
        record = replace(
            record,
            id=member.id,
            bridge_blocked=plan.bridge_blocked,
            bridge_paid=plan.bridge_paid,
            groups=record.groups | plan.add_groups,
            seen=created,
        )
        # What a create cannot set (a block: a disputed first purchase) is patched.
        rest = self.plan(desired, created, record)
        return actions + self.change(email, member.id, created, record, rest, guard, made=True)

    def _planned(
        self, desired: DesiredMember, known: Known, reassert: bool
    ) -> tuple[MemberSnapshot | None, Plan]:
        """The member to plan against, and the plan; a new grant re-asserts what the bridge
        grants where the member is known only from what it wrote (``reasserted``)."""
        current = known.member
        if reassert and current is not None and not known.read:
            current = reasserted(
                current,
                desired,
                bridge_paid=known.record.bridge_paid,
                bridge_groups=known.record.groups,
            )
        return current, self.plan(desired, current, known.record)

    def know(
        self, email: str, desired: DesiredMember, record: MemberRecord, *, fresh: bool = False
    ) -> Known:
        """The member as the bridge knows it, reading Sotion only where it knows too little."""
        if record.id is not None and record.seen is not None and not fresh:
            return Known(record, record.seen)
        if record.id is not None:
            try:
                member = self.sotion.get_member(record.id)
                return Known(replace(record, seen=snapshot(member)), snapshot(member), read=True)
            except NotFoundError:
                log.info("cached member id is gone email=%s", mask_email(email))
                record = MemberRecord()  # the member is gone, and what the bridge set with it
        elif not fresh and not self._may_exist_to_change(desired, record):
            # A new email: a create is planned (a 409 says someone was first), or nothing.
            return Known(record, None)
        need_groups = bool(desired.groups or record.groups)
        found = self._lookup(email, need_groups=need_groups)
        if found is None:
            return Known(replace(record, id=None, seen=None), None, read=True)
        seen = snapshot(found)
        return Known(replace(record, id=found.id, seen=seen), seen, read=True)

    def _may_exist_to_change(self, desired: DesiredMember, record: MemberRecord) -> bool:
        """Whether a member the bridge has no id for could need a change it would not make
        by creating them: one it set fields on before losing the id, or one the policy
        un-pays or unblocks although the bridge did not pay or block them."""
        if record.bridge_paid or record.bridge_blocked or record.groups:
            return True  # the bridge may have made them, then lost the id (a crash)
        if desired.paid or desired.groups:
            return False  # planned as a create; a 409 finds the existing member
        return (
            self.policy.unpay_manual_paid
            or self.policy.unblock_manual_blocks
            or (desired.blocked and not desired.ended_only)
        )

    def plan(
        self, desired: DesiredMember, member: MemberSnapshot | None, record: MemberRecord
    ) -> Plan:
        return plan_changes(
            desired,
            member,
            bridge_blocked=record.bridge_blocked,
            bridge_paid=record.bridge_paid,
            bridge_groups=record.groups,
            policy=self.policy,
        )

    def change(
        self,
        email: str,
        member_id: str,
        member: MemberSnapshot,
        record: MemberRecord,
        plan: Plan,
        guard: Guard = _unguarded,
        *,
        made: bool = False,
    ) -> list[str]:
        """Patch an existing member and their groups as planned; returns the calls made.

        What the plan sets is claimed first; the record (with the member as now written)
        is stored when the calls are done (always when ``made``: the member was just made).
        """
        if not plan.empty:
            self.claim(email, record, plan)
        actions: list[str] = []
        seen = member
        if plan.patch:
            guard()
            patched = self._patch(member_id, plan.patch)
            seen = replace(seen, paid=bool(patched.paid), blocked=patched.blocked)
            actions.append("patch:" + ",".join(f"{k}={v}" for k, v in sorted(plan.patch.items())))
        groups = set(record.groups)
        for group_id in sorted(plan.add_groups):
            guard()
            if self._add_to_group(member_id, group_id) or group_id in record.groups:
                groups.add(group_id)
            else:
                # Already in it (a 409), and not by the bridge: someone else's to keep.
                groups.discard(group_id)
            seen = replace(seen, groups=seen.groups | {group_id})
            actions.append(f"add-group:{group_id}")
        for group_id in sorted(plan.remove_groups):
            guard()
            with suppress(NotFoundError):  # out of the group already, or the group is gone
                self.sotion.remove_group_member(group_id, member_id)
            groups.discard(group_id)
            seen = replace(seen, groups=seen.groups - {group_id})
            actions.append(f"remove-group:{group_id}")
        final = MemberRecord(
            id=member_id,
            bridge_blocked=plan.bridge_blocked,
            bridge_paid=plan.bridge_paid,
            groups=frozenset(groups),
            seen=seen,
        )
        if final != record or actions or made:
            self.store.save_member_record(email, final)
        return actions

    def claim(self, email: str, record: MemberRecord, plan: Plan) -> None:
        """Before the calls: record as the bridge's what the plan is about to set, and
        forget what was seen: a call whose reply is lost leaves the member unknown, so
        whichever job comes next reads it instead of trusting a state it may have left."""
        updated = replace(claimed(record, plan), seen=None)
        if updated != record:
            self.store.save_member_record(email, updated)

    def _lookup(self, email: str, *, need_groups: bool) -> Member | None:
        found = self.sotion.find_member_by_email(email)
        if found is not None and need_groups:
            return self.sotion.get_member(found.id)  # lists carry no groups
        return found

    def _patch(self, member_id: str, patch: dict[str, Any]) -> Member:
        try:
            return self.sotion.update_member(member_id, **_patch_kwargs(patch))
        except NotFoundError:
            raise MemberGoneError() from None

    def _add_to_group(self, member_id: str, group_id: str) -> bool:
        """Put the member in a group: True when added, False when already in it (409).
        A 404 is the member gone (MemberGoneError) or the group gone (raised as it is)."""
        try:
            self.sotion.add_group_member(group_id, member_id)
        except ConflictError:
            return False
        except NotFoundError:
            if self._gone(member_id):
                raise MemberGoneError() from None
            raise
        return True

    def _gone(self, member_id: str) -> bool:
        try:
            self.sotion.get_member(member_id)
        except NotFoundError:
            return True
        return False


def _claims_anew(record: MemberRecord, plan: Plan) -> bool:
    """Whether the plan writes a paid or a block that the record does not call the bridge's."""
    return ("paid" in plan.patch and plan.bridge_paid and not record.bridge_paid) or (
        "status" in plan.patch and plan.bridge_blocked and not record.bridge_blocked
    )


def claimed(record: MemberRecord, plan: Plan) -> MemberRecord:
    """The record once what the plan sets is claimed as the bridge's."""
    return replace(
        record,
        bridge_blocked=record.bridge_blocked or plan.bridge_blocked,
        bridge_paid=record.bridge_paid or plan.bridge_paid,
        groups=record.groups | plan.add_groups,
    )


def snapshot(member: Member, *, groups: frozenset[str] = frozenset()) -> MemberSnapshot:
    """What the plan compares against; ``groups`` where the answer did not list them."""
    listed = member.access_group_ids
    return MemberSnapshot(
        paid=bool(member.paid),
        blocked=member.blocked,
        groups=listed if listed is not None else groups,
    )


def _patch_kwargs(patch: dict[str, Any]) -> dict[str, Any]:
    names = {"paid": "paid", "status": "status", "displayName": "display_name"}
    return {names[key]: value for key, value in patch.items()}
