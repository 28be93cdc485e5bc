"""The writing half of the bulk sync: new members in bulk, patches, under the emails' locks.

Every write is planned again once its email's lock is held (``replan``, from the bulk
sync); a member the listing is too old to know goes through the one-member path of
``workers/sync.py``, as does a bulk create's conflict. A failure is reported per member,
never raised: one member Sotion refuses does not stop the others.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

from bridge.membership import MemberSnapshot, Plan
from bridge.redact import mask_email, redact
from bridge.sotion import Member, NewMember, RateLimitedError, SotionAPI, SotionError
from workers import store as store_module
from workers.lease import LeaseBusyError, LeaseLostError, LeaseSet
from workers.member_writes import claimed, snapshot
from workers.records import MemberRecord
from workers.store import Store
from workers.sync import Applier

log = logging.getLogger(__name__)

# A member's writes are tried this often when Sotion answers 429 (waiting each time).
RATE_LIMITED_TRIES = 4
# Members patched under one batch of locks: a webhook job of one of them waits at most
# for this many members' writes (it gives up after 15 s and retries later).
UPDATE_CHUNK = 20
# How often a run looks again at the emails a job holds.
BUSY_POLL_SECONDS = 0.2


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
class Target:
    email: str
    member: Member | None
    plan: Plan
    adopted: MemberRecord | None = None  # --adopt-paid: the record to store under the lock
    seen: MemberSnapshot | None = None  # the member as the listing shows it


# Plans the targets again under their locks: (those to write, those the listing missed).
Replan = Callable[[list[Target], SyncReport], tuple[list[Target], list[str]]]


class BulkWriter:
    """Carries out the bulk sync's plans."""

    def __init__(
        self,
        store: Store,
        applier: Applier,
        sotion: SotionAPI,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.applier = applier
        self.sotion = sotion
        self._sleep = sleep

    def locked(
        self,
        chunk: list[Target],
        report: SyncReport,
        replan: Replan,
        write: Callable[[list[Target], LeaseSet], None],
    ) -> None:
        """Run ``write`` for the chunk's emails under their locks: the free ones at once,
        those a job holds as soon as it lets them go (planned again then)."""
        pending = chunk
        deadline = time.monotonic() + store_module.RUN_LOCK_WAIT_SECONDS
        while True:
            with self.store.email_locks([t.email for t in pending]) as locks:
                held = [t for t in pending if self.store.lock_key(t.email) in locks.held]
                planned, stale = replan(held, report)
                for email in stale:
                    # The bridge made this member after the listing: the one-member path
                    # looks it up again (under the lock held here).
                    guard = _guard(locks, self.store.lock_key(email))
                    write_one = partial(self.applier.sync_member, email, guard=guard, fresh=True)
                    self.each(email, report, write_one)
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

    def create(
        self, targets: list[Target], locks: LeaseSet, names: Mapping[str, str], report: SyncReport
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
                self.each(
                    target.email,
                    report,
                    partial(self.applier.sync_member, target.email, guard=guard, fresh=True),
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
        target: Target,
        member: Member,
        record: MemberRecord,
        locks: LeaseSet,
        report: SyncReport,
    ) -> MemberRecord | None:
        """After a bulk create: the member's record to store, or None when a patch had to
        follow (a block: a disputed first purchase), which stores its own."""
        plan = target.plan
        created = snapshot(member, groups=plan.add_groups)
        record = replace(
            record,
            id=member.id,
            bridge_blocked=False,
            bridge_paid=plan.bridge_paid,
            groups=record.groups | plan.add_groups,
            seen=created,
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
        self.each(
            target.email,
            report,
            lambda: self.applier.writer.change(
                target.email, member.id, created, record, rest, guard, made=True
            ),
            done=tuple(actions),
        )
        return None

    def update(self, targets: list[Target], locks: LeaseSet, report: SyncReport) -> None:
        records = self.store.member_records([t.email for t in targets])
        for target in targets:
            if target.member is None or target.seen is None:
                continue
            record = replace(records[target.email], id=target.member.id, seen=target.seen)
            guard = _guard(locks, self.store.lock_key(target.email))
            write = partial(
                self.applier.writer.change,
                target.email,
                target.member.id,
                target.seen,
                record,
                target.plan,
                guard,
            )
            self.each(target.email, report, write)

    def each(
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
