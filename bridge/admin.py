"""Reading the bridge's jobs (the ``bridge jobs`` and ``bridge member`` commands): what
each job is about and where it stands, and replaying or deleting failed ones.

A job's state comes from RQ's own records: its hash (status, times, retries left, meta,
result) and its registries (the scheduled one says when a retry runs). Presentation-free:
the commands render these values; nothing here prints. Failure texts pass through
``bridge/redact.py`` before they leave this module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from rq import Queue
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import as_text

from bridge.intake import DEDUPE_PREFIX
from bridge.intake_script import member_events_key
from bridge.redact import redact, redact_values

# Lines of the traceback kept as the readable reason of a failure.
REASON_LINES = 1

# What ``JobInfo.status`` says, in the words the commands print.
APPLIED = "applied"  # finished: the event is in the ledger and Sotion (or changed nothing)
QUEUED = "queued"  # waiting for a worker
RUNNING = "running"  # a worker has it now
RETRYING = "retrying"  # failed, another attempt is scheduled (``next_attempt_at``)
PARKED = "parked"  # waiting for an event that names its buyer (``next_attempt_at``: deadline)
FAILED = "failed"  # failed for good, with ``reason``; replayable
EXPIRED = "expired"  # RQ no longer holds it (a finished job is kept a week) or it was purged
# Statuses that mean the event may still be applied without anyone's help.
PENDING = frozenset({QUEUED, RUNNING, RETRYING, PARKED})


@dataclass(frozen=True)
class JobInfo:
    """One job of the bridge: what it is about and where it stands."""

    id: str
    status: str
    description: str = ""
    provider: str | None = None
    event_type: str | None = None
    dedupe_key: str | None = None
    email: str | None = None  # the event's buyer, as given (callers mask it where needed)
    entitlement: str | None = None
    created_at: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    next_attempt_at: datetime | None = None  # a retry's time, or a parked event's deadline
    reason: str | None = None  # why it failed or is parked (redacted)
    traceback: str | None = None  # the failure's whole text (redacted)
    retries: int = 0  # the retries the job was given
    retries_left: int | None = None
    actions: tuple[str, ...] = ()  # the Sotion calls an applied job made
    parked_as: str | None = None  # the job that waits for the buyer, for a parked event

    @property
    def failures(self) -> int | None:
        """How many attempts failed and were retried so far (None: not known: a job that
        failed for good may have stopped early, on a permanent error)."""
        if self.status == FAILED or self.retries_left is None:
            return None if self.status in (FAILED, EXPIRED) else 0
        return max(self.retries - self.retries_left, 0)


@dataclass(frozen=True)
class FailedJob:
    """One job in the failed registry."""

    id: str
    description: str
    reason: str
    ended_at: datetime | None
    dedupe_key: str | None
    email: str | None = None


def failed_jobs(queue: Queue, limit: int = 100, email: str | None = None) -> list[FailedJob]:
    """The most recent failed jobs with the reason each one failed; with ``email``, only
    that buyer's (the jobs of their event index)."""
    registry = queue.failed_job_registry
    if email is None:
        job_ids = registry.get_job_ids(0, limit - 1, cleanup=False)
    else:
        indexed = event_job_ids(queue, email)
        pipe = registry.connection.pipeline(transaction=False)
        for job_id in indexed:
            pipe.zscore(registry.key, job_id)
        scores = pipe.execute()
        job_ids = [i for i, score in zip(indexed, scores, strict=True) if score is not None]
        job_ids = job_ids[:limit]
    jobs = Job.fetch_many(job_ids, connection=queue.connection, serializer=queue.serializer)
    return [_failed(job) for job in jobs if job is not None]


def event_job_ids(queue: Queue, email: str) -> list[str]:
    """The jobs of one buyer's events, newest first (the intake's and workers' index)."""
    return [job_id for _, job_id in event_jobs(queue, email)]


def event_jobs(queue: Queue, email: str) -> list[tuple[float, str]]:
    """(time received, job id) of one buyer's events, newest first."""
    pairs: list[Any] = queue.connection.zrevrange(member_events_key(email), 0, -1, withscores=True)
    return [(float(score), as_text(raw)) for raw, score in pairs]


def failure_reason(job: Job) -> str:
    """The last line of the job's exception: the error type and its message."""
    text = _exc_string(job)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown (no traceback recorded)"
    return redact_values(" ".join(lines[-REASON_LINES:]), _private(job))


def job_info(queue: Queue, job_id: str) -> JobInfo | None:
    """Where one job stands; None when RQ holds no such job."""
    (info,) = jobs_info(queue, [job_id])
    return info if info.status != EXPIRED else None


def jobs_info(queue: Queue, job_ids: Sequence[str]) -> list[JobInfo]:
    """:func:`job_info` for many jobs (EXPIRED for those RQ no longer holds); a parked
    event's job says how its parked job stands."""
    jobs = _fetch_many(queue, job_ids)
    infos = [
        _info(queue, job) if job is not None else JobInfo(id=job_id, status=EXPIRED)
        for job_id, job in zip(job_ids, jobs, strict=True)
    ]
    parked = [info.parked_as for info in infos if info.parked_as]
    if not parked:
        return infos
    waiting = {info.id: info for info in jobs_info(queue, parked)}
    return [_through_parking(info, waiting.get(info.parked_as or "")) for info in infos]


def replay(queue: Queue, job_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Put failed jobs back on the queue; returns (replayed, not found or not failed)."""
    registry = queue.failed_job_registry
    replayed, missing = [], []
    for job_id in job_ids:
        try:
            registry.requeue(job_id)
        except (NoSuchJobError, InvalidJobOperation, ValueError):  # ValueError: not a job id
            missing.append(job_id)
        else:
            replayed.append(job_id)
    return replayed, missing


def purge(queue: Queue, job_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Delete failed jobs with RQ's own API; returns (deleted, not found or not failed).

    The event's dedupe key goes with its job (a provider's redelivery of it is accepted
    again, as after any failure), and so does its entry in its buyer's event index.
    """
    registry = queue.failed_job_registry
    deleted, missing = [], []
    for job_id in job_ids:
        try:
            job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except (NoSuchJobError, ValueError):  # ValueError: not a job id
            missing.append(job_id)
            continue
        if registry.connection.zscore(registry.key, job_id) is None:
            missing.append(job_id)
            continue
        subject = _subject(job)
        registry.remove(job, delete_job=True)
        pipe = queue.connection.pipeline(transaction=False)
        dedupe = (job.meta or {}).get("dedupe_key")
        if dedupe:
            # Only if it still names this job (a newer delivery may have replaced it).
            pipe.eval(_DELETE_IF, 1, DEDUPE_PREFIX + dedupe, job_id)
        if subject.get("email"):
            pipe.zrem(member_events_key(str(subject["email"])), job_id)
        pipe.execute()
        deleted.append(job_id)
    return deleted, missing


# Delete KEYS[1] if it holds ARGV[1].
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _failed(job: Job) -> FailedJob:
    return FailedJob(
        id=job.id,
        description=job.description or "",
        reason=failure_reason(job),
        ended_at=job.ended_at,
        dedupe_key=(job.meta or {}).get("dedupe_key"),
        email=_subject(job).get("email"),
    )


def _info(queue: Queue, job: Job) -> JobInfo:
    """A fetched job's state from its hash, result and registries."""
    subject = _subject(job)
    meta = job.meta or {}
    status = job.get_status(refresh=False)
    info: dict[str, Any] = {}
    if status is JobStatus.FINISHED:
        result = _result(job)
        if result.get("parked"):
            info = {"status": PARKED, "parked_as": str(result["parked"])}
            info["reason"] = redact(str(result.get("reason") or "")) or None
        else:
            info = {"status": APPLIED, "actions": tuple(str(a) for a in result.get("actions", ()))}
    elif status is JobStatus.SCHEDULED:
        info = {"status": PARKED if "parked" in meta else RETRYING}
        if "parked" in meta:
            info["reason"] = redact(str(meta["parked"]))
        with contextlib.suppress(NoSuchJobError):
            info["next_attempt_at"] = queue.scheduled_job_registry.get_scheduled_time(job)
    elif status is JobStatus.FAILED:
        text = _exc_string(job)
        info = {
            "status": FAILED,
            "reason": failure_reason(job),
            "traceback": redact_values(text, _private(job)) if text else None,
        }
    elif status is JobStatus.STARTED:
        info = {"status": RUNNING}
    elif status is JobStatus.QUEUED:
        info = {"status": QUEUED}
    else:  # deferred, stopped, canceled: RQ's own words
        info = {"status": str(status.value if status is not None else EXPIRED)}
    return JobInfo(
        id=job.id,
        description=job.description or "",
        provider=_text(subject.get("provider")),
        event_type=_text(subject.get("event_type")),
        dedupe_key=_text(meta.get("dedupe_key")),
        email=_text(subject.get("email")),
        entitlement=_text(subject.get("entitlement")),
        created_at=job.created_at,
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        retries=len(job.retry_intervals or ()),
        retries_left=job.retries_left,
        **info,
    )


def _fetch_many(queue: Queue, job_ids: Sequence[str]) -> list[Job | None]:
    """The jobs, None for each RQ cannot read (gone, half-written, not a job id): one bad
    hash never hides the others."""
    try:
        return Job.fetch_many(
            list(job_ids), connection=queue.connection, serializer=queue.serializer
        )
    except (NoSuchJobError, DeserializationError, ValueError):
        pass
    found: list[Job | None] = []
    for job_id in job_ids:
        try:
            found.append(
                Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
            )
        except (NoSuchJobError, DeserializationError, ValueError):
            found.append(None)
    return found


def _through_parking(info: JobInfo, waiting: JobInfo | None) -> JobInfo:
    """A parked event's job, told as its parked job stands (applied, failed, waiting)."""
    if waiting is None or waiting.status == EXPIRED:
        return info
    return replace(
        info,
        status=waiting.status,
        next_attempt_at=waiting.next_attempt_at,
        reason=waiting.reason or info.reason,
        traceback=waiting.traceback,
        actions=waiting.actions,
        ended_at=waiting.ended_at or info.ended_at,
    )


def _subject(job: Job) -> dict[str, Any]:
    """What the job is about, from its arguments: an event, or a resync's email."""
    try:
        args = job.args
    except Exception:  # an unreadable job (another serializer): say nothing about it
        return {}
    if not args:
        return {}
    first = args[0]
    if isinstance(first, dict):
        return first
    if isinstance(first, str) and "@" in first:
        return {"email": first, "event_type": "resync"}
    return {}


def _private(job: Job) -> list[str | None]:
    """The personal values of the job's payload, masked wherever a failure quotes them."""
    subject = _subject(job)
    return [_text(subject.get("display_name")), _text(subject.get("email"))]


def _result(job: Job) -> dict[str, Any]:
    try:
        value = job.return_value()
    except Exception:  # a result that cannot be read is no result
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _exc_string(job: Job) -> str:
    result = job.latest_result()
    return (result.exc_string if result is not None else None) or ""


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None
