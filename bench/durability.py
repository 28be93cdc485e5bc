"""What the embedded Redis's fsync setting costs intake: `always` vs `everysec` vs none.

Run: python -m bench.durability [--events 1000] [--clients 4]
Three private redis-servers (one per setting) run side by side; the same atomic
dedupe+enqueue (bridge/intake.py) is timed against each in interleaved rounds, from
several threads as gunicorn's workers would send it, and the median rates are printed
as ratios. The servers write under --data-dir (a real disk, not tmpfs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import redis

from bridge.embedded import EmbeddedRedis
from bridge.events import EntitlementState, MembershipEvent
from bridge.intake import Intake
from bridge.queues import bridge_queue
from bridge.retry import RetryPolicy

# The settings compared: what `bridge run` uses, the usual compromise, and no AOF.
SETTINGS = {
    "appendfsync always (embedded, compose)": "always",
    "appendfsync everysec": "everysec",
    "no append-only file": None,
}


def _rate(url: str, events: int, clients: int) -> float:
    """Events per second accepted by intake, ``clients`` threads at once."""
    connection = redis.Redis.from_url(url)
    connection.flushdb()  # each round sends the same event ids
    intake = Intake(bridge_queue(connection), RetryPolicy())
    batches = [
        [
            MembershipEvent(
                provider="stripe",
                event_id=f"evt_{c}_{i}",
                event_type="checkout.session.completed",
                occurred_at=1_800_000_000.0 + i,
                email=f"buyer{c}-{i}@example.com",
                entitlement=f"stripe:pi_{c}_{i}",
                state=EntitlementState.ACTIVE,
            )
            for i in range(events // clients)
        ]
        for c in range(clients)
    ]

    def send(batch: list[MembershipEvent]) -> int:
        return sum(len(intake.submit([event]).queued) for event in batch)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        queued = sum(pool.map(send, batches))
    elapsed = time.perf_counter() - started
    assert queued == sum(len(batch) for batch in batches)
    connection.close()
    return queued / elapsed


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".bench-durability"),
        help="where the servers write (a real disk: on tmpfs an fsync costs nothing)",
    )
    args = parser.parse_args()
    rates: dict[str, list[float]] = {label: [] for label in SETTINGS}
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.data_dir) as folder, ExitStack() as servers:
        urls = {
            label: servers.enter_context(
                EmbeddedRedis(
                    Path(folder) / str(fsync), persistent=fsync is not None, fsync=fsync or ""
                )
            ).url
            for label, fsync in SETTINGS.items()
        }
        # Rounds interleave the settings, so a slow moment of the machine hits all three.
        for _ in range(args.rounds):
            for label, url in urls.items():
                rates[label].append(_rate(url, args.events, args.clients))
    baseline = statistics.median(rates["no append-only file"])
    print(f"events: {args.events} a round, {args.rounds} rounds, {args.clients} clients")
    for label, measured in rates.items():
        rate = statistics.median(measured)
        print(f"{label:42s} {rate:8.0f} events/s  {rate / baseline:5.2f}x of no AOF (median)")


if __name__ == "__main__":
    main()
