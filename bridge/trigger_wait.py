"""``bridge trigger --wait``: what became of the jobs a sample's delivery queued."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from bridge import admin

# Seconds between two looks at the jobs.
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Outcome:
    """Where one job stands: applied, ignored, parked, failed, retrying or queued."""

    job_id: str
    state: str
    detail: str = ""
    actions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def done(self) -> bool:
        """The job has an outcome that waiting longer will not change."""
        return self.state in ("applied", "ignored", "parked", "failed")


def outcome(queue: Queue, job_id: str) -> Outcome:
    """Where the job stands now."""
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return Outcome(job_id, "applied", "finished (its result has expired)")
    status = job.get_status(refresh=False)
    if status == JobStatus.FINISHED:
        return _finished(job_id, job.return_value())
    if status == JobStatus.FAILED:
        return Outcome(job_id, "failed", admin.failure_reason(job))
    meta = job.meta or {}
    if "parked" in meta:
        return Outcome(job_id, "parked", str(meta["parked"]))
    if status == JobStatus.SCHEDULED and job.latest_result() is not None:
        return Outcome(job_id, "retrying", admin.failure_reason(job))
    return Outcome(job_id, "queued", str(status or "queued"))


def _finished(job_id: str, result: Any) -> Outcome:
    result = result if isinstance(result, dict) else {}
    if "parked" in result:
        return Outcome(job_id, "parked", str(result.get("reason") or ""))
    actions = tuple(str(action) for action in result.get("actions") or ())
    if result.get("email") == "-" and not actions:
        return Outcome(job_id, "ignored", "the worker applied it to no member")
    detail = "Sotion: " + ", ".join(actions) if actions else "Sotion already matched"
    if not result.get("ledger_changed"):
        detail += " (the ledger did not change)"
    return Outcome(job_id, "applied", detail, actions)


def wait(
    queue: Queue,
    job_ids: tuple[str, ...],
    *,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Outcome]:
    """Each job's outcome, read until all are done or ``timeout`` seconds have passed."""
    deadline = clock() + timeout
    while True:
        found = [outcome(queue, job_id) for job_id in job_ids]
        if all(item.done for item in found) or clock() >= deadline:
            return found
        sleep(POLL_SECONDS)
