"""Row 4: draining a backlog of purchases into a rate-limited Sotion with 4 workers.

``purchases`` signed purchases (each a new email) are accepted by the web process while no
worker runs; then ``workers`` Procfile worker processes start against a sandbox limited to
``limit`` (100 requests per 10 s, Sotion's documented budget). Counted at the sandbox:
the 429s it served, the calls it allowed (any other answer) against what the limit allows
in the fixed windows the drain's calls fell in, and the purchases applied per call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from bench.common import Process, environment, purchase, sandbox, signed, start_worker, wait_for
from bridge.queues import bridge_queue
from bridge.sandbox.ratelimit import RateLimit


@dataclass(frozen=True)
class Drain:
    """What the sandbox saw while the backlog drained."""

    purchases: int
    seconds: float
    allowed: int
    rejected: int
    capacity: int

    @property
    def limit_share(self) -> float:
        """The calls allowed against what the limit allowed in the windows used."""
        return self.allowed / self.capacity

    @property
    def per_allowed_call(self) -> float:
        """Purchases applied per call the sandbox allowed."""
        return self.purchases / self.allowed

    @property
    def per_call(self) -> float:
        """Purchases applied per call the sandbox answered, 429s included."""
        return self.purchases / (self.allowed + self.rejected)


def measure(
    web_url: str, redis_url: str, logs: Path, purchases: int, workers: int, limit: str
) -> Drain:
    """Queue the backlog through the web process, then drain it with ``workers`` workers."""
    server, recorder = sandbox(rate_limit=limit)
    session = requests.Session()
    for index in range(purchases):
        body, headers = signed(purchase(f"drain{index}@example.com", f"drain{index}"))
        response = session.post(f"{web_url}/webhooks/stripe", data=body, headers=headers)
        response.raise_for_status()
    session.close()
    queue = bridge_queue(redis.Redis.from_url(redis_url))
    env = environment(redis_url, server.url)
    fleet: list[Process] = []
    try:
        fleet = [start_worker(env, logs / f"drain-worker{n}.log") for n in range(workers)]

        def drained() -> bool:
            paid = [m for m in server.state.members_snapshot() if m.get("paid")]
            return len(paid) >= purchases and queue.count == 0

        wait_for(drained, 60 + purchases, "the backlog to drain", *fleet)
        time.sleep(0.3)  # calls still in flight are counted too
    finally:
        for process in fleet:
            process.stop()
        server.stop()
    calls = recorder.snapshot()
    rejected = sum(1 for c in calls if c.status == 429)
    allowed = len(calls) - rejected
    seconds = calls[-1].arrived - calls[0].arrived
    rule = RateLimit.parse(limit)
    # What the limit allows over the drain: its budget in each fixed window (aligned on
    # multiples of the window, as the sandbox counts) that the drain's calls touched.
    windows = math.floor(calls[-1].wall / rule.window) - math.floor(calls[0].wall / rule.window)
    capacity = rule.limit * (windows + 1)
    return Drain(purchases, seconds, allowed, rejected, capacity)
