"""The scheduled reconcile: one RQ job, scheduled again after each run, across all workers.

Each worker's maintenance pass (which one worker at a time runs, under a lock) makes sure
the job ``bridge-reconcile`` is waiting in RQ's scheduler while an interval is set: when
it ran (finished or failed) or was never scheduled, the next run is scheduled an interval
later; with the interval set to 0, a waiting run is cancelled. The run itself takes the
reconcile lease, so it never overlaps a ``bridge reconcile`` started by hand.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

RECONCILE_JOB_ID = "bridge-reconcile"
RECONCILE_JOB = "workers.jobs.reconcile_providers"
# A reconcile of a large site may take long: RQ stops a job that runs past this.
RECONCILE_TIMEOUT_SECONDS = 3600
# The last runs' results are kept this long for `bridge jobs` and the admin page.
RECONCILE_RESULT_TTL = 7 * 24 * 3600
_WAITING = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED})


def ensure_scheduled(queue: Queue, interval_minutes: float) -> Job | None:
    """Schedule the next reconcile unless one waits; returns the job scheduled now, if any."""
    job = _current(queue)
    waiting = job is not None and job.get_status(refresh=False) in _WAITING
    if interval_minutes <= 0:
        if waiting and job is not None and job.get_status(refresh=False) is JobStatus.SCHEDULED:
            job.cancel()
            log.info("scheduled reconcile cancelled: BRIDGE_RECONCILE_INTERVAL is 0")
        return None
    if waiting:
        return None
    if job is not None:
        job.delete()  # its result stays in the log line and the job's summary key
    scheduled = queue.enqueue_in(
        timedelta(minutes=interval_minutes),
        RECONCILE_JOB,
        job_id=RECONCILE_JOB_ID,
        job_timeout=RECONCILE_TIMEOUT_SECONDS,
        result_ttl=RECONCILE_RESULT_TTL,
        failure_ttl=RECONCILE_RESULT_TTL,
        description="scheduled reconcile",
    )
    log.info("reconcile scheduled in_minutes=%g", interval_minutes)
    return scheduled


def _current(queue: Queue) -> Job | None:
    try:
        return Job.fetch(RECONCILE_JOB_ID, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None
