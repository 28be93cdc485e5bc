"""RQ job functions: a few lines each, JSON arguments only."""

from __future__ import annotations

import math
from typing import Any

from rq import get_current_job

from bridge import metrics
from bridge.events import MembershipEvent
from bridge.sotion import RateLimitedError
from workers import runtime


def apply_membership_event(payload: dict[str, Any]) -> dict[str, Any]:
    """Apply one normalized event to its member's ledger and to Sotion."""
    event = MembershipEvent.from_json(payload)
    current = runtime.current()
    try:
        outcome = current.applier.apply(event).to_json()
    except Exception as exc:
        retrying = steer_retry(exc)
        metrics.count(current.redis, "bridge_jobs", outcome="retrying" if retrying else "failed")
        raise
    metrics.count(current.redis, "bridge_jobs", outcome="applied")
    return outcome


def resync_member(email: str) -> dict[str, Any]:
    """Bring one member in line with their ledger (scheduled when a grace runs out)."""
    try:
        actions = runtime.current().applier.resync(email)
    except Exception as exc:
        steer_retry(exc)
        raise
    return {"actions": actions}


def steer_retry(exc: BaseException) -> bool:
    """Shape RQ's retry of the running job after a failure.

    Errors that say ``retryable = False`` (4xx from Sotion, an email nobody knows) go
    straight to the failed registry with their message; a 429 makes the next retry wait
    at least until the rate-limit window resets. Anything else retries on schedule.
    Returns whether the job will be retried.
    """
    job = get_current_job()
    if job is None:
        return False
    if not getattr(exc, "retryable", True):
        job.retries_left = 0
        return False
    if isinstance(exc, RateLimitedError) and job.retry_intervals and job.retries_left:
        index = max(len(job.retry_intervals) - job.retries_left, 0)
        if index < len(job.retry_intervals):
            wait = math.ceil(exc.wait_seconds())
            job.retry_intervals[index] = max(job.retry_intervals[index], wait)
    return bool(job.retries_left)
