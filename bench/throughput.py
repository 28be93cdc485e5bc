"""Row 3: accepted Stripe webhook events per second, the bridge against a bare Flask 200.

Both served by the Procfile's gunicorn command (``-c python:bridge.gunicorn_conf``, two
gevent workers); the same load generator for both: ``threads`` threads, each with its
own ``requests.Session`` (kept alive), sending signed bodies prepared in advance, each a
new event (so every one is queued, none a duplicate).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests

from bench.common import purchase, signed


@dataclass(frozen=True)
class Rate:
    """Requests answered 200 per second, and how many were not."""

    per_second: float
    rejected: int


def prepare(threads: int, per_thread: int, tag: str) -> list[list[tuple[bytes, dict[str, str]]]]:
    """Signed purchase bodies, one list per thread, every event id unique."""
    return [
        [signed(purchase(f"{tag}{t}-{i}@example.com", f"{tag}{t}x{i}")) for i in range(per_thread)]
        for t in range(threads)
    ]


def measure(url: str, batches: list[list[tuple[bytes, dict[str, str]]]]) -> Rate:
    """Send every batch from its own thread at once; the rate of 200s over the wall time."""
    accepted = 0
    rejected = 0
    lock = threading.Lock()
    start = threading.Barrier(len(batches) + 1)

    def work(batch: list[tuple[bytes, dict[str, str]]]) -> None:
        nonlocal accepted, rejected
        session = requests.Session()
        session.get(f"{url}/healthz", timeout=10)  # connect before the clock starts
        ok = bad = 0
        start.wait()
        for body, headers in batch:
            response = session.post(f"{url}/webhooks/stripe", data=body, headers=headers)
            if response.status_code == 200:
                ok += 1
            else:
                bad += 1
        session.close()
        with lock:
            accepted += ok
            rejected += bad

    threads = [threading.Thread(target=work, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return Rate(accepted / elapsed, rejected)
