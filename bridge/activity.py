"""Events per hour, by provider and outcome: what the operator's page charts.

One small hash per hour (``bridge:activity:YYYYMMDDHH``, fields ``provider:outcome``),
kept two days. The intake's script adds the duplicates it acknowledged, the web what it
acknowledged without queueing (ignored, unusable) and the worker where each job ended
(applied or failed for good: not each retry, and a parked event once its parked job has
run), so a bar is the deliveries of that hour, each counted once where its fate is known
(a failed job replayed and applied counts again, as applied).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq.utils import as_text

from bridge.intake_script import RECENT_EVENTS_KEY

log = logging.getLogger(__name__)

PREFIX = "bridge:activity:"
# The latest deliveries' jobs: the intake's script adds each job it queues.
RECENT_KEY = RECENT_EVENTS_KEY
KEEP_SECONDS = 2 * 24 * 3600


@dataclass(frozen=True)
class Hour:
    """The counts of one hour."""

    start: datetime
    counts: dict[tuple[str, str], int]  # (provider, outcome) -> events

    def total(self, provider: str | None = None) -> int:
        return sum(n for (p, _), n in self.counts.items() if provider in (None, p))


def record(
    connection: redis.Redis,
    provider: str,
    outcome: str,
    amount: int = 1,
    *,
    at: datetime | None = None,
) -> None:
    """Count ``amount`` events of ``provider`` that came to ``outcome`` this hour."""
    if amount <= 0:
        return
    key = hour_key(at or datetime.now(UTC))
    pipe = connection.pipeline(transaction=False)
    pipe.hincrby(key, f"{provider}:{outcome}", amount)
    pipe.expire(key, KEEP_SECONDS)
    try:
        pipe.execute()
    except redis.RedisError:  # a lost count never fails the request or the job
        log.warning("activity not recorded provider=%s outcome=%s", provider, outcome)


def last_hours(connection: redis.Redis, now: datetime, hours: int = 24) -> list[Hour]:
    """The last ``hours`` hours, oldest first, the current one last."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [top - timedelta(hours=back) for back in range(hours - 1, -1, -1)]
    pipe = connection.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(hour_key(start))
    return [
        Hour(start, _counts(raw.items())) for start, raw in zip(starts, pipe.execute(), strict=True)
    ]


def recent_job_ids(connection: redis.Redis, limit: int) -> list[str]:
    """The jobs of the latest deliveries, newest first."""
    found: list[Any] = connection.zrevrange(RECENT_KEY, 0, limit - 1)
    return [as_text(raw) for raw in found]


def _counts(items: Iterable[tuple[bytes, bytes]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for field, value in items:
        provider, _, outcome = as_text(field).partition(":")
        counts[(provider, outcome)] = int(value)
    return counts


def hour_key(at: datetime) -> str:
    """The hash of the hour ``at`` falls in."""
    return PREFIX + at.astimezone(UTC).strftime("%Y%m%d%H")
