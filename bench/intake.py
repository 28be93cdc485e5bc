"""What exactly-once intake costs: atomic dedupe+enqueue vs a plain RQ enqueue.

Run: python -m bench.intake [--events 2000]
Both sides run in the same process against the same private redis-server.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from bridge.embedded import EmbeddedRedis
from bridge.events import EntitlementState, MembershipEvent
from bridge.intake import Intake
from bridge.queues import APPLY_EVENT_JOB, bridge_queue
from bridge.retry import RetryPolicy


def _events(count: int, tag: str) -> list[MembershipEvent]:
    return [
        MembershipEvent(
            provider="stripe",
            event_id=f"evt_{tag}_{i}",
            event_type="checkout.session.completed",
            occurred_at=1_800_000_000.0 + i,
            email=f"buyer{i}@example.com",
            entitlement=f"stripe:pi_{tag}_{i}",
            state=EntitlementState.ACTIVE,
        )
        for i in range(count)
    ]


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as folder,
        EmbeddedRedis(Path(folder), persistent=False) as server,
    ):
        connection = redis.Redis.from_url(server.url)
        queue = bridge_queue(connection)
        intake = Intake(queue, RetryPolicy())
        policy = RetryPolicy()

        plain_events = _events(args.events, "plain")
        started = time.perf_counter()
        for event in plain_events:
            queue.enqueue_call(APPLY_EVENT_JOB, args=(event.to_json(),), retry=policy.rq_retry())
        plain = time.perf_counter() - started
        connection.flushdb()

        atomic_events = _events(args.events, "atomic")
        started = time.perf_counter()
        result = intake.submit(atomic_events)
        atomic = time.perf_counter() - started
        assert len(result.queued) == args.events

        started = time.perf_counter()
        again = intake.submit(atomic_events)
        duplicates = time.perf_counter() - started
        assert len(again.duplicates) == args.events and queue.count == args.events

    print(f"events: {args.events}")
    print(f"plain RQ enqueue:           {args.events / plain:8.0f} events/s")
    print(f"atomic dedupe + enqueue:    {args.events / atomic:8.0f} events/s")
    print(f"duplicate deliveries:       {args.events / duplicates:8.0f} events/s")
    print(f"ratio atomic/plain time:    {atomic / plain:8.2f}x")
    print(f"ratio duplicate/plain time: {duplicates / plain:8.2f}x")


if __name__ == "__main__":
    main()
