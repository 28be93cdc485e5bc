"""Backfill against the Sotion sandbox: calls made, and time against bare sandbox calls.

Run: python -m bench.backfill [--members 10000] [--existing 5000] [--differ 1000]

1. ``--members`` new buyers from one provider into an empty site. Printed: the Sotion
   calls the backfill made (goal: at most 25 for 10,000), its time, the time of the same
   calls made bare (the same list page and bulk bodies sent straight to a fresh sandbox),
   and the time of the one-member path webhook jobs take (a lookup and a create each),
   all side by side in this run.
2. A site with ``--existing`` members, ``--differ`` of whom the ledger says must change,
   plus ``--members // 5`` new buyers: the calls made against the budget
   ceil(N/100) list pages + ceil(new/500) creates + one write per member that differs.

The provider side (pages read from each provider's API) is measured by
``python -m bench.provider_pages``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import redis

from bench.common import KEY, Recorder, sandbox
from bridge.embedded import EmbeddedRedis
from bridge.events import EntitlementState, MembershipEvent
from bridge.intake import Intake
from bridge.queues import bridge_queue
from bridge.sandbox import SandboxServer
from bridge.settings import Settings, retry_policy
from bridge.sotion import NewMember, SotionClient
from bridge.sources import Batch
from workers import runtime as worker_runtime
from workers.reconcile import Reconciler

PAGE = 100


class _Listing:
    """A provider listing of ``events``, a page of 100 at a time."""

    provider = "stripe"
    dated_by_objects = False

    def __init__(self, events: list[MembershipEvent]) -> None:
        self.events = events

    def backfill(self, cursor: str | None = None) -> Iterator[Batch]:
        for start in range(0, len(self.events), PAGE):
            last = start + PAGE >= len(self.events)
            yield Batch(tuple(self.events[start : start + PAGE]), None if last else str(start))

    def changes(self, since: float | None, known: Iterable[str] = ()) -> Iterator[Batch]:
        return self.backfill()


def _buyer(index: int) -> MembershipEvent:
    return MembershipEvent(
        provider="stripe",
        event_id=f"list:sub_{index}:active",
        event_type="customer.subscription.listed",
        occurred_at=1_700_000_000.0,
        email=f"buyer{index:06d}@example.com",
        entitlement=f"stripe:sub_{index}",
        state=EntitlementState.ACTIVE,
        refs={"subscription": f"sub_{index}"},
    )


def _sandbox() -> tuple[SandboxServer, Recorder]:
    # A limit far above what one process sends: the bench measures calls, not waits.
    return sandbox(rate_limit="1000000/1")


def _kinds(recorder: Recorder) -> Counter[str]:
    """The calls so far by method and path (member ids as ``{id}``)."""
    return Counter(
        f"{call.method} "
        + (
            "/members/{id}"
            if call.path.count("/") == 2 and call.path != "/members/bulk"
            else call.path
        )
        for call in recorder.snapshot()
    )


def _reconciler(
    url: str, server: SandboxServer, folder: Path, events: list[MembershipEvent]
) -> Reconciler:
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    settings = Settings(
        redis_url=url, data_dir=folder, sotion_api_key=KEY, sotion_api_url=server.url
    )
    runtime = worker_runtime.build(settings, connection)
    intake = Intake(bridge_queue(connection), retry_policy(settings))
    return Reconciler(
        runtime.store, runtime.applier, runtime.sotion, intake, {"stripe": _Listing(events)}
    )


def _bare(count: int) -> float:
    """The backfill's Sotion calls sent straight to a fresh sandbox."""
    server, _ = _sandbox()
    api = SotionClient.connect(server.url, KEY)
    started = time.perf_counter()
    api.list_members(limit=PAGE)
    api.bulk_create_members(
        NewMember(email=f"buyer{i:06d}@example.com", paid=True) for i in range(count)
    )
    elapsed = time.perf_counter() - started
    api.close()
    server.stop()
    return elapsed


def _one_by_one(url: str, folder: Path, count: int) -> tuple[float, int]:
    """The webhook jobs' path for the same buyers: each looked up, then created."""
    server, counter = _sandbox()
    reconciler = _reconciler(url, server, folder, [])
    started = time.perf_counter()
    for index in range(count):
        reconciler.applier.apply(_buyer(index))
    elapsed = time.perf_counter() - started
    server.stop()
    return elapsed, len(counter.snapshot())


def _new_site(url: str, folder: Path, count: int) -> None:
    server, counter = _sandbox()
    reconciler = _reconciler(url, server, folder, [_buyer(i) for i in range(count)])
    started = time.perf_counter()
    report = reconciler.backfill(["stripe"])
    elapsed = time.perf_counter() - started
    kinds = _kinds(counter)
    calls = sum(kinds.values())
    server.stop()
    bare = _bare(count)
    single, single_calls = _one_by_one(url, folder, count)
    print(f"1. {count:,} new members into an empty site")
    print(f"   backfill: {calls} Sotion calls ({dict(kinds)}), goal <= 25")
    print(
        f"   backfill {elapsed:7.2f} s | same calls bare {bare:6.2f} s"
        f" | ratio {elapsed / bare:5.2f}x"
    )
    print(
        f"   one member at a time (the webhook path): {single:7.2f} s, {single_calls:,} calls;"
        f" the backfill takes {elapsed / single:5.3f}x of its time"
    )
    assert report.sync.failures == []


def _existing_site(url: str, folder: Path, existing: int, differ: int, new: int) -> None:
    server, counter = _sandbox()
    api = SotionClient.connect(server.url, KEY)
    # Existing members: the first `differ` unpaid (the ledger says paid), the rest paid.
    api.bulk_create_members(
        NewMember(email=f"buyer{i:06d}@example.com", paid=i >= differ) for i in range(existing)
    )
    counter.calls.clear()  # only the backfill's calls
    events = [_buyer(i) for i in range(existing + new)]
    reconciler = _reconciler(url, server, folder, events)
    started = time.perf_counter()
    reconciler.backfill(["stripe"])
    elapsed = time.perf_counter() - started
    kinds = _kinds(counter)
    calls = sum(kinds.values())
    budget = math.ceil(existing / PAGE) + math.ceil(new / 500) + differ
    print(f"2. {existing:,} existing members ({differ:,} differ) and {new:,} new ones")
    print(f"   backfill: {calls:,} Sotion calls ({dict(kinds)}); budget {budget:,}")
    print(f"   {elapsed:.2f} s")
    counter.calls.clear()
    reconciler.backfill(["stripe"])
    again = _kinds(counter)
    writes = sum(n for kind, n in again.items() if not kind.startswith("GET"))
    print(f"   run again: {writes} writes, {sum(again.values())} calls (list pages only)")
    api.close()
    server.stop()


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--existing", type=int, default=5_000)
    parser.add_argument("--differ", type=int, default=1_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        EmbeddedRedis(Path(folder), persistent=False) as server,
    ):
        _new_site(server.url, Path(folder), args.members)
        _existing_site(server.url, Path(folder), args.existing, args.differ, args.members // 5)


if __name__ == "__main__":
    main()
