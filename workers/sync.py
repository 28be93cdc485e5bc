"""Apply one MembershipEvent: update the email's ledger, then bring Sotion in line.

The order matters for exactly-once effect: the ledger merge is idempotent (a replayed
event changes nothing), and the Sotion side is a diff between the state the whole ledger
calls for and the member as Sotion has it now, so a re-run makes no call twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.events import EntitlementState, MembershipEvent
from bridge.ledger import Entitlement, record
from bridge.membership import (
    DesiredMember,
    MemberSnapshot,
    Plan,
    Policy,
    desired_member,
    plan_changes,
)
from bridge.products import Catalog
from bridge.redact import mask_email
from bridge.sotion import (
    ConflictError,
    Member,
    NotFoundError,
    SotionAPI,
    TransientError,
)
from workers.resolve import Resolver
from workers.store import MemberRecord, Store

log = logging.getLogger(__name__)

# Schedules a re-sync of an email at a Unix time (a past_due grace running out).
ScheduleResync = Callable[[str, float], None]


@dataclass
class Outcome:
    """What applying one event did (the job's result, kept in RQ for inspection)."""

    event: str
    email: str
    entitlement: str | None = None
    ledger_changed: bool = False
    actions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-serializable form (masked email)."""
        return {
            "event": self.event,
            "email": self.email,
            "entitlement": self.entitlement,
            "ledger_changed": self.ledger_changed,
            "actions": self.actions,
        }


class Applier:
    """Applies events for one Sotion site."""

    def __init__(
        self,
        store: Store,
        sotion: SotionAPI,
        resolver: Resolver,
        *,
        policy: Policy | None = None,
        catalog: Catalog | None = None,
        schedule_resync: ScheduleResync | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sotion = sotion
        self.resolver = resolver
        self.policy = policy or Policy()
        self.catalog = catalog
        self.schedule_resync = schedule_resync
        self._clock = clock

    def apply(self, event: MembershipEvent) -> Outcome:
        """Merge the event into its email's ledger and sync that member to Sotion."""
        key = self.resolver.entitlement(event)
        owner = self.store.owner_of(key) if key is not None else None
        if owner is None and self.unlisted(event):
            # A purchase of a product no rule lists, which the bridge never granted.
            return Outcome(event=event.dedupe_key, email="-", entitlement=key)
        if not event.changes_entitlement:
            # Nothing changes hands; remember what the event tells us, if we can.
            email = owner or self.resolver.email(event)
            self.store.learn(event, email, key)
            return Outcome(event=event.dedupe_key, email=mask_email(email), entitlement=key)
        email = owner or self.resolver.require_email(event)
        if key is not None:
            email = self.store.claim_owner(key, email)
        self.store.learn(event, email, key)
        event = self.resolver.refresh(event, key)
        outcome = Outcome(event=event.dedupe_key, email=mask_email(email), entitlement=key)
        with self.store.email_lock(email) as lease:
            if key is not None:
                outcome.ledger_changed = self.record(email, key, event)
            outcome.actions = self.sync_member(
                email, display_name=event.display_name, guard=lease.ensure
            )
        log.info(
            "applied event=%s email=%s entitlement=%s changed=%s actions=%s",
            outcome.event,
            outcome.email,
            key,
            outcome.ledger_changed,
            ",".join(outcome.actions),
        )
        return outcome

    def unlisted(self, event: MembershipEvent) -> bool:
        """True when a products file exists and lists none of the event's known products."""
        return (
            self.catalog is not None
            and bool(event.products)
            and self.catalog.rule_for(event.provider, event.products) is None
        )

    def resync(self, email: str) -> list[str]:
        """Bring one email's member in line with its ledger (e.g. when a grace runs out)."""
        with self.store.email_lock(email) as lease:
            return self.sync_member(email, guard=lease.ensure)

    def record(self, email: str, key: str, event: MembershipEvent) -> bool:
        """Merge the event into the ledger (the caller holds the email's lock); True when
        the ledger changed."""
        merged, folded = record(self.store.entitlements(email), key, event)
        for other in folded:
            self.store.delete_entitlement(email, other)
        if merged is None:
            return False
        self.store.save_entitlement(email, merged)
        self.recorded(email, merged)
        return True

    def recorded(self, email: str, merged: Entitlement) -> None:
        """After an entitlement is stored: a past_due one is looked at again when its
        grace runs out."""
        grace = self.policy.past_due_grace_seconds
        if (
            merged.state is EntitlementState.PAST_DUE
            and grace is not None
            and self.schedule_resync is not None
        ):
            self.schedule_resync(email, merged.occurred_at + grace + 1)

    def sync_member(
        self,
        email: str,
        *,
        display_name: str | None = None,
        guard: Callable[[], None] = lambda: None,
    ) -> list[str]:
        """Make the Sotion member match the ledger; returns the calls made (caller locks).

        ``guard`` runs before every write: the email's lease raises there if it was lost.

        What the bridge is about to set is recorded as its own before the call, and what
        it is about to undo is forgotten only after: a crash between the two never leaves
        a field the bridge set looking like someone else's (which it would never undo).
        """
        entitlements = self.store.entitlements(email).values()
        if not entitlements:
            return []
        desired = desired_member(entitlements, self.policy, self.catalog, now=self._clock())
        record = self.store.member_record(email)
        need_groups = bool(desired.groups or record.groups)
        member = self._find(email, record.id, need_groups=need_groups)
        plan = self.plan(desired, member, record)
        actions: list[str] = []
        if plan.create:
            # On a 409 someone else made the member: nothing on it is the bridge's yet.
            disowned = replace(record, bridge_blocked=False, bridge_paid=False)
            self.claim(email, record, plan)
            guard()
            member, created_groups = self._create(
                email, display_name, desired, plan, actions, disowned
            )
            if actions[-1:] == ["create:conflict"]:
                record = disowned
            else:
                record = replace(
                    record,
                    bridge_blocked=plan.bridge_blocked,
                    bridge_paid=plan.bridge_paid,
                    groups=record.groups | created_groups,
                )
            # Compare again with the member as created (or as someone else created it).
            plan = self.plan(desired, member, record)
        if member is None:
            self.store.save_member_record(email, replace(record, id=None))
            return actions
        record = replace(record, id=member.id)
        return actions + self.carry_out(email, member, record, plan, guard, made=bool(actions))

    def carry_out(
        self,
        email: str,
        member: Member,
        record: MemberRecord,
        plan: Plan,
        guard: Callable[[], None] = lambda: None,
        *,
        made: bool = False,
    ) -> list[str]:
        """Patch an existing member and their groups as planned; returns the calls made.

        What the plan sets is claimed first; the record is stored when the calls are done
        (always when ``made``: the member was just created).
        """
        if not plan.empty:
            self.claim(email, record, plan)
        actions: list[str] = []
        if plan.patch:
            guard()
            member = self._patch(email, member.id, plan.patch)
            actions.append("patch:" + ",".join(f"{k}={v}" for k, v in sorted(plan.patch.items())))
        groups = set(record.groups)
        for group_id in sorted(plan.add_groups):
            guard()
            self._add_group(group_id, member.id)
            groups.add(group_id)
            actions.append(f"add-group:{group_id}")
        for group_id in sorted(plan.remove_groups):
            guard()
            self._remove_group(group_id, member.id)
            groups.discard(group_id)
            actions.append(f"remove-group:{group_id}")
        final = MemberRecord(
            id=member.id,
            bridge_blocked=plan.bridge_blocked,
            bridge_paid=plan.bridge_paid,
            groups=frozenset(groups),
        )
        if final != record or actions or made:
            self.store.save_member_record(email, final)
        return actions

    def claim(self, email: str, record: MemberRecord, plan: Plan) -> None:
        """Record as the bridge's what the plan is about to set (before the calls)."""
        updated = claimed(record, plan)
        if updated != record:
            self.store.save_member_record(email, updated)

    def plan(self, desired: DesiredMember, member: Member | None, record: MemberRecord) -> Plan:
        return plan_changes(
            desired,
            _snapshot(member),
            bridge_blocked=record.bridge_blocked,
            bridge_paid=record.bridge_paid,
            bridge_groups=record.groups,
            policy=self.policy,
        )

    def _find(self, email: str, member_id: str | None, *, need_groups: bool) -> Member | None:
        """The member: by cached id (404 → look up again), else by email."""
        if member_id is not None:
            try:
                return self.sotion.get_member(member_id)
            except NotFoundError:
                log.info("cached member id is gone email=%s", mask_email(email))
        found = self.sotion.find_member_by_email(email)
        if found is not None and need_groups:
            return self.sotion.get_member(found.id)  # lists carry no groups
        return found

    def _create(
        self,
        email: str,
        display_name: str | None,
        desired: DesiredMember,
        plan: Plan,
        actions: list[str],
        disowned: MemberRecord,
    ) -> tuple[Member, frozenset[str]]:
        """Create the member (with their groups); on 409 return the existing one.

        On a 409 the record becomes ``disowned`` before any lookup that could fail.
        """
        try:
            member = self.sotion.create_member(
                email,
                display_name=display_name,
                paid=desired.paid,
                access_group_ids=sorted(plan.add_groups),
            )
            actions.append(f"create:paid={desired.paid}")
            actions.extend(f"add-group:{group_id}" for group_id in sorted(plan.add_groups))
            return member, plan.add_groups
        except ConflictError:
            # Created concurrently (another job, or a signup): use theirs and patch it.
            self.store.save_member_record(email, disowned)
            existing = self.sotion.find_member_by_email(email)
            if existing is None:
                raise TransientError("Sotion said 409 but the member is not listed yet") from None
            actions.append("create:conflict")
            return self.sotion.get_member(existing.id), frozenset()

    def _patch(self, email: str, member_id: str, patch: dict[str, Any]) -> Member:
        try:
            return self.sotion.update_member(member_id, **_patch_kwargs(patch))
        except NotFoundError:
            self.store.save_member_record(email, MemberRecord())
            raise TransientError(
                "member was deleted while being updated; will look up again"
            ) from None

    def _add_group(self, group_id: str, member_id: str) -> None:
        with suppress(ConflictError):  # already in the group
            self.sotion.add_group_member(group_id, member_id)

    def _remove_group(self, group_id: str, member_id: str) -> None:
        with suppress(NotFoundError):  # already out of the group
            self.sotion.remove_group_member(group_id, member_id)


def claimed(record: MemberRecord, plan: Plan) -> MemberRecord:
    """The record once what the plan sets is claimed as the bridge's."""
    return replace(
        record,
        bridge_blocked=record.bridge_blocked or plan.bridge_blocked,
        bridge_paid=record.bridge_paid or plan.bridge_paid,
        groups=record.groups | plan.add_groups,
    )


def _snapshot(member: Member | None) -> MemberSnapshot | None:
    if member is None:
        return None
    return MemberSnapshot(
        paid=bool(member.paid),
        blocked=member.blocked,
        groups=member.access_group_ids or frozenset(),
    )


def _patch_kwargs(patch: dict[str, Any]) -> dict[str, Any]:
    names = {"paid": "paid", "status": "status", "displayName": "display_name"}
    return {names[key]: value for key, value in patch.items()}
