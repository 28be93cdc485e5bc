"""The scheduled reconcile: one waiting run across all workers, and what a run repairs."""

from __future__ import annotations

from datetime import UTC, datetime

from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bridge.queues import RECONCILE_JOB
from bridge.sotion import SotionClient
from tests.conftest import drain
from tests.reconcile.scripted import ScriptedSource, observed
from workers import runtime as worker_runtime
from workers.schedule import current_job, ensure_scheduled

RECONCILE_JOB_ID = "bridge-reconcile-test"


def _job(queue: Queue) -> Job:
    return Job.fetch(RECONCILE_JOB_ID, connection=queue.connection, serializer=JSONSerializer)


def _scheduled(queue: Queue) -> Job:
    job = current_job(queue)
    assert job is not None
    return job


def test_one_run_is_scheduled_an_interval_ahead_however_often_workers_ask(queue: Queue) -> None:
    before = datetime.now(UTC).timestamp()
    assert ensure_scheduled(queue, 60) is not None
    for _ in range(3):  # every maintenance pass of every worker asks again
        assert ensure_scheduled(queue, 60) is None
    registry = queue.scheduled_job_registry
    job = _scheduled(queue)
    assert registry.get_job_ids() == [job.id]
    at = registry.get_scheduled_time(job.id).timestamp()
    assert before + 3600 - 5 <= at <= before + 3600 + 5
    assert job.func_name == RECONCILE_JOB


def test_interval_zero_cancels_the_waiting_run_and_schedules_none(queue: Queue) -> None:
    ensure_scheduled(queue, 60)
    assert ensure_scheduled(queue, 0) is None
    assert _scheduled(queue).get_status() is JobStatus.CANCELED
    assert queue.scheduled_job_registry.get_job_ids() == []
    assert ensure_scheduled(queue, 0) is None


def test_after_a_run_the_next_one_is_scheduled_and_the_last_ones_result_stays(
    queue: Queue, runtime: worker_runtime.Runtime
) -> None:
    first = ensure_scheduled(queue, 30)
    assert first is not None
    queue.scheduled_job_registry.remove(first)
    queue.enqueue_job(first)  # its time has come
    drain(queue)
    assert first.get_status() is JobStatus.FINISHED
    second = ensure_scheduled(queue, 30)
    assert second is not None and second.id != first.id
    assert queue.scheduled_job_registry.get_job_ids() == [second.id]
    assert first.id in queue.finished_job_registry.get_job_ids()


def test_a_failed_run_stays_in_the_failed_registry_and_is_counted(
    queue: Queue, runtime: worker_runtime.Runtime, monkeypatch
) -> None:
    from bridge.metrics import METRICS_KEY

    def broken(providers, **options):  # the provider's API is down
        raise ConnectionError("provider unreachable")

    monkeypatch.setattr(runtime.reconciler, "reconcile", broken)
    job = ensure_scheduled(queue, 30)
    assert job is not None
    queue.scheduled_job_registry.remove(job)
    queue.enqueue_job(job)
    drain(queue)
    assert job.id in queue.failed_job_registry.get_job_ids()
    assert queue.connection.hget(METRICS_KEY, "bridge_reconciles|outcome=failed") == b"1"
    later = ensure_scheduled(queue, 30)
    assert later is not None
    assert job.id in queue.failed_job_registry.get_job_ids()


def test_a_scheduled_run_repairs_a_member_changed_by_hand(
    queue: Queue, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    runtime.reconciler.sources["stripe"] = ScriptedSource([[observed("s@example.com", "sub_s")]])
    runtime.reconciler.backfill(["stripe"])
    member = sotion_api.find_member_by_email("s@example.com")
    assert member is not None and member.paid
    sotion_api.update_member(member.id, paid=False)
    queue.enqueue(RECONCILE_JOB, job_id=RECONCILE_JOB_ID)
    drain(queue)
    assert sotion_api.get_member(member.id).paid
    summary = _job(queue).return_value()
    assert summary["changed"] == 1 and summary["kind"] == "reconcile"
    assert "s@example.com" not in str(summary)


def test_a_scheduled_run_during_a_manual_one_is_a_no_op(
    queue: Queue, runtime: worker_runtime.Runtime
) -> None:
    queue.connection.set("bridge:reconcile:lock", "a manual run", px=10_000)
    queue.enqueue(RECONCILE_JOB, job_id=RECONCILE_JOB_ID)
    drain(queue)
    assert _job(queue).return_value() == {"skipped": "another backfill or reconcile is running"}


def test_a_workers_maintenance_pass_schedules_it(queue: Queue) -> None:
    from workers.worker import BridgeWorker

    worker = BridgeWorker([queue], connection=queue.connection)
    worker.reconcile_interval = 15
    worker.clean_registries()
    assert queue.scheduled_job_registry.get_job_ids() == [_scheduled(queue).id]
    idle = BridgeWorker([queue], connection=queue.connection)  # reconcile_interval None
    _scheduled(queue).delete()
    idle.clean_registries()
    assert queue.scheduled_job_registry.get_job_ids() == []
