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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from bridge.ledger import Entitlement
from bridge.membership import DesiredMember, desired_member, plan_changes
from bridge.redact import mask_email
from bridge.sotion import Member, SotionAPI
from bridge.sotion.client import BULK_MAX
from workers.bulk_writes import UPDATE_CHUNK, BulkWriter, MemberChange, SyncReport, Target
from workers.records import MemberRecord
from workers.site_listing import Progress, SiteListing
from workers.store import Store
from workers.sync import Applier

log = logging.getLogger(__name__)


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
        self._site = SiteListing()
        self._writer = BulkWriter(store, applier, sotion, sleep=sleep)

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
        catalog = self.applier.catalog
        managed = set(catalog.group_references() if catalog is not None else ())
        for record in records.values():
            managed |= record.groups
        self._site = SiteListing.read(self.sotion, managed, report.calls, progress)
        targets: list[Target] = []
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
                report.changes.append(MemberChange(mask_email(target.email), target.plan.calls()))
            return report
        for chunk in _chunks(creates, BULK_MAX):
            guard()
            self._writer.locked(
                chunk,
                report,
                self._replanned,
                lambda held, locks: self._writer.create(held, locks, names, report),
            )
        for chunk in _chunks(updates, UPDATE_CHUNK):
            guard()
            self._writer.locked(
                chunk,
                report,
                self._replanned,
                lambda held, locks: self._writer.update(held, locks, report),
            )
        return report

    # -- reading -----------------------------------------------------------------------

    def _target(
        self,
        email: str,
        ledger: Mapping[str, Entitlement],
        record: MemberRecord,
        report: SyncReport | None,
    ) -> Target | None:
        """The member's plan against the listing; None when nothing is to be written.

        Nothing is stored here but a member's id and state as listed: the record may be
        stale until the email's lock is held (``report`` None: planning again under it).
        """
        # By the id the bridge knows first: a member may have changed their login email.
        member = self._site.member(email, record.id)
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
            self._site.snapshot(member),
            bridge_blocked=record.bridge_blocked,
            bridge_paid=record.bridge_paid,
            bridge_groups=record.groups,
            policy=self.applier.policy,
        )
        if plan.empty and adopted is None:
            seen = self._site.snapshot(member)
            if (
                member is not None
                and seen is not None
                and (record.id, record.seen) != (member.id, seen)
                and report is not None
                and not self.dry_run
            ):
                # What jobs plan against is what this listing saw (drift made by hand),
                # unless a job wrote the member since the record was read (the listing is
                # older than what it wrote); never from a replan, whose record is newer.
                self.store.save_member_seen(email, member.id, seen, read_before=record)
            return None
        return Target(email, member, plan, adopted, seen=self._site.snapshot(member))

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

    # -- writing -----------------------------------------------------------------------

    def _replanned(
        self, targets: list[Target], report: SyncReport
    ) -> tuple[list[Target], list[str]]:
        """The plans again from the ledgers and records as they are now that the locks are
        held, and the emails whose member the listing is too old to know."""
        emails = [t.email for t in targets]
        ledgers = self.store.ledgers(emails)
        records = self.store.member_records(emails)
        planned: list[Target] = []
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


def _chunks(items: list[Target], size: int) -> Iterable[list[Target]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
