"""RQ job functions: a few lines each, JSON arguments only."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import redis
from rq import get_current_job
from rq.exceptions import ShutDownImminentException

from bridge import activity, metrics
from bridge.events import MembershipEvent
from bridge.gumroad_confirm import GumroadMismatchError
from bridge.intake import DEDUPE_TTL_SECONDS
from bridge.intake_script import MEMBER_EVENTS_MAX, member_events_key
from bridge.sotion import RateLimitedError
from workers import runtime
from workers.reconcile import ReconcileBusyError
from workers.resolve import EmailUnknownError, UnresolvedError

log = logging.getLogger(__name__)


def apply_membership_event(payload: dict[str, Any], final: bool = False) -> dict[str, Any]:
    """Apply one normalized event to its member's ledger and to Sotion.

    An event whose buyer is not known yet is parked (``workers/parking.py``) unless this
    is its ``final`` run, at the end of the parking time.
    """
    event = MembershipEvent.from_json(payload)
    current = runtime.current()
    try:
        try:
            outcome = current.applier.apply(event).to_json()
        except EmailUnknownError as exc:
            if final:
                raise UnresolvedError(
                    f"parked {current.settings.park_hours:g} h and no event named the buyer: {exc}"
                ) from exc
            parked = current.parking.park(event, str(exc))
            if parked is not None:
                count_outcome(current, event, "parked")
                return {"event": event.dedupe_key, "parked": parked, "reason": str(exc)}
            # Its email was learned meanwhile: apply it now.
            outcome = current.applier.apply(event).to_json()
    except ShutDownImminentException:
        put_back_now()
        raise
    except Exception as exc:
        retrying = steer_retry(exc)
        count_outcome(current, event, "retrying" if retrying else "failed")
        if isinstance(exc, GumroadMismatchError):
            metrics.count(current.redis, "bridge_gumroad_refused", reason=exc.code)
        index_for_owner(current, event, event.entitlement)
        raise
    current.parking.wake(event)
    index_for_owner(current, event, outcome.get("entitlement"))
    count_outcome(current, event, "applied")
    return outcome


def count_outcome(current: runtime.Runtime, event: MembershipEvent, outcome: str) -> None:
    """What the job came to: the Prometheus counter and the operator page's chart."""
    metrics.count(current.redis, "bridge_jobs", outcome=outcome)
    # The chart counts each delivery once, where it ends: not each retry, and a parked
    # event when its parked job has run.
    if outcome not in ("retrying", "parked"):
        activity.record(current.redis, event.provider, outcome)


def index_for_owner(current: runtime.Runtime, event: MembershipEvent, key: str | None) -> None:
    """List the running job among the events of the entitlement's owner when the event
    names another email or none (the intake listed it under the event's own email), so
    ``bridge member`` shows it."""
    job = get_current_job()
    if job is None or key is None:
        return
    try:
        owner = current.store.owner_of(key)
        if owner is None or owner == event.email:
            return
        index = member_events_key(owner)
        received = job.created_at.timestamp() if job.created_at else time.time()
        pipe = current.redis.pipeline(transaction=False)
        pipe.zadd(index, {job.id: received})
        pipe.zremrangebyrank(index, 0, -MEMBER_EVENTS_MAX - 1)
        pipe.expire(index, DEDUPE_TTL_SECONDS)
        pipe.execute()
    except redis.RedisError:
        # Only the listing is lost; the job's own outcome stands (or its error propagates).
        log.warning("could not index job=%s for its owner", job.id, exc_info=True)


def resync_member(email: str, fresh: bool = False) -> dict[str, Any]:
    """Bring one member in line with their ledger (scheduled when a grace runs out;
    ``fresh``, asked for by the operator: against the member as Sotion has it now)."""
    try:
        actions = runtime.current().applier.resync(email, fresh=fresh)
    except ShutDownImminentException:
        put_back_now()
        raise
    except Exception as exc:
        steer_retry(exc)
        raise
    return {"actions": actions}


def put_back_now() -> None:
    """The worker is stopping: the interrupted job goes straight back on the queue.

    A stop is not the job's failure: it costs none of its retries, even its last one.
    """
    job = get_current_job()
    if job is None:
        return
    # One more retry, whose wait (inserted where RQ will read it next) is zero: the
    # job's own schedule of waits stays as it was for its real failures.
    job.retries_left = (job.retries_left or 0) + 1
    if job.retry_intervals:
        index = max(len(job.retry_intervals) + 1 - job.retries_left, 0)
        job.retry_intervals.insert(index, 0)


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


def reconcile_providers() -> dict[str, Any]:
    """The scheduled reconcile: every provider with an API key, then every member.

    A reconcile already running (one started by hand) makes this run a no-op.
    """
    current = runtime.current()
    reconciler = current.reconciler
    try:
        report = reconciler.reconcile(sorted(reconciler.sources))
    except ReconcileBusyError:
        return {"skipped": "another backfill or reconcile is running"}
    except Exception:
        # Kept in RQ's failed registry with its reason; the next run is scheduled anyway.
        metrics.count(current.redis, "bridge_reconciles", outcome="failed")
        raise
    summary = report.summary()
    metrics.count(current.redis, "bridge_reconciles", outcome="done")
    metrics.count(current.redis, "bridge_reconcile_repairs", len(report.sync.changes))
    log.info("scheduled reconcile done %s", json.dumps(summary, sort_keys=True))
    return summary
