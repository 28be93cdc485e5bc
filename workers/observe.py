"""Observations read from the providers' APIs, merged into the ledger as webhook events are.

Each observation goes where a webhook event goes in ``Applier.apply``: its entitlement and
owner come from what the store learned, a product no rule lists is skipped unless the
bridge already granted it, an event a webhook delivered is left to its job (the intake's
dedupe key), and the ledger merges it under the email's lock with the same staleness
rules. What differs: a batch of emails is locked at once, nothing is read again from the
provider (the observation is that read), and Sotion is left to ``workers/bulk_sync.py``,
which compares every member at once.

In a dry run nothing is written: the merged ledgers are kept in ``overlay`` for the plan.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from bridge.events import EntitlementState, MembershipEvent, unusable_reason
from bridge.intake import Intake
from bridge.ledger import Entitlement, record
from bridge.sources import SYNTHETIC_PREFIX
from bridge.stripe_api import ProviderAPIError
from workers import store as store_module
from workers.resolve import Resolver, UnresolvedError
from workers.store import Store
from workers.sync import Applier

log = logging.getLogger(__name__)

# A purchase this new that the bridge has never seen is left to its webhook, which may be
# queued and name another login (Lemon Squeezy's sotion_email is in webhooks only): a
# listing that claimed it first would give it to the buyer's own email.
SETTLE_SECONDS = 600

Item = tuple[str | None, MembershipEvent]


@dataclass
class Tally:
    """What merging one run's observations did."""

    observed: int = 0
    merged: int = 0  # ledger changes
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> observations
    changed_emails: set[str] = field(default_factory=set)
    display_names: dict[str, str] = field(default_factory=dict)


class Merger:
    """Merges observations into the ledger (or, dry, into ``overlay``)."""

    def __init__(
        self,
        store: Store,
        applier: Applier,
        intake: Intake,
        *,
        accept_test_events: bool = False,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.store = store
        self.applier = applier
        self.intake = intake
        self.accept_test_events = accept_test_events
        self.dry_run = dry_run
        # Lookups from the store only: a listing of 10,000 buyers makes no API call each.
        self.lookup = Resolver(store)
        self.overlay: dict[str, dict[str, Entitlement]] = {}
        self._unknown: list[MembershipEvent] = []

    def merge(
        self, events: Sequence[MembershipEvent], tally: Tally, *, settle: bool = False
    ) -> None:
        """Merge one batch; observations whose buyer is unknown wait for :meth:`finish`.

        ``settle``: the events are dated by the objects' own clock, and a new purchase
        younger than ``SETTLE_SECONDS`` is left to its webhook (the next run takes it).
        """
        targets: dict[str, list[Item]] = defaultdict(list)
        kept: list[tuple[str | None, MembershipEvent]] = []
        delivered = self.intake.delivered(
            e for e in events if not e.event_id.startswith(SYNTHETIC_PREFIX)
        )
        for event in events:
            tally.observed += 1
            reason = self._skip(event, delivered)
            if reason is not None:
                tally.skipped[reason] += 1
                continue
            kept.append((self._entitlement(event), event))
        # Those that waited for an email may be known now (a page taught it).
        waiting, self._unknown = self._unknown, []
        kept += [(self._entitlement(event), event) for event in waiting]
        owners = self.store.owners_of(sorted({key for key, _ in kept if key is not None}))
        for key, event in kept:
            owner = owners.get(key) if key is not None else None
            if self._needs_products(event):
                try:
                    # A Checkout event names no product; the products file needs one.
                    event = self.applier.resolver.refresh(event, key)
                except (ProviderAPIError, UnresolvedError) as exc:
                    log.warning("products unknown event=%s error=%s", event.dedupe_key, exc)
                    tally.skipped["products unknown (provider API failed)"] += 1
                    continue
            if owner is None and self.applier.unlisted(event):
                tally.skipped["product not in the products file"] += 1
                continue
            if settle and owner is None and self._settling(event):
                tally.skipped["bought in the last 10 minutes (left to its webhook)"] += 1
                continue
            email = owner or self.lookup.email(event)
            if email is None:
                self._unknown.append(event)
                continue
            targets[email].append((key, event))
        self._write(targets, tally)

    @property
    def waiting(self) -> int:
        """Observations held back until :meth:`finish` (their buyer is not known yet)."""
        return len(self._unknown)

    def finish(self, tally: Tally) -> None:
        """Merge what waited for an email, now that every batch taught what it could."""
        waiting, self._unknown = self._unknown, []
        targets: dict[str, list[Item]] = defaultdict(list)
        for event in waiting:
            key = self._entitlement(event)
            owner = self.store.owner_of(key) if key is not None else None
            try:
                # The last resort may ask the provider (a Stripe customer's email).
                email = owner or self.applier.resolver.email(event)
            except ProviderAPIError as exc:
                log.warning("email lookup failed event=%s error=%s", event.dedupe_key, exc)
                email = None
            if email is None:
                tally.skipped["no email known for the customer"] += 1
                continue
            targets[email].append((key, event))
        self._write(targets, tally)

    def _entitlement(self, event: MembershipEvent) -> str | None:
        """The event's entitlement from what the store learned; a Stripe dispute it cannot
        place may ask Stripe which subscription the payment paid (rare: one call each)."""
        if event.dispute is not None and not event.event_id.startswith(SYNTHETIC_PREFIX):
            return self.applier.resolver.entitlement(event)
        return self.lookup.entitlement(event)

    def _settling(self, event: MembershipEvent) -> bool:
        return (
            event.state is EntitlementState.ACTIVE
            and self._clock() - event.occurred_at < SETTLE_SECONDS
        )

    def _needs_products(self, event: MembershipEvent) -> bool:
        """A delivered-style Stripe Checkout event (from the events API) when a products
        file decides what it grants: its products are read as the webhook path reads them."""
        return (
            self.applier.catalog is not None
            and event.provider == "stripe"
            and not event.products
            and "checkout_session" in event.refs
            and not event.event_id.startswith(SYNTHETIC_PREFIX)
        )

    def _skip(self, event: MembershipEvent, delivered: set[str]) -> str | None:
        if event.test_mode and not self.accept_test_events:
            return "test mode"
        if unusable_reason(event) is not None:
            return "unusable"
        if event.dedupe_key in delivered:
            return "already applied (a webhook or an earlier run)"
        return None

    def _write(self, targets: dict[str, list[Item]], tally: Tally) -> None:
        emails = sorted(targets)
        if self.dry_run:
            for email in emails:
                self._merge_dry(email, targets[email], tally)
            return
        with self.store.email_locks(emails) as locks:
            held = [e for e in emails if self.store.lock_key(e) in locks.held]
            deferred = self._merge_held({e: targets[e] for e in held}, tally)
        # Emails a job held meanwhile, and purchases another email turned out to own: one
        # at a time, waiting for each email's lock (jobs hold one lock at a time).
        for email in emails:
            if email not in held:
                deferred.setdefault(email, []).extend(targets[email])
        # A job keeping one past RUN_LOCK_WAIT_SECONDS stops the run (LeaseBusyError) before
        # its page's cursor is saved: run again, the page is merged again.
        while deferred:
            email, items = deferred.popitem()
            with self.store.email_lock(email, wait=store_module.RUN_LOCK_WAIT_SECONDS):
                for owner, rest in self._merge_held({email: items}, tally).items():
                    deferred.setdefault(owner, []).extend(rest)

    def _merge_held(self, targets: dict[str, list[Item]], tally: Tally) -> dict[str, list[Item]]:
        """Merge the observations of emails whose locks are held, in a few round trips;
        returns those that belong to another email's ledger (by the owner's email)."""
        claims = {
            key: email
            for email, items in targets.items()
            for key, event in items
            if key is not None and event.changes_entitlement
        }
        owners = self.store.claim_owners(claims)
        elsewhere: dict[str, list[Item]] = defaultdict(list)
        learned: list[tuple[MembershipEvent, str | None, str | None]] = []
        mine: dict[str, list[Item]] = defaultdict(list)
        for email, items in targets.items():
            for key, event in items:
                owner = owners.get(key, email) if key is not None else email
                if owner != email:
                    elsewhere[owner].append((key, event))
                    continue
                learned.append((event, email, key))
                mine[email].append((key, event))
                if event.display_name:
                    tally.display_names[email] = event.display_name
        self.store.learn_many(learned)
        ledgers = self.store.ledgers(sorted(mine))
        saves: dict[tuple[str, str], Entitlement] = {}
        deletes: list[tuple[str, str]] = []
        for email, items in mine.items():
            changed, gone = _fold(ledgers[email], email, items, tally)
            saves.update(((email, key), entitlement) for key, entitlement in changed.items())
            deletes.extend((email, key) for key in gone)
        self.store.write_ledgers(
            ((email, entitlement) for (email, _), entitlement in saves.items()), deletes
        )
        for (email, _), entitlement in saves.items():
            self.applier.recorded(email, entitlement)
        for items in mine.values():
            for _, event in items:
                if not event.event_id.startswith(SYNTHETIC_PREFIX):
                    self.intake.remember(event)
        return dict(elsewhere)

    def _merge_dry(self, email: str, items: list[Item], tally: Tally) -> None:
        for _, event in items:
            if event.display_name:
                tally.display_names[email] = event.display_name
        _fold(self.overlay.setdefault(email, self.store.entitlements(email)), email, items, tally)


def _fold(
    ledger: dict[str, Entitlement], email: str, items: list[Item], tally: Tally
) -> tuple[dict[str, Entitlement], list[str]]:
    """Record one email's observations in ``ledger`` (in place): the entitlements that
    changed, by key, and the keys folded into others (to delete)."""
    changed: dict[str, Entitlement] = {}
    gone: list[str] = []
    for key, event in items:
        if key is None or not event.changes_entitlement:
            continue
        merged, folded = record(ledger, key, _unmoved(ledger.get(key), event))
        for other in folded:
            ledger.pop(other, None)
            changed.pop(other, None)
            gone.append(other)
        if merged is not None:
            ledger[key] = merged
            changed[key] = merged
            tally.merged += 1
            tally.changed_emails.add(email)
    return changed, gone


def _unmoved(held: Entitlement | None, event: MembershipEvent) -> MembershipEvent:
    """A listing dated by its read that sees the lifecycle the ledger holds says nothing
    new about it: its date must not move (a past_due grace counts from the real change).
    """
    if held is None or not event.event_id.startswith(SYNTHETIC_PREFIX):
        return event
    if event.state is not held.state:
        return event
    return replace(event, state=None)
