"""Putting RQ jobs into the states a worker leaves them in, for tests of what follows."""

from __future__ import annotations

from rq import Queue
from rq.job import Job, JobStatus


def fail_for_good(queue: Queue, job_id: str) -> Job:
    """What a worker does to a job that failed with no retries left."""
    job = queue.fetch_job(job_id)
    assert job is not None
    queue.remove(job)
    job.set_status(JobStatus.FAILED)
    queue.failed_job_registry.add(job, ttl=3600, exc_string="AuthError: key revoked")
    return job
