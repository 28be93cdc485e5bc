"""Prometheus metrics kept in Redis, so every web and worker process adds to one count.

Counters are fields of one Redis hash (``name|label=value,...`` -> count); queue depths
are read from RQ's registries when ``/metrics`` is scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from rq import Queue
from rq.utils import as_text

log = logging.getLogger(__name__)

METRICS_KEY = "bridge:metrics"
# Counter names and their help texts.
COUNTERS = {
    "bridge_webhooks": "Webhook requests by provider and outcome",
    "bridge_events": "Membership events by provider and intake outcome",
    "bridge_jobs": "Applied jobs by outcome",
    "bridge_gumroad_refused": "Gumroad pings refused because Gumroad's API did not confirm them",
    "bridge_reconciles": "Scheduled reconciles by outcome",
    "bridge_reconcile_repairs": "Members a scheduled reconcile changed in Sotion",
    "bridge_dry_run_writes": "Sotion writes a dry run (BRIDGE_DRY_RUN) planned and did not send",
}


def field(name: str, **labels: str) -> str:
    """The hash field of one counter and label set: ``name|label=value,...``, labels sorted
    (the intake's script adds to these fields in the round trip that stores the events)."""
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def count(connection: redis.Redis, name: str, amount: int = 1, **labels: str) -> None:
    """Add to a counter; a Redis failure loses the count, never the request."""
    increment(connection, field(name, **labels), amount)


def increment(connection: redis.Redis, counter: str, amount: int = 1) -> None:
    """Add to the counter with the hash field ``counter`` (see :func:`field`); a Redis
    failure loses the count, never the request."""
    try:
        connection.hincrby(METRICS_KEY, counter, amount)
    except redis.RedisError:
        log.warning("metrics not recorded name=%s", counter.partition("|")[0])


class RedisCollector(Collector):
    """Reads the counters and queue depths from Redis at scrape time."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        up = GaugeMetricFamily("bridge_redis_up", "1 when Redis answered the scrape")
        try:
            raw = self.queue.connection.hgetall(METRICS_KEY)
            # cleanup=False: a scrape must never run RQ's cleanup of abandoned jobs, which
            # the workers do under their maintenance lock (workers/recovery.py).
            depths = {
                "queued": self.queue.count,
                "started": self.queue.started_job_registry.get_job_count(cleanup=False),
                "scheduled": self.queue.scheduled_job_registry.get_job_count(cleanup=False),
                "failed": self.queue.failed_job_registry.get_job_count(cleanup=False),
            }
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _counters(raw)
        jobs = GaugeMetricFamily("bridge_queue_jobs", "Jobs by state", labels=["state"])
        for state, value in depths.items():
            jobs.add_metric([state], value)
        yield jobs


def _counters(raw: Mapping[bytes | str, bytes | str]) -> Iterator[CounterMetricFamily]:
    grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
    for field, value in raw.items():
        name, _, label_text = as_text(field).partition("|")
        labels = dict(pair.split("=", 1) for pair in label_text.split(",") if "=" in pair)
        grouped.setdefault(name, []).append((labels, float(value)))
    for name, help_text in COUNTERS.items():
        rows = grouped.get(name, [])
        label_names = sorted({key for labels, _ in rows for key in labels})
        family = CounterMetricFamily(name, help_text, labels=label_names)
        for labels, amount in rows:
            family.add_metric([labels.get(key, "") for key in label_names], amount)
        yield family


def render(queue: Queue) -> bytes:
    """The Prometheus text exposition of the bridge's metrics."""
    registry = CollectorRegistry()
    registry.register(RedisCollector(queue))
    return generate_latest(registry)
