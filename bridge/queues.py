"""The RQ queue of the bridge: its name, its serializer and how jobs are enqueued."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from bridge.settings import Settings, SettingsError

# The one queue both the web side and the workers use.
QUEUE_NAME = "bridge"
# The dotted path of the job function; web never imports workers.
APPLY_EVENT_JOB = "workers.jobs.apply_membership_event"
RESYNC_JOB = "workers.jobs.resync_member"
RECONCILE_JOB = "workers.jobs.reconcile_providers"
# Seconds one job may run before RQ considers it stuck.
# What the last complete backfill or reconcile did (JSON: its summary and when it started).
RECONCILE_REPORT_KEY = "bridge:reconcile:last-report"

JOB_TIMEOUT = 180
# Finished jobs are kept a week for inspection; failed ones a year (RQ's default).
RESULT_TTL = 7 * 24 * 3600
FAILURE_TTL = 365 * 24 * 3600


def connect(settings: Settings) -> redis.Redis:
    """A Redis client for ``settings.redis_url`` (connects lazily, fails fast)."""
    if settings.redis_url is None:
        raise SettingsError("REDIS_URL is required here (bridge run starts an embedded one)")
    # Heroku Redis serves rediss:// with a self-signed certificate: REDIS_TLS_VERIFY=false
    # (explicit, never the default) encrypts without checking who answers.
    unverified = settings.redis_url.startswith("rediss:") and not settings.redis_tls_verify
    tls = {"ssl_cert_reqs": None} if unverified else {}
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        **tls,
    )


def bridge_queue(connection: redis.Redis) -> Queue:
    """The bridge's queue, with the JSON serializer (never pickle)."""
    return Queue(QUEUE_NAME, connection=connection, serializer=JSONSerializer)


def enqueue_resync(
    queue: Queue,
    email: str,
    *,
    at: float | None = None,
    retry: Retry | None = None,
    reason: str,
    fresh: bool = False,
) -> Job:
    """A job that brings ``email``'s member in line with its ledger, now or ``at``; one
    per email and moment, however many ask for it. ``fresh``: against the member as
    Sotion has it then (a change made by hand is repaired), not as last written."""
    digest = hashlib.sha256(email.encode()).hexdigest()[:16]
    args = (email, True) if fresh else (email,)  # a scheduled one's arguments as they were
    if at is None:
        moment = datetime.now(UTC)
        return queue.enqueue(
            RESYNC_JOB,
            *args,
            job_id=f"resync-{digest}-{int(moment.timestamp())}",
            description=f"re-sync {reason}",
            retry=retry,
        )
    scheduled: Job = queue.enqueue_at(
        datetime.fromtimestamp(at, UTC),
        RESYNC_JOB,
        *args,
        job_id=f"resync-{digest}-{int(at)}",
        description=f"re-sync {reason}",
        retry=retry,
    )
    return scheduled
