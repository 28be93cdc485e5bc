"""Row 1: Sotion calls per event kind through the real job path, counted at the sandbox.

Each event is POSTed signed to the bridge app (its real intake), and the queued job runs in
an RQ ``SimpleWorker`` (``workers.jobs`` on the worker runtime, in process, as ``bridge
worker`` runs it). The three kinds, each on its own subscriber:
- a new member's first purchase (a subscription checkout for an email Sotion lacks);
- a change of a known member (that subscription deleted: paid access ends);
- an event that changes nothing (a paid renewal invoice of a live subscription).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from bench.common import (
    KEY,
    SECRET,
    JSONObject,
    cancellation,
    renewal,
    sandbox,
    signed,
    subscription_checkout,
)
from bridge.app import create_app
from bridge.queues import bridge_queue
from bridge.settings import Settings
from workers import runtime as worker_runtime

KINDS = ("new member, first purchase", "known member, change", "nothing changes (renewal)")


@dataclass(frozen=True)
class KindCalls:
    """Sotion calls of one event kind: the median over the samples, and what they were."""

    kind: str
    calls: float
    detail: str


def measure(redis_url: str, data_dir: Path, samples: int) -> list[KindCalls]:
    """Calls per kind, ``samples`` subscribers each."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    server, recorder = sandbox()
    settings = Settings(
        redis_url=redis_url,
        data_dir=data_dir,
        sotion_api_key=KEY,
        sotion_api_url=server.url,
        stripe_webhook_secrets=(SECRET,),
        accept_test_events=True,
    )
    client = create_app(settings).test_client()
    queue = bridge_queue(connection)
    worker_runtime.configure(settings, connection)
    per_kind: dict[str, list[int]] = {kind: [] for kind in KINDS}
    seen: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}

    def run(kind: str, payload: JSONObject) -> None:
        body, headers = signed(payload)
        response = client.post("/webhooks/stripe", data=body, headers=headers)
        if response.status_code != 200 or response.get_json()["queued"] != 1:
            raise RuntimeError(f"{kind}: not queued: {response.get_data(as_text=True)}")
        before = len(recorder.snapshot())
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
        made = recorder.snapshot()[before:]
        per_kind[kind].append(len(made))
        seen[kind].update(f"{c.method} {_shape(c.path)}" for c in made)

    try:
        for index in range(samples):
            email, ref = f"calls{index}@example.com", f"calls{index}"
            steps: list[tuple[str, JSONObject]] = [
                (KINDS[0], subscription_checkout(email, ref)),
                (KINDS[2], renewal(email, ref)),
                (KINDS[1], cancellation(ref)),
            ]
            for kind, payload in steps:
                run(kind, payload)
    finally:
        worker_runtime.reset()
        server.stop()
    return [
        KindCalls(kind, statistics.median(per_kind[kind]), _detail(seen[kind], samples))
        for kind in KINDS
    ]


def _shape(path: str) -> str:
    parts = path.split("?")[0].strip("/").split("/")
    return "/" + "/".join("{id}" if i % 2 else part for i, part in enumerate(parts))


def _detail(calls: Counter[str], samples: int) -> str:
    return ", ".join(f"{name} x{count / samples:g}" for name, count in calls.items()) or "none"
