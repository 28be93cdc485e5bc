"""Every member at once: each ledger's desired state against one listing of Sotion.

A webhook job looks its one member up; a backfill of 10,000 buyers cannot afford 10,000
lookups. Here Sotion is listed once (100 members a page), with the members of each access
group the bridge manages, every email is planned against that listing, and only what
differs is written: new members in bulk (500 a call), existing ones patched where they
differ. Each write is made under the email's lock from the ledger as it is then, so a
webhook job running meanwhile is never undone: the listing may be late, the ledger never
is, and a late listing costs at most a redundant write, or a conflict on create, which
falls back to the one-member path of ``workers/sync.py``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from bridge.ledger import Entitlement
from bridge.membership import DesiredMember, MemberSnapshot, Plan, desired_member, plan_changes
from bridge.redact import mask_email, redact
from bridge.sotion import Member, NewMember, RateLimitedError, SotionAPI, SotionError
from bridge.sotion.client import BULK_MAX, PAGE_MAX
from workers import store as store_module
from workers.lease import LeaseBusyError, LeaseLostError, LeaseSet
from workers.store import MemberRecord, Store
from workers.sync import Applier, claimed

log = logging.getLogger(__name__)

# A member's writes are tried this often when Sotion answers 429 (waiting each time).
RATE_LIMITED_TRIES = 4
# Members patched under one batch of locks: a webhook job of one of them waits at most
# for this many members' writes (it gives up after 15 s and retries later).
UPDATE_CHUNK = 20
# How often a run looks again at the emails a job holds.
BUSY_POLL_SECONDS = 0.2

Progress = Callable[[str, int], None]


@dataclass
class MemberChange:
    """What was (or, dry, would be) done to one member."""

    email: str  # masked
    actions: list[str]


@dataclass
class SyncReport:
    """What one pass over every member did."""

    members: int = 0  # emails with a ledger, compared
    changes: list[MemberChange] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)  # Sotion calls by kind
    failures: list[str] = field(default_factory=list)
    adopted: int = 0  # paid-by-hand members whose paid the bridge now tracks


@dataclass(frozen=True)
class _Target:
    email: str
    member: Member | None
    plan: Plan
    adopted: MemberRecord | None = None  # --adopt-paid: the record to store under the lock


class BulkSync:
    """Brings every member with a ledger in line with Sotion, in as few calls as it can."""

    def __init__(
        self,
        store: Store,
        applier: Applier,
        sotion: SotionAPI,
        *,
        dry_run: bool = False,
        adopt_paid: bool = False,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.applier = applier
        self.sotion = sotion
        self.dry_run = dry_run
        self.adopt_paid = adopt_paid
        self._clock = clock
        self._sleep = sleep
        self._snapshot: dict[str, Member] = {}
        self._by_id: dict[str, Member] = {}
        self._groups: dict[str, frozenset[str]] = {}

    def run(
        self,
        overlay: Mapping[str, Mapping[str, Entitlement]] | None = None,
        display_names: Mapping[str, str] | None = None,
        progress: Progress | None = None,
        guard: Callable[[], None] = lambda: None,
    ) -> SyncReport:
        """Compare and repair every member; ``overlay`` replaces stored ledgers (dry runs).

        ``guard`` runs before each batch of writes (the run's lease: it raises if lost).
        """
        report = SyncReport()
        overlay = overlay or {}
        names = display_names or {}
        emails = sorted(self.store.ledger_emails() | set(overlay))
        ledgers = {**self.store.ledgers(emails), **overlay}
        records = self.store.member_records(emails)
        self._list_sotion(records.values(), report, progress)
        targets: list[_Target] = []
        for email in emails:
            if not ledgers[email]:
                continue
            report.members += 1
            target = self._target(email, ledgers[email], records[email], report)
            if target is not None:
                targets.append(target)
        creates = [t for t in targets if t.plan.create]
        updates = [t for t in targets if not t.plan.create]
        if self.dry_run:
            for target in targets:
                report.changes.append(MemberChange(mask_email(target.email), _describe(target)))
            return report
        for chunk in _chunks(creates, BULK_MAX):
            guard()
            self._locked(
                chunk, report, lambda held, locks: self._create(held, locks, names, report)
            )
        for chunk in _chunks(updates, UPDATE_CHUNK):
            guard()
            self._locked(chunk, report, lambda held, locks: self._update(held, locks, report))
        return report

    # -- reading -----------------------------------------------------------------------

    def _list_sotion(
        self, records: Iterable[MemberRecord], report: SyncReport, progress: Progress | None
    ) -> None:
        """Every member (lists carry no groups), then each group the bridge manages."""
        after: str | None = None
        while True:
            page = self.sotion.list_members(limit=PAGE_MAX, after=after)
            report.calls["list members"] += 1
            for member in page:
                self._snapshot[member.email] = member
                self._by_id[member.id] = member
            if progress is not None:
                progress("sotion", len(self._snapshot))
            if not page.has_more:
                break
            after = page.next_cursor
        catalog = self.applier.catalog
        managed: set[str] = set(catalog.group_references() if catalog is not None else ())
        for record in records:
            managed |= record.groups
        groups: dict[str, set[str]] = {}
        for group_id in sorted(managed):
            after = None
            while True:
                page = self.sotion.list_group_members(group_id, limit=PAGE_MAX, after=after)
                report.calls["list group members"] += 1
                for member in page:
                    groups.setdefault(member.id, set()).add(group_id)
                if not page.has_more:
                    break
                after = page.next_cursor
        self._groups = {member_id: frozenset(ids) for member_id, ids in groups.items()}

    def _target(
        self,
        email: str,
        ledger: Mapping[str, Entitlement],
        record: MemberRecord,
        report: SyncReport | None,
    ) -> _Target | None:
        """The member's plan against the listing; None when nothing is to be written.

        Nothing is stored here but a member's id: the record may be stale until the
        email's lock is held (``report`` None: planning again under the lock).
        """
        # By the id the bridge knows first: a member may have changed their login email.
        member = self._by_id.get(record.id or "") or self._snapshot.get(email)
        desired = desired_member(
            ledger.values(), self.applier.policy, self.applier.catalog, now=self._clock()
        )
        adopted = self._adopt(desired, member, record)
        if adopted is not None:
            if report is not None and self.dry_run:
                report.adopted += 1  # a real run counts it where it is stored
            record = adopted
        plan = plan_changes(
            desired,
            self._member_snapshot(member),
            bridge_blocked=record.bridge_blocked,
            bridge_paid=record.bridge_paid,
            bridge_groups=record.groups,
            policy=self.applier.policy,
        )
        if plan.empty and adopted is None:
            if member is not None and record.id != member.id and not self.dry_run:
                self.store.save_member_id(email, member.id)
            return None
        return _Target(email, member, plan, adopted)

    def _adopt(
        self, desired: DesiredMember, member: Member | None, record: MemberRecord
    ) -> MemberRecord | None:
        """With ``adopt_paid``, a member paid by hand for a purchase the ledger holds
        becomes the bridge's: when that purchase ends, they are un-paid."""
        if not (self.adopt_paid and desired.paid and member is not None and member.paid):
            return None
        if record.bridge_paid:
            return None
        return replace(record, id=member.id, bridge_paid=True)

    def _member_snapshot(self, member: Member | None) -> MemberSnapshot | None:
        if member is None:
            return None
        return MemberSnapshot(
            paid=bool(member.paid),
            blocked=member.blocked,
            groups=self._groups.get(member.id, frozenset()),
        )

    # -- writing -----------------------------------------------------------------------

    def _locked(
        self,
        chunk: list[_Target],
        report: SyncReport,
        write: Callable[[list[_Target], LeaseSet], None],
    ) -> None:
        """Run ``write`` for the chunk's emails under their locks: the free ones at once,
        those a job holds as soon as it lets them go (planned again then)."""
        pending = chunk
        deadline = time.monotonic() + store_module.RUN_LOCK_WAIT_SECONDS
        while True:
            with self.store.email_locks([t.email for t in pending]) as locks:
                held = [t for t in pending if self.store.lock_key(t.email) in locks.held]
                planned, stale = self._replanned(held, report)
                for email in stale:
                    # The bridge made this member after the listing: the one-member path
                    # looks it up again (under the lock held here).
                    guard = _guard(locks, self.store.lock_key(email))
                    write_one = partial(self.applier.sync_member, email, guard=guard)
                    self._each(email, report, write_one)
                write(planned, locks)
            pending = [t for t in pending if self.store.lock_key(t.email) not in locks.held]
            if not pending:
                return
            if time.monotonic() >= deadline:
                for target in pending:
                    report.failures.append(
                        f"{mask_email(target.email)}: a job kept its lock; run again"
                    )
                return
            self._sleep(BUSY_POLL_SECONDS)

    def _replanned(
        self, targets: list[_Target], report: SyncReport
    ) -> tuple[list[_Target], list[str]]:
        """The plans again from the ledgers and records as they are now that the locks are
        held, and the emails whose member the listing is too old to know."""
        emails = [t.email for t in targets]
        ledgers = self.store.ledgers(emails)
        records = self.store.member_records(emails)
        planned: list[_Target] = []
        stale: list[str] = []
        for email in emails:
            if not ledgers[email]:
                continue
            target = self._target(email, ledgers[email], records[email], None)
            if target is None:
                continue
            if target.member is None and records[email].id is not None:
                stale.append(email)
                continue
            if target.adopted is not None:
                self.store.save_member_record(email, target.adopted)
                report.adopted += 1
            planned.append(target)
        return planned, stale

    def _create(
        self, targets: list[_Target], locks: LeaseSet, names: Mapping[str, str], report: SyncReport
    ) -> None:
        """One bulk call for up to 500 new members, then what a create cannot set."""
        targets = [t for t in targets if t.plan.create]
        if not targets:
            return
        records = self.store.member_records([t.email for t in targets])
        self.store.save_member_records(
            {t.email: claimed(records[t.email], t.plan) for t in targets}
        )
        locks.ensure_all([self.store.lock_key(t.email) for t in targets])
        result = self.sotion.bulk_create_members(
            NewMember(
                email=t.email,
                display_name=names.get(t.email),
                paid=t.plan.bridge_paid,
                access_group_ids=tuple(sorted(t.plan.add_groups)),
            )
            for t in targets
        )
        report.calls["bulk create"] += 1
        outcomes = {item.email.strip().lower(): item for item in result.items}
        finals: dict[str, MemberRecord] = {}
        for target in targets:
            item = outcomes.get(target.email)
            record = records[target.email]
            if item is not None and item.status == "created" and item.member is not None:
                final = self._created(target, item.member, record, locks, report)
                if final is not None:
                    finals[target.email] = final
            elif item is not None and item.status == "conflict":
                # Made meanwhile by someone else: nothing on it is the bridge's yet.
                disowned = replace(record, bridge_blocked=False, bridge_paid=False)
                self.store.save_member_record(target.email, disowned)
                guard = _guard(locks, self.store.lock_key(target.email))
                self._each(
                    target.email,
                    report,
                    partial(self.applier.sync_member, target.email, guard=guard),
                    done=("create:conflict",),
                )
            else:
                reason = item.error_message if item is not None else "not in the bulk answer"
                report.failures.append(
                    f"{mask_email(target.email)}: create failed: {redact(str(reason))}"
                )
        self.store.save_member_records(finals)

    def _created(
        self,
        target: _Target,
        member: Member,
        record: MemberRecord,
        locks: LeaseSet,
        report: SyncReport,
    ) -> MemberRecord | None:
        """After a bulk create: the member's record to store, or None when a patch had to
        follow (a block: a disputed first purchase), which stores its own."""
        plan = target.plan
        record = replace(
            record,
            id=member.id,
            bridge_blocked=False,
            bridge_paid=plan.bridge_paid,
            groups=record.groups | plan.add_groups,
        )
        actions = [f"create:paid={plan.bridge_paid}"]
        actions += [f"add-group:{g}" for g in sorted(plan.add_groups)]
        if not plan.patch:
            report.changes.append(MemberChange(mask_email(target.email), actions))
            return record
        rest = Plan(
            patch=plan.patch, bridge_blocked=plan.bridge_blocked, bridge_paid=plan.bridge_paid
        )
        guard = _guard(locks, self.store.lock_key(target.email))
        self._each(
            target.email,
            report,
            lambda: self.applier.carry_out(target.email, member, record, rest, guard, made=True),
            done=tuple(actions),
        )
        return None

    def _update(self, targets: list[_Target], locks: LeaseSet, report: SyncReport) -> None:
        records = self.store.member_records([t.email for t in targets])
        for target in targets:
            if target.member is None:
                continue
            record = replace(records[target.email], id=target.member.id)
            guard = _guard(locks, self.store.lock_key(target.email))
            write = partial(
                self.applier.carry_out, target.email, target.member, record, target.plan, guard
            )
            self._each(target.email, report, write)

    def _each(
        self,
        email: str,
        report: SyncReport,
        write: Callable[[], list[str]],
        done: tuple[str, ...] = (),
    ) -> None:
        """One member's writes, waiting out 429s; a failure is reported, not raised.

        ``done`` are actions already made (counted where they were made).
        """
        for attempt in range(1, RATE_LIMITED_TRIES + 1):
            try:
                actions = write()
            except RateLimitedError as exc:
                if attempt == RATE_LIMITED_TRIES:
                    report.failures.append(f"{mask_email(email)}: rate limited")
                    return
                self._sleep(exc.wait_seconds())
                continue
            except (SotionError, LeaseLostError, LeaseBusyError) as exc:
                report.failures.append(f"{mask_email(email)}: {redact(str(exc))}")
                log.warning("member repair failed email=%s error=%s", mask_email(email), exc)
                return
            for action in actions:
                if action != "create:conflict":
                    report.calls[action.partition(":")[0]] += 1
            if done or actions:
                report.changes.append(MemberChange(mask_email(email), [*done, *actions]))
            return


def _guard(locks: LeaseSet, key: str) -> Callable[[], None]:
    return lambda: locks.ensure(key)


def _describe(target: _Target) -> list[str]:
    plan = target.plan
    actions: list[str] = []
    if plan.create:
        actions.append(f"create:paid={plan.bridge_paid}")
    if plan.patch:
        actions.append("patch:" + ",".join(f"{k}={v}" for k, v in sorted(plan.patch.items())))
    actions += [f"add-group:{g}" for g in sorted(plan.add_groups)]
    actions += [f"remove-group:{g}" for g in sorted(plan.remove_groups)]
    return actions


def _chunks(items: list[_Target], size: int) -> Iterable[list[_Target]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
