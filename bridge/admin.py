"""Inspecting and replaying failed jobs (the ``bridge jobs`` commands)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

# Lines of the traceback kept as the readable reason of a failure.
REASON_LINES = 1


@dataclass(frozen=True)
class FailedJob:
    """One job in the failed registry."""

    id: str
    description: str
    reason: str
    ended_at: datetime | None
    dedupe_key: str | None


def failed_jobs(queue: Queue, limit: int = 100) -> list[FailedJob]:
    """The most recent failed jobs with the reason each one failed."""
    registry = queue.failed_job_registry
    job_ids = registry.get_job_ids(0, limit - 1, cleanup=False)
    jobs = Job.fetch_many(job_ids, connection=queue.connection, serializer=queue.serializer)
    return [_describe(job) for job in jobs if job is not None]


def failure_reason(job: Job) -> str:
    """The last line of the job's exception: the error type and its message."""
    result = job.latest_result()
    text = (result.exc_string if result is not None else None) or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-REASON_LINES:]) if lines else "unknown (no traceback recorded)"


def replay(queue: Queue, job_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """Put failed jobs back on the queue; returns (replayed, not found or not failed)."""
    registry = queue.failed_job_registry
    replayed, missing = [], []
    for job_id in job_ids:
        try:
            registry.requeue(job_id)
        except (NoSuchJobError, InvalidJobOperation):
            missing.append(job_id)
        else:
            replayed.append(job_id)
    return replayed, missing


def _describe(job: Job) -> FailedJob:
    return FailedJob(
        id=job.id,
        description=job.description or "",
        reason=failure_reason(job),
        ended_at=job.ended_at,
        dedupe_key=(job.meta or {}).get("dedupe_key"),
    )
