"""The worker model (workers/worker.py ``BridgeWorker``), in this process against the real
test Redis and the sandbox: a job runs in the worker's own main thread, and what a work
horse's parent used to do is done beside it: heartbeats, the timeout's last resort, the
graceful stop. The same guarantees on real `bridge worker` processes, killed and stopped
from outside, are in tests/reliability/test_process_faults.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.worker import WorkerStatus

from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests.conftest import SANDBOX_KEY, SandboxFactory, drain
from tests.reliability import probe_jobs
from tests.test_stripe_flow import T0, checkout_payment, count_members, deliver, job_of, member_of
from workers import runtime as worker_runtime
from workers import worker as worker_module
from workers.recovery import requeue_abandoned
from workers.worker import BridgeWorker

PROBES = "tests.reliability.probe_jobs"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGRTMIN, signal.SIGALRM)


@pytest.fixture(autouse=True)
def signal_handlers() -> Iterator[None]:
    """Put back this process's signal handlers after a test's worker replaced them."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    probe_jobs.released.clear()
    yield
    probe_jobs.released.set()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def bridge_worker(queue: Queue, **attributes: Any) -> BridgeWorker:
    """A BridgeWorker on ``queue``, with some of its class attributes changed."""
    worker = BridgeWorker([queue], connection=queue.connection)
    for name, value in attributes.items():
        setattr(worker, name, value)
    return worker


def status(job: Job) -> JobStatus | None:
    """The job's status as Redis has it now (and the rest of it: its retries left)."""
    job.refresh()
    return job.get_status(refresh=False)


def when(condition: Callable[[], bool], then: Callable[[], None], timeout: float = 20) -> Any:
    """In a thread: once ``condition`` holds, ``then()``. Returns the started thread."""

    def wait_then() -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        then()

    thread = threading.Thread(target=wait_then, daemon=True)
    thread.start()
    return thread


def stop_signals(*gaps: float) -> Callable[[], None]:
    """Send this process SIGTERM after each of ``gaps`` seconds (as a platform's stop)."""

    def send() -> None:
        for gap in gaps:
            time.sleep(gap)
            os.kill(os.getpid(), signal.SIGTERM)

    return send


@pytest.fixture
def slow_sotion(
    sandbox_factory: SandboxFactory, settings: Settings, redis_conn: redis.Redis
) -> Iterator[Callable[[float], SandboxServer]]:
    """Point the worker runtime at a sandbox whose every call takes ``latency`` seconds
    (and a read timeout longer than that)."""

    def start(latency: float) -> SandboxServer:
        slow = sandbox_factory(latency=latency)
        changed = dataclasses.replace(
            settings, sotion_api_url=slow.url, sotion_timeout=(2.0, latency + 30)
        )
        worker_runtime.configure(changed, redis_conn)
        return slow

    yield start
    worker_runtime.reset()


def one_member(server: SandboxServer) -> bool:
    """Whether the sandbox has exactly one member for the purchase's email, and it is paid."""
    api = SotionClient.connect(server.url, SANDBOX_KEY, timeout=(2.0, 5.0))
    try:
        return count_members(api) == 1 and member_of(api).paid is True
    finally:
        api.close()


# -- one process, one connection ----------------------------------------------------------


def test_consecutive_jobs_run_in_the_worker_on_one_redis_connection_and_one_session(
    queue: Queue, runtime: worker_runtime.Runtime
) -> None:
    jobs = [queue.enqueue(f"{PROBES}.report_process") for _ in range(5)]

    bridge_worker(queue).work(burst=True)

    reports = [job.latest_result().return_value for job in jobs]  # type: ignore[union-attr]
    assert {report["pid"] for report in reports} == {os.getpid()}
    assert len({report["redis_client_id"] for report in reports}) == 1
    assert [report["session_jobs"] for report in reports] == [1, 2, 3, 4, 5]


# -- timeouts -----------------------------------------------------------------------------


def test_job_past_its_timeout_fails_with_job_timeout_and_is_retried(
    queue: Queue, runtime: worker_runtime.Runtime, redis_conn: redis.Redis
) -> None:
    job = queue.enqueue(
        f"{PROBES}.time_out_first_run", "runs", 60, job_timeout=1, retry=Retry(max=2)
    )

    bridge_worker(queue).work(burst=True)

    assert redis_conn.get("runs:timeouts") == b"1"  # the first run was interrupted
    assert status(job) == JobStatus.FINISHED
    assert job.latest_result().return_value == 2  # type: ignore[union-attr]
    assert job.retries_left == 1  # the timeout used one retry


def test_job_that_swallows_its_timeout_is_given_up_on_after_the_grace(
    queue: Queue,
    runtime: worker_runtime.Runtime,
    redis_conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given_up: list[tuple[str, float]] = []

    def exit_stuck(self: BridgeWorker, job: Job, ran: float) -> None:
        # What would be the process's hard exit; here the job is let go instead.
        given_up.append((job.id, ran))
        probe_jobs.released.set()

    monkeypatch.setattr(BridgeWorker, "exit_stuck", exit_stuck)
    job = queue.enqueue(f"{PROBES}.swallow_timeout_first_run", "stuck", job_timeout=1)

    bridge_worker(queue, stuck_job_grace_seconds=0.5).work(burst=True)

    assert redis_conn.get("stuck:timeouts") == b"1"  # the alarm reached it, it went on
    assert len(given_up) == 1
    job_id, ran = given_up[0]
    assert job_id == job.id
    assert ran >= 1 + 0.5  # its timeout, then the grace


# -- heartbeats ---------------------------------------------------------------------------


def test_job_longer_than_its_heartbeat_ttl_is_never_taken_for_a_dead_workers(
    queue: Queue, runtime: worker_runtime.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat a second, expiring a second after it: a 4 s job outlives three TTLs.
    monkeypatch.setattr(worker_module, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(worker_module, "HEARTBEAT_GRACE_SECONDS", 1)
    job = queue.enqueue(f"{PROBES}.sleep", 4.0, job_timeout=60)
    expiries: list[float] = []
    recovered: list[str] = []
    registry = queue.started_job_registry

    def sample() -> None:
        while status(job) != JobStatus.FINISHED:
            recovered.extend(requeue_abandoned(queue))  # another worker's maintenance
            entries = queue.connection.zrange(registry.key, 0, -1, withscores=True)
            expiries.extend(score for _, score in entries)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bridge_worker(queue).work(burst=True)
    sampler.join(timeout=10)

    assert recovered == []
    assert status(job) == JobStatus.FINISHED
    assert max(expiries) - min(expiries) >= 2  # renewed while it ran
    assert len(job.results()) == 1  # it ran once


# -- stopping -----------------------------------------------------------------------------


def test_stop_signal_during_a_short_job_lets_it_finish_and_takes_no_next_job(
    client: FlaskClient,
    queue: Queue,
    settings: Settings,
    slow_sotion: Callable[[float], SandboxServer],
) -> None:
    slow = slow_sotion(1.0)  # every call 1 s: the job takes a few, well within the grace
    job = job_of(
        queue, deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    )
    following = queue.enqueue(f"{PROBES}.sleep", 0)
    worker = bridge_worker(queue)

    when(lambda: status(job) == JobStatus.STARTED, stop_signals(0.3))
    worker.work(burst=True)

    assert worker.stop_signalled
    assert status(job) == JobStatus.FINISHED
    assert job.retries_left == settings.retry_attempts
    assert one_member(slow)
    assert status(following) == JobStatus.QUEUED  # the worker stopped after the job


def test_job_still_running_at_the_end_of_the_grace_goes_back_on_the_queue_without_a_retry(
    client: FlaskClient,
    queue: Queue,
    settings: Settings,
    slow_sotion: Callable[[float], SandboxServer],
) -> None:
    slow = slow_sotion(5.0)  # the job's first call outlasts the grace
    job = job_of(
        queue, deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    )
    worker = bridge_worker(queue, shutdown_grace_seconds=0.5)

    when(lambda: status(job) == JobStatus.STARTED, stop_signals(0.3))
    started = time.monotonic()
    worker.work(burst=True)
    stopped = time.monotonic() - started

    assert status(job) == JobStatus.QUEUED
    assert job.id in queue.get_job_ids()
    assert job.retries_left == settings.retry_attempts  # the stop cost no retry
    assert stopped < 5.0  # interrupted mid-call, not waited out
    slow.faults.latency = 0.0
    drain(queue)
    assert status(job) == JobStatus.FINISHED
    assert job.retries_left == settings.retry_attempts
    assert one_member(slow)


def test_second_stop_signal_puts_the_running_job_back_at_once(
    client: FlaskClient,
    queue: Queue,
    settings: Settings,
    slow_sotion: Callable[[float], SandboxServer],
) -> None:
    slow = slow_sotion(10.0)
    job = job_of(
        queue, deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    )
    worker = bridge_worker(queue, shutdown_grace_seconds=60)

    # Two signals more than a second apart (closer ones count as one, as in RQ).
    when(lambda: status(job) == JobStatus.STARTED, stop_signals(0.3, 1.5))
    started = time.monotonic()
    worker.work(burst=True)
    stopped = time.monotonic() - started

    assert stopped < 10.0  # neither the grace nor the call was waited out
    assert status(job) == JobStatus.QUEUED
    assert job.retries_left == settings.retry_attempts
    slow.faults.latency = 0.0
    drain(queue)
    assert status(job) == JobStatus.FINISHED
    assert one_member(slow)


def test_idle_worker_stops_at_once_on_a_stop_signal(
    queue: Queue, runtime: worker_runtime.Runtime
) -> None:
    worker = bridge_worker(queue)
    forced: list[bool] = []

    def force_stop() -> None:  # a safety net: a worker deaf to the signal ends the test
        forced.append(True)
        worker._stop_requested = True

    when(lambda: worker.get_state() == WorkerStatus.IDLE, stop_signals(0.3))
    safety = threading.Timer(8, force_stop)
    safety.start()
    started = time.monotonic()
    try:
        assert worker.work(burst=False) is False
    finally:
        safety.cancel()

    assert forced == []
    assert worker.stop_signalled
    assert time.monotonic() - started < 5
