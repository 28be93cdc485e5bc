"""/metrics (bridge/metrics.py) reads the queue's depths without touching the queue: a
scrape never runs RQ's cleanup of abandoned jobs, which only the workers' maintenance
does, under its lock."""

from __future__ import annotations

import time

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Retry
from rq.executions import Execution
from rq.job import JobStatus

from bridge.queues import RESYNC_JOB


def queue_depths(text: str) -> dict[str, float]:
    """The ``bridge_queue_jobs`` gauge of a scrape, by state."""
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bridge_queue_jobs"
    }


def test_scrape_leaves_a_started_job_whose_execution_expired_alone(
    client: FlaskClient, queue: Queue
) -> None:
    # A worker took the job and started it, then died: its execution's TTL runs out.
    job = queue.enqueue(RESYNC_JOB, "buyer@example.com", retry=Retry(max=3))
    assert queue.pop_job_id() == job.id
    with queue.connection.pipeline() as pipe:
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        Execution.create(job, ttl=1, pipeline=pipe)
        pipe.execute()
    registry = queue.started_job_registry
    deadline = time.monotonic() + 5
    while job.id not in registry.get_expired_job_ids(time.time()):
        assert time.monotonic() < deadline, "the execution never expired"
        time.sleep(0.1)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert queue_depths(response.get_data(as_text=True)) == {
        "queued": 0,
        "started": 1,
        "scheduled": 0,
        "failed": 0,
    }
    assert job.get_status(refresh=True) == JobStatus.STARTED  # neither retried nor failed
    assert job.retries_left == 3
    assert job.id in registry.get_job_ids(cleanup=False)
    assert job.id in registry.get_expired_job_ids(time.time())  # still there for maintenance
