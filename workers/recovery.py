"""Running again, within seconds, the jobs of a worker that died mid-job.

A worker killed with SIGKILL (an out-of-memory kill, a dyno restart past its grace) leaves
its job in RQ's started registry with an execution that nobody heartbeats any more. RQ
notices once that execution's TTL runs out, at its next registry maintenance, and then
schedules the job as a retry (which waits for the scheduler, whose lock the dead worker
may also have held). Our workers heartbeat every few seconds with a short TTL, and each
maintenance pass first puts such jobs straight back at the front of the queue: a buyer
waits seconds, not minutes. A job that keeps killing its worker (it runs out of memory
every time) is left to RQ's own handling after a few immediate re-runs, which retries it
on schedule and finally fails it with ``AbandonedJobError``.
"""

from __future__ import annotations

import logging
import time

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

# A job is put back at once this many times; after that RQ's retries take over.
MAX_IMMEDIATE_RECOVERIES = 3


def requeue_abandoned(queue: Queue, now: float | None = None) -> list[str]:
    """Put the jobs whose execution expired back on ``queue``; returns their ids.

    The caller holds the queue's maintenance lock, so RQ's own cleanup of the started
    registry never handles the same job at the same time.
    """
    registry = queue.started_job_registry
    expired = registry.get_expired_job_ids(time.time() if now is None else now)
    return [job_id for job_id in expired if _requeue(queue, job_id)]


def _requeue(queue: Queue, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return False
    if job.get_status(refresh=False) != JobStatus.STARTED:
        return False  # finished or failed meanwhile: a leftover entry, RQ drops it
    recoveries = int(job.meta.get("recoveries", 0))
    if recoveries >= MAX_IMMEDIATE_RECOVERIES:
        return False  # RQ's cleanup retries it on schedule, then fails it
    registry = queue.started_job_registry
    # The registry holds `job_id:execution_id` entries; the dead execution's own record
    # has expired with it, so the entries are found by their job id.
    entries = [
        entry
        for entry in queue.connection.zrange(registry.key, 0, -1)
        if registry.parse_job_id(entry) == job.id
    ]
    job.meta["recoveries"] = recoveries + 1  # saved with the job by enqueue_job
    with queue.connection.pipeline() as pipe:
        queue.enqueue_job(job, pipeline=pipe, at_front=True)  # starts the MULTI
        if entries:
            pipe.zrem(registry.key, *entries)  # type: ignore[arg-type]
        pipe.execute()
    log.warning("re-queued a job whose worker died job=%s recoveries=%d", job.id, recoveries + 1)
    return True
