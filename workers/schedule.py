"""The scheduled reconcile: one RQ job, scheduled again after each run, across all workers.

Each worker's maintenance pass (which one worker at a time runs, under a lock) makes sure
a reconcile job is waiting in RQ's scheduler while an interval is set: when the last one
ran (finished or failed) or none was ever scheduled, the next is scheduled an interval
later, under an id of its own (``bridge-reconcile-<time>-<random>``, named in
``bridge:reconcile:next``), so the last runs' results and failures stay in RQ's
registries for a week. With the interval set to 0, a waiting run is cancelled. The run
itself takes the reconcile lease, so it never overlaps a ``bridge reconcile`` by hand.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import as_text

from bridge.queues import RECONCILE_JOB

log = logging.getLogger(__name__)

RECONCILE_JOB_PREFIX = "bridge-reconcile-"
# The id of the reconcile job scheduled last.
NEXT_KEY = "bridge:reconcile:next"
# A reconcile of a large site may take long: RQ stops a job that runs past this.
RECONCILE_TIMEOUT_SECONDS = 3600
# The last runs' results are kept this long for `bridge jobs` and the admin page.
RECONCILE_RESULT_TTL = 7 * 24 * 3600
_WAITING = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED})


def ensure_scheduled(queue: Queue, interval_minutes: float) -> Job | None:
    """Schedule the next reconcile unless one waits; returns the job scheduled now, if any."""
    job = current_job(queue)
    waiting = job is not None and job.get_status(refresh=False) in _WAITING
    if interval_minutes <= 0:
        if waiting and job is not None and job.get_status(refresh=False) is JobStatus.SCHEDULED:
            job.cancel()
            log.info("scheduled reconcile cancelled: BRIDGE_RECONCILE_INTERVAL is 0")
        return None
    if waiting:
        return None
    delay = timedelta(minutes=interval_minutes)
    due = int((datetime.now(UTC) + delay).timestamp())
    job_id = f"{RECONCILE_JOB_PREFIX}{due}-{uuid.uuid4().hex[:8]}"
    scheduled = queue.enqueue_in(
        delay,
        RECONCILE_JOB,
        job_id=job_id,
        job_timeout=RECONCILE_TIMEOUT_SECONDS,
        result_ttl=RECONCILE_RESULT_TTL,
        failure_ttl=RECONCILE_RESULT_TTL,
        description="scheduled reconcile",
    )
    queue.connection.set(NEXT_KEY, job_id)
    log.info("reconcile scheduled in_minutes=%g job=%s", interval_minutes, job_id)
    return scheduled


def current_job(queue: Queue) -> Job | None:
    """The reconcile job scheduled last (waiting, running or done), if RQ still has it."""
    job_id = queue.connection.get(NEXT_KEY)
    if job_id is None:
        return None
    try:
        return Job.fetch(as_text(job_id), connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None
