"""Several workers against a rate-limited Sotion: with and without the shared budget.

Run: python -m bench.rate_budget [--workers 4] [--calls 60] [--limit 20/1]
Each side has the same number of threads making the same calls against a fresh sandbox
with the same fixed-window limit; the sandbox counts the 429s it had to send.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import redis

from bridge.embedded import EmbeddedRedis
from bridge.sandbox import SandboxConfig, SandboxServer
from bridge.sotion import SotionClient
from workers.budget import SharedBudget

KEY = "so_bench"


def _run(workers: int, calls: int, limit: str, connection: redis.Redis | None) -> tuple[float, int]:
    """(seconds, 429 responses) for ``workers`` threads making ``calls`` calls each."""
    server = SandboxServer(SandboxConfig(api_key=KEY, rate_limit=limit), port=0).start()
    rejected = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal rejected
        options: dict[str, object] = {"rate_limit_waits": 1000, "max_rate_limit_wait": 5.0}
        if connection is not None:
            budget = SharedBudget(connection)
            options.update(before_request=budget.acquire, on_rate_limit=budget.record)

        def sleep(seconds: float) -> None:
            nonlocal rejected
            with lock:
                rejected += 1
            time.sleep(seconds)

        api = SotionClient.connect(server.url, KEY, sleep=sleep, **options)  # type: ignore[arg-type]
        for _ in range(calls):
            api.site()
        api.close()

    # Start at the opening of a window so both sides see the same windows.
    window = float(limit.split("/")[1])
    time.sleep(window - time.time() % window + 0.01)
    threads = [threading.Thread(target=work) for _ in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    server.stop()
    return elapsed, rejected


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--limit", default="20/1")
    args = parser.parse_args()
    logging.getLogger("bridge").setLevel(logging.ERROR)  # the 429s are counted, not logged
    with (
        tempfile.TemporaryDirectory() as folder,
        EmbeddedRedis(Path(folder), persistent=False) as server,
    ):
        connection = redis.Redis.from_url(server.url)
        alone_time, alone_429 = _run(args.workers, args.calls, args.limit, None)
        shared_time, shared_429 = _run(args.workers, args.calls, args.limit, connection)
    total = args.workers * args.calls
    print(f"{args.workers} workers x {args.calls} calls, limit {args.limit}")
    print(f"each worker on its own: {alone_time:6.2f}s, {alone_429:4d} responses were 429")
    print(f"shared budget in Redis: {shared_time:6.2f}s, {shared_429:4d} responses were 429")
    print(f"429s per 100 calls: {100 * alone_429 / total:.1f} vs {100 * shared_429 / total:.1f}")
    print(f"ratio time shared/alone: {shared_time / alone_time:.2f}x")


if __name__ == "__main__":
    main()
