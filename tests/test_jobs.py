"""The job functions (workers/jobs.py) run by an RQ worker: a job interrupted by the
worker's shutdown goes straight back on the queue, and the stop costs it no retry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from rq import Queue, Retry, SimpleWorker
from rq.exceptions import ShutDownImminentException
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bridge.events import EntitlementState, MembershipEvent
from bridge.ledger import merge
from bridge.queues import APPLY_EVENT_JOB, RESYNC_JOB
from bridge.sandbox import SandboxServer
from bridge.sotion import Member, SotionClient
from tests.conftest import SANDBOX_KEY
from workers import runtime as worker_runtime

EMAIL = "buyer@example.com"
# Long waits: a job that used a retry would be scheduled, not queued.
INTERVALS = [60, 120, 240]


class ShuttingDownClient(SotionClient):
    """A Sotion client whose worker is told to stop in the middle of its first call."""

    def create_member(self, email: str, **fields: Any) -> Member:
        """What the worker's signal handler raises once the shutdown grace is over."""
        raise ShutDownImminentException("shut down imminent (signal: SIGTERM)", {})


@pytest.fixture
def stopping(
    runtime: worker_runtime.Runtime, sotion: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[worker_runtime.Runtime]:
    """The worker runtime, its Sotion calls interrupted by a shutdown."""
    interrupted = ShuttingDownClient.connect(sotion.url, SANDBOX_KEY)
    monkeypatch.setattr(runtime.applier.writer, "sotion", interrupted)
    yield runtime
    interrupted.close()


def purchase() -> MembershipEvent:
    """A purchase by ``EMAIL``."""
    return MembershipEvent(
        provider="stripe",
        event_id="evt_shutdown",
        event_type="checkout.session.completed",
        occurred_at=1_760_000_000,
        email=EMAIL,
        entitlement="stripe:pi_shutdown",
        state=EntitlementState.ACTIVE,
    )


def enqueue(queue: Queue, function: str, argument: Any, retries_left: int | None) -> Job:
    """A job of ``function`` with ``retries_left`` retries left (None: no retry policy)."""
    retry = Retry(max=len(INTERVALS), interval=INTERVALS) if retries_left is not None else None
    job = queue.enqueue(function, argument, retry=retry)
    if retries_left is not None:
        job.retries_left = retries_left
        job.save()
    return job


def run_one_job(queue: Queue) -> None:
    """One job, run the way a worker runs it."""
    worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.work(burst=True, max_jobs=1)


@pytest.mark.parametrize(
    "retries_left",
    [3, 1, 0, None],
    ids=["first-run", "last-retry", "no-retries-left", "no-retry-policy"],
)
def test_event_job_interrupted_by_the_shutdown_is_queued_again_without_using_a_retry(
    retries_left: int | None, queue: Queue, stopping: worker_runtime.Runtime
) -> None:
    job = enqueue(queue, APPLY_EVENT_JOB, purchase().to_json(), retries_left)

    run_one_job(queue)

    job.refresh()
    assert job.get_status() == JobStatus.QUEUED
    assert queue.job_ids == [job.id]
    assert job.id not in queue.scheduled_job_registry.get_job_ids(cleanup=False)
    assert job.id not in queue.failed_job_registry.get_job_ids(cleanup=False)
    assert (job.retries_left or 0) == (retries_left or 0)  # RQ's "no retries" either way


def test_resync_job_interrupted_by_the_shutdown_is_queued_again_on_its_last_retry(
    queue: Queue, stopping: worker_runtime.Runtime
) -> None:
    granted = merge(None, purchase(), "stripe:pi_shutdown")
    assert granted is not None
    stopping.store.save_entitlement(EMAIL, granted)  # so the resync has a call to make
    job = enqueue(queue, RESYNC_JOB, EMAIL, retries_left=1)

    run_one_job(queue)

    job.refresh()
    assert job.get_status() == JobStatus.QUEUED
    assert queue.job_ids == [job.id]
    assert job.retries_left == 1
