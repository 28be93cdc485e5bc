"""Apply one MembershipEvent, in one pass: resolve it, merge it into the email's ledger,
compute the member the whole ledger calls for, plan, and make the plan's Sotion calls.

The order matters for exactly-once effect: the ledger merge is idempotent (a replayed
event changes nothing) and is stored before any call, and the Sotion side is a diff
between the state the whole ledger calls for and the member as the bridge last wrote it
(``workers/member_writes.py``), so a re-run makes no call twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import ledger
from bridge.events import EntitlementState, MembershipEvent
from bridge.ledger import Entitlement
from bridge.membership import Policy, desired_member, newly_grants
from bridge.products import Catalog
from bridge.redact import mask_email
from bridge.sotion import SotionAPI
from workers.dry_run import DryRunWriter
from workers.member_writes import Guard, MemberWriter
from workers.resolve import Resolver
from workers.store import Store

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
        dry_run: bool = False,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.policy = policy or Policy()
        self.catalog = catalog
        self.schedule_resync = schedule_resync
        # A dry run (BRIDGE_DRY_RUN) plans the same calls and sends none.
        writer = DryRunWriter if dry_run else MemberWriter
        self.writer = writer(store, sotion, self.policy)
        self._clock = clock

    def apply(self, event: MembershipEvent) -> Outcome:
        """Merge the event into its email's ledger and bring that member in line."""
        key = self.resolver.entitlement(event)
        owner = self._owner_first(event, key)
        outcome = Outcome(event=event.dedupe_key, email="-", entitlement=key)
        if owner is None and self.unlisted(event):
            return outcome  # a product no rule lists, which the bridge never granted
        if not event.changes_entitlement:
            # Nothing changes hands; remember what the event tells us, if we can.
            email = owner or self.resolver.email(event)
            self.store.learn(event, email, key)
            outcome.email = mask_email(email)
            return outcome
        email = self.store.claim_and_learn(event, owner or self.resolver.require_email(event), key)
        event = self.resolver.refresh(event, key)  # the purchase's state now, where an API says
        outcome.email = mask_email(email)
        with self.store.email_lock(email) as lease:
            entitlements, member = self.store.member_state(email)
            before = entitlements.get(key) if key else None
            merged, folded = ledger.record(entitlements, key, event) if key else (None, ())
            if merged is not None or folded:
                self.store.write_ledger(email, [merged] if merged else [], folded)
                entitlements = ledger.recorded(entitlements, merged, folded)
            now = self._clock()
            desired = desired_member(entitlements.values(), self.policy, self.catalog, now=now)
            if entitlements:
                outcome.actions = self.writer.write(
                    email,
                    desired,
                    member,
                    display_name=event.display_name,
                    guard=lease.ensure,
                    reassert=newly_grants(before, merged, self.policy, now),
                )
        outcome.ledger_changed = merged is not None
        if merged is not None:
            self.recorded(email, merged)
        log.info(
            "applied event=%s email=%s entitlement=%s changed=%s actions=%s",
            outcome.event,
            outcome.email,
            key,
            outcome.ledger_changed,
            ",".join(outcome.actions),
        )
        return outcome

    def _owner_first(self, event: MembershipEvent, key: str | None) -> str | None:
        """The entitlement's owner where the pass needs it before claiming one: to tell an
        unlisted product the bridge granted from one it never did, to learn from an event
        that changes nothing, or to skip looking up an email the event does not name. An
        event naming its email gets the owner from the claim itself (one round trip)."""
        if key is None or (event.email and event.changes_entitlement and not self.unlisted(event)):
            return None
        return self.store.owner_of(key)

    def unlisted(self, event: MembershipEvent) -> bool:
        """True when a products file exists and lists none of the event's known products."""
        return (
            self.catalog is not None
            and bool(event.products)
            and self.catalog.rule_for(event.provider, event.products) is None
        )

    def resync(self, email: str, *, fresh: bool = False) -> list[str]:
        """Bring one email's member in line with its ledger (e.g. when a grace runs out;
        ``fresh``: read the member from Sotion first, to repair a change made by hand)."""
        with self.store.email_lock(email) as lease:
            return self.sync_member(email, guard=lease.ensure, fresh=fresh)

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
        guard: Guard = lambda: None,
        fresh: bool = False,
    ) -> list[str]:
        """Make the Sotion member match the ledger; returns the calls made (caller locks).

        ``guard`` runs before every write: the email's lease raises there if it was lost.
        ``fresh``: read the member from Sotion instead of trusting what was last written.
        """
        entitlements, member = self.store.member_state(email)
        if not entitlements:
            return []
        desired = desired_member(
            entitlements.values(), self.policy, self.catalog, now=self._clock()
        )
        return self.writer.write(
            email, desired, member, display_name=display_name, guard=guard, fresh=fresh
        )
