"""Backfill and reconcile: what the providers say now, into the ledger, then into Sotion.

    provider API lists ─▶ sources (bridge/sources) ─▶ Merger (workers/observe.py) ─▶ ledger
                                                                                      │
                        Sotion ◀─ bulk creates, patches (workers/bulk_sync.py) ◀──────┘

A backfill lists every purchase each provider has, keeping a cursor per provider in Redis
after every page, so an interrupted one continues where it stopped. A reconcile reads
what changed since the last one (``bridge:reconcile:last:{provider}``). Both then compare
every member that has a ledger with Sotion and repair what differs. One runs at a time
(a lease in Redis), whether started from the command line or by the worker's schedule.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import redis
from rq.utils import as_text

from bridge.events import EntitlementState
from bridge.intake import Intake
from bridge.queues import RECONCILE_REPORT_KEY
from bridge.sotion import SotionAPI
from bridge.sources import Batch, Source
from workers.bulk_sync import BulkSync
from workers.bulk_writes import SyncReport
from workers.dry_run import count_unsent
from workers.lease import Lease, LeaseBusyError
from workers.observe import Merger, Tally
from workers.store import PREFIX, Store
from workers.sync import Applier

RUN_LOCK_KEY = f"{PREFIX}reconcile:lock"
# The run's lease: renewed while it runs; a killed run frees it within this long.
RUN_LOCK_SECONDS = 30
# Pages an observation waits for a later page to teach its buyer's email, at most.
MAX_HELD_PAGES = 5
# Known purchases a reconcile re-reads one by one at most, per provider and run (Gumroad:
# a subscription and its recent charges take up to 6 calls, so up to about 600 calls, 10
# minutes at its pace); the next run takes the next ones, in turn.
KNOWN_PER_RUN = 100
# With no earlier run, a reconcile looks back this far (Stripe retries for 3 days); only
# a backfill, or --since, lists everything.
DEFAULT_LOOKBACK_SECONDS = 3 * 86400
# Entitlement states whose changes a provider's lists may not show (re-read one by one).
_GRANTING = frozenset({EntitlementState.ACTIVE, EntitlementState.PAST_DUE})

# (provider or "sotion", observations or members read so far)
Progress = Callable[[str, int], None]


class ReconcileBusyError(Exception):
    """Another backfill or reconcile is running; this one did not start."""

    retryable = False


@dataclass
class ProviderReport:
    """What one provider's listing gave."""

    provider: str
    observed: int = 0
    merged: int = 0
    calls: int = 0
    resumed: bool = False
    skipped: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_tally(
        cls, provider: str, tally: Tally, calls: int, *, resumed: bool = False
    ) -> ProviderReport:
        return cls(provider, tally.observed, tally.merged, calls, resumed, tally.skipped)


@dataclass
class Report:
    """What a backfill or a reconcile did (or, dry, would do)."""

    kind: str  # "backfill" or "reconcile"
    dry_run: bool
    providers: list[ProviderReport] = field(default_factory=list)
    sync: SyncReport = field(default_factory=SyncReport)
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        """Counts only (no email): a job's result, a log line."""
        return {
            "kind": self.kind,
            "dry_run": self.dry_run,
            "providers": {
                p.provider: {"observed": p.observed, "merged": p.merged, "calls": p.calls}
                for p in self.providers
            },
            "members": self.sync.members,
            "changed": len(self.sync.changes),
            "failures": len(self.sync.failures),
            "sotion_calls": dict(self.sync.calls),
            "seconds": round(self.seconds, 3),
        }


class Reconciler:
    """Runs backfills and reconciles over the configured sources."""

    def __init__(
        self,
        store: Store,
        applier: Applier,
        sotion: SotionAPI,
        intake: Intake,
        sources: Mapping[str, Source],
        *,
        accept_test_events: bool = False,
        always_dry: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.redis: redis.Redis = store.redis
        self.applier = applier
        self.sotion = sotion
        self.intake = intake
        self.sources = dict(sources)
        self.accept_test_events = accept_test_events
        # BRIDGE_DRY_RUN: every run is a dry run, whatever its caller asks.
        self.always_dry = always_dry
        self._clock = clock

    def backfill(
        self,
        providers: Sequence[str],
        *,
        dry_run: bool = False,
        adopt_paid: bool = False,
        progress: Progress | None = None,
    ) -> Report:
        """Every purchase of each provider into the ledger, then every member repaired."""

        def listing(provider: str, source: Source) -> tuple[Iterator[Batch], bool]:
            cursor = self.redis.get(_cursor_key(provider))
            text = as_text(cursor) if cursor is not None else None
            return source.backfill(text), text is not None

        return self._run("backfill", providers, listing, dry_run, adopt_paid, progress)

    def reconcile(
        self,
        providers: Sequence[str],
        *,
        since: float | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> Report:
        """What changed at each provider since ``since`` (default: the last run), merged,
        then every member repaired."""
        known = self._granting_keys()
        turns: dict[str, int] = {}

        def listing(provider: str, source: Source) -> tuple[Iterator[Batch], bool]:
            start = since if since is not None else self.last_run(provider)
            if start is None:
                start = self._clock() - DEFAULT_LOOKBACK_SECONDS
            keys, turns[provider] = self._in_turn(provider, sorted(known.get(provider, ())))
            return source.changes(start, keys), False

        report = self._run("reconcile", providers, listing, dry_run, False, progress)
        if not report.dry_run:
            for provider, offset in turns.items():
                self.redis.set(_turn_key(provider), offset)
        return report

    def _in_turn(self, provider: str, keys: list[str]) -> tuple[list[str], int]:
        """This run's share of the known purchases, and where the next run starts."""
        if len(keys) <= KNOWN_PER_RUN:
            return keys, 0
        stored = self.redis.get(_turn_key(provider))
        start = int(stored) % len(keys) if stored is not None else 0
        share = (keys + keys)[start : start + KNOWN_PER_RUN]
        return share, (start + KNOWN_PER_RUN) % len(keys)

    def last_run(self, provider: str) -> float | None:
        """When the last complete backfill or reconcile of ``provider`` started."""
        value = self.redis.get(_last_key(provider))
        return float(value) if value is not None else None

    def restart(self, providers: Iterable[str]) -> None:
        """Forget where interrupted backfills stopped: the next one starts over."""
        for provider in providers:
            self.redis.delete(_cursor_key(provider))

    def _run(
        self,
        kind: str,
        providers: Sequence[str],
        listing: Callable[[str, Source], tuple[Iterator[Batch], bool]],
        dry_run: bool,
        adopt_paid: bool,
        progress: Progress | None,
    ) -> Report:
        dry_run = dry_run or self.always_dry
        started = self._clock()
        lease = Lease(self.redis, RUN_LOCK_KEY, ttl=RUN_LOCK_SECONDS, wait=0, label=kind)
        try:
            lease.acquire()
        except LeaseBusyError:
            raise ReconcileBusyError("another backfill or reconcile is running") from None
        try:
            report = Report(kind, dry_run)
            merger = Merger(
                self.store,
                self.applier,
                self.intake,
                accept_test_events=self.accept_test_events,
                dry_run=dry_run,
                clock=self._clock,
            )
            names: dict[str, str] = {}
            for provider in providers:
                tally = Tally()
                source = self.sources[provider]
                settle = source.dated_by_objects
                batches, resumed = listing(provider, source)
                calls = 0
                held_back = 0
                for batch in batches:
                    lease.ensure()  # a run that lost its lease stops before writing more
                    merger.merge(batch.events, tally, settle=settle)
                    calls += batch.calls
                    # A page whose observations wait for an email is not done yet: the
                    # cursor moves past it once nothing waits; after a few pages, what
                    # still waits is settled (the provider's API, or skipped) first.
                    held_back = held_back + 1 if merger.waiting else 0
                    if held_back > MAX_HELD_PAGES:
                        merger.finish(tally)
                        held_back = 0
                    if (
                        kind == "backfill"
                        and not dry_run
                        and (batch.cursor is None or not merger.waiting)
                    ):
                        self._save_cursor(provider, batch.cursor)
                    if progress is not None:
                        progress(provider, tally.observed)
                merger.finish(tally)
                names.update(tally.display_names)
                report.providers.append(
                    ProviderReport.from_tally(provider, tally, calls, resumed=resumed)
                )
            sync = BulkSync(
                self.store,
                self.applier,
                self.sotion,
                dry_run=dry_run,
                adopt_paid=adopt_paid,
                clock=self._clock,
            )
            lease.ensure()
            report.sync = sync.run(
                merger.overlay if dry_run else None, names, progress, guard=lease.ensure
            )
            if self.always_dry:
                count_unsent(self.redis, (a for c in report.sync.changes for a in c.actions))
            self.redis.set(
                RECONCILE_REPORT_KEY, json.dumps({**report.summary(), "started_at": started})
            )
            if not dry_run:
                for provider in providers:
                    self.redis.set(_last_key(provider), repr(started))
            report.seconds = self._clock() - started
            return report
        finally:
            lease.release()

    def _save_cursor(self, provider: str, cursor: str | None) -> None:
        if cursor is None:
            self.redis.delete(_cursor_key(provider))
        else:
            self.redis.set(_cursor_key(provider), cursor)

    def _granting_keys(self) -> dict[str, set[str]]:
        """Entitlement keys, by provider, that the ledger holds as granting access."""
        emails = sorted(self.store.ledger_emails())
        found: dict[str, set[str]] = {}
        for ledger in self.store.ledgers(emails).values():
            for entitlement in ledger.values():
                if entitlement.state in _GRANTING:
                    found.setdefault(entitlement.provider, set()).add(entitlement.key)
        return found


def _cursor_key(provider: str) -> str:
    return f"{PREFIX}backfill:cursor:{provider}"


def _turn_key(provider: str) -> str:
    return f"{PREFIX}reconcile:known-offset:{provider}"


def _last_key(provider: str) -> str:
    return f"{PREFIX}reconcile:last:{provider}"
