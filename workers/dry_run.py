"""``BRIDGE_DRY_RUN``: every job runs, and the Sotion writes it would make are logged and
counted (``bridge_dry_run_writes``) instead of sent.

Everything before Sotion is real: events are deduplicated, ledgers merged, buyers
resolved, so switching the dry run off later finds the payments already recorded (the
next event or reconcile of each member makes the writes). What the bridge keeps about a
member (its id, what it set, what it last saw) is left alone: nothing was written, so
nothing may be claimed. Each plan is made against the member as Sotion has it now, read
on every job, since no earlier write of the bridge changed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from bridge import metrics
from bridge.membership import DesiredMember
from bridge.redact import mask_email
from bridge.sotion import Member, NotFoundError
from workers.member_writes import Guard, MemberWriter, snapshot
from workers.records import MemberRecord

log = logging.getLogger(__name__)

DRY_RUN_COUNTER = "bridge_dry_run_writes"


class DryRunWriter(MemberWriter):
    """Plans like :class:`MemberWriter`, reading Sotion, and writes nothing anywhere."""

    def write(
        self,
        email: str,
        desired: DesiredMember,
        record: MemberRecord,
        *,
        display_name: str | None = None,
        guard: Guard = lambda: None,
        fresh: bool = False,
        reassert: bool = False,
    ) -> list[str]:
        """The calls a real run would make now, logged and counted; returns them."""
        found = self._current(email, record, need_groups=bool(desired.groups or record.groups))
        if found is None:
            # Nobody with this email: what the bridge set on a member it knew is gone too.
            record = MemberRecord()
        else:
            record = MemberRecord(
                id=found.id,
                bridge_blocked=record.bridge_blocked,
                bridge_paid=record.bridge_paid,
                groups=record.groups,
            )
        member = snapshot(found) if found is not None else None
        actions = self.plan(desired, member, record).calls()
        count_unsent(self.store.redis, actions)
        if actions:
            log.info("dry run: not sent email=%s calls=%s", mask_email(email), ",".join(actions))
        return [f"dry-run:{action}" for action in actions]

    def _current(self, email: str, record: MemberRecord, *, need_groups: bool) -> Member | None:
        """The member now: by the id the bridge knows (their login may have changed), else
        by email."""
        if record.id is not None:
            try:
                return self.sotion.get_member(record.id)
            except NotFoundError:
                pass
        return self._lookup(email, need_groups=need_groups)


def count_unsent(connection: redis.Redis, actions: Iterable[str]) -> None:
    """Count the calls a dry run did not send, by kind (create, patch, add-group...)."""
    for action in actions:
        metrics.count(connection, DRY_RUN_COUNTER, action=action.partition(":")[0])
