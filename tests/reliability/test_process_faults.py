"""Process faults on real `bridge worker` processes: a SIGKILLed worker (an OOM or dyno kill),
a SIGTERMed one (a platform stop), a Redis restart, the email lease of a killed job, and
the worker model: a job stuck past its timeout, and the connections consecutive jobs share.

Nothing here jumps time or cleans RQ's registries by hand: the live workers must recover
on their own, within the bounds workers/worker.py promises.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
from flask.testing import FlaskClient
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import as_text

from bridge.app import create_app
from bridge.embedded import EmbeddedRedis
from bridge.intake import DEDUPE_PREFIX
from bridge.queues import bridge_queue
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET, SandboxFactory
from tests.reliability.processes import (
    Call,
    Fleet,
    RunningJob,
    WorkerProcess,
    children,
    environment,
    live_worker_count,
    marked_pids,
    now,
    say,
    wait_until,
    watch,
    worker_running,
)
from workers.store import LOCK_TIMEOUT_SECONDS, PREFIX, Store
from workers.worker import (
    HEARTBEAT_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    STUCK_JOB_EXIT_CODE,
    STUCK_JOB_GRACE_SECONDS,
)

EMAIL = "faults@example.com"
# The production retry policy (Settings' defaults): a retry waits seconds, not 0 s.
RETRY_ATTEMPTS = 10
RETRY_BASE_SECONDS = 5.0
# A job whose worker was SIGKILLed runs again and finishes within this long of the kill.
RECOVERY_LIMIT_SECONDS = 60
# How long Redis stays down in the restart test (longer than one Sotion call).
REDIS_DOWN_SECONDS = 2.0
# Heroku sends SIGKILL this long after SIGTERM: a stopping worker must be gone by then.
STOP_LIMIT_SECONDS = 30

# The job functions of tests/reliability/probe_jobs.py, as a worker imports them.
PROBES = "tests.reliability.probe_jobs"

FleetFactory = Callable[..., Fleet]


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def web(settings: Settings, redis_conn: redis.Redis) -> FlaskClient:
    """The web side on the test Redis, enqueuing with the production retry policy."""
    production = dataclasses.replace(
        settings, retry_attempts=RETRY_ATTEMPTS, retry_base_seconds=RETRY_BASE_SECONDS
    )
    return create_app(production).test_client()


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[FleetFactory]:
    """Start worker fleets against a Redis and a sandbox; every process is killed after."""
    made: list[Fleet] = []

    def build(redis_url: str, sandbox: SandboxServer, **extra: str) -> Fleet:
        env = environment(
            REDIS_URL=redis_url,
            SOTION_API_URL=sandbox.url,
            SOTION_API_KEY=SANDBOX_KEY,
            BRIDGE_LOG_LEVEL="INFO",
            **extra,
        )
        logs = tmp_path / f"fleet{len(made) + 1}"
        logs.mkdir()
        fleet = Fleet(env, logs)
        made.append(fleet)
        return fleet

    yield build
    for fleet in made:
        fleet.stop_all()


def purchase(email: str, ref: str) -> dict[str, Any]:
    """A paid one-time Checkout Session event whose ids are all unique to ``ref``."""
    obj = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj.update(id=f"cs_{ref}", customer=f"cus_{ref}", payment_intent=f"pi_{ref}")
    obj["customer_details"]["email"] = email
    return se.event("checkout.session.completed", obj)


def deliver(client: FlaskClient, payload: dict[str, Any]) -> str:
    """POST a signed Stripe event; returns the id of the job the bridge queued for it."""
    body = se.encode(payload)
    response = client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["queued"] == 1
    app_redis: redis.Redis = client.application.extensions["bridge"].redis
    job_id = app_redis.get(f"{DEDUPE_PREFIX}stripe:{payload['id']}")
    assert job_id is not None
    return as_text(job_id)


def fetch(connection: redis.Redis, job_id: str) -> Job:
    """The job as Redis has it now."""
    return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)


def status(connection: redis.Redis, job_id: str) -> JobStatus | None:
    """The job's status (None while Redis does not answer, or when the job is gone)."""
    try:
        return fetch(connection, job_id).get_status(refresh=False)
    except (redis.ConnectionError, NoSuchJobError):
        return None


def members_with(sandbox: SandboxServer, email: str) -> list[dict[str, Any]]:
    """The sandbox's members with this email (read from its state: no API latency)."""
    return [m for m in sandbox.state.members_snapshot() if m["email"] == email]


def start_workers(fleet: Fleet, connection: redis.Redis, count: int) -> list[WorkerProcess]:
    """Start ``count`` workers and wait until each has registered with Redis."""
    workers = [fleet.start_worker() for _ in range(count)]
    wait_until(lambda: live_worker_count(connection) >= count, 30, f"{count} workers", fleet.logs())
    return workers


def lock_key(email: str) -> str:
    """The Redis key of an email's lease."""
    return f"{PREFIX}lock:{email}"


class Interrupted(NamedTuple):
    """A job's worker signalled mid-call: who ran it, the call in flight, and when."""

    running: RunningJob
    victim: WorkerProcess
    call: Call
    at: float


def interrupt_mid_call(
    fleet: Fleet,
    connection: redis.Redis,
    job_id: str,
    calls: Callable[[], list[Call]],
    call_label: str,
    *,
    into: float,
    middle: str,
    sig: int,
) -> Interrupted:
    """Once ``job_id`` runs and its first of ``calls`` is ``into`` seconds in, with the
    email's lease held, send ``sig`` to every process of the worker running it."""
    logs = fleet.logs()
    running = wait_until(lambda: worker_running(connection, job_id), 20, "the job to start", logs)
    victim = fleet.by_pid(running.pid)
    assert victim is not None
    call = wait_until(calls, 20, call_label, logs)[0]
    wait_until(lambda: now() - call.arrived >= into, 2, middle)
    assert connection.exists(lock_key(EMAIL)), "the job does not hold the email's lease"
    at = now()
    victim.signal_dyno(sig)
    return Interrupted(running, victim, call, at)


def describe(job: Job) -> str:
    """What RQ knows of a job's runs, for the printed report."""
    results = [r.type.name for r in job.results()]
    return (
        f"status={job.get_status(refresh=False)} worker={job.worker_name} "
        f"recoveries={job.meta.get('recoveries', 0)} retries_left={job.retries_left} "
        f"results={results}"
    )


# -- 1. SIGKILL of one of several workers mid-job -----------------------------------------


def test_job_of_a_sigkilled_worker_runs_again_and_finishes_within_a_minute(
    web: FlaskClient,
    redis_conn: redis.Redis,
    redis_url: str,
    sandbox_factory: SandboxFactory,
    fleets: FleetFactory,
) -> None:
    slow = sandbox_factory(latency=2.5)  # every Sotion call takes 2.5 s: the kill lands mid-call
    traffic = watch(slow)
    fleet = fleets(redis_url, slow)
    start_workers(fleet, redis_conn, 3)
    logs = fleet.logs()

    job_id = deliver(web, purchase(EMAIL, "kill"))
    # Kill while the member's creation is in flight, with the email's lease held.
    running, victim, create, killed_at = interrupt_mid_call(
        fleet,
        redis_conn,
        job_id,
        traffic.creates,
        "the job's create call",
        into=0.8,
        middle="the middle of the create call",
        sig=signal.SIGKILL,
    )
    assert victim.wait(10) == -signal.SIGKILL
    assert create.in_flight_at(killed_at)
    assert status(redis_conn, job_id) == JobStatus.STARTED  # nobody will finish the dead run
    survivors = [worker for worker in fleet.workers if worker is not victim]

    rerun: list[float] = []

    def finished() -> bool:
        if not rerun:
            runner = worker_running(redis_conn, job_id)  # the dead worker's entry lingers
            if runner is not None and runner.pid != victim.pid:
                rerun.append(now() - killed_at)
        return status(redis_conn, job_id) == JobStatus.FINISHED

    try:
        wait_until(finished, RECOVERY_LIMIT_SECONDS, "the killed job to run again and finish", logs)
    finally:  # the figures, also when the recovery is too slow
        recovery = now() - killed_at
        job = fetch(redis_conn, job_id)
        members = members_with(slow, EMAIL)
        crashes = sum(w.output().count("found an unhandled exception") for w in survivors)
        say(
            f"\n[sigkill] workers=3 events_sent=1 faults=SIGKILL of worker pid={victim.pid} "
            f"mid-create, lease held; re-run started "
            f"{f'{rerun[0]:.1f} s' if rerun else 'never'} after the kill; "
            f"{'finished' if job.get_status(refresh=False) == JobStatus.FINISHED else 'waited'} "
            f"{recovery:.1f} s after it (limit {RECOVERY_LIMIT_SECONDS} s); "
            f"applied={len(members)} creates={len(traffic.creates())}; "
            f"survivors' work-loop crashes={crashes}; job {describe(job)}"
        )
    assert all(worker.alive() for worker in survivors), "a surviving worker died"
    assert job.worker_name != running.worker_name  # a live worker ran it
    assert len(members) == 1 and members[0]["paid"] is True
    assert len(traffic.creates()) == 1  # the re-run found the member the dead run created
    assert job.meta.get("recoveries") == 1


# -- 2. SIGTERM of a worker mid-job --------------------------------------------------------


def test_sigterm_mid_job_stops_the_worker_within_30_s_and_the_job_finishes_elsewhere(
    web: FlaskClient,
    redis_conn: redis.Redis,
    redis_url: str,
    sandbox_factory: SandboxFactory,
    fleets: FleetFactory,
) -> None:
    # The job's first Sotion call (whichever it is) hangs for longer than the shutdown
    # grace: it is interrupted and must go straight back on the queue.
    slow = sandbox_factory(latency=0.5, hang_seconds=SHUTDOWN_GRACE_SECONDS + 15)
    traffic = watch(slow)
    fleet = fleets(redis_url, slow, SOTION_TIMEOUT="3,60")  # the hang is no read timeout
    start_workers(fleet, redis_conn, 2)  # each has checked the key (GET /site) by now
    slow.faults.inject("hang", count=1)
    logs = fleet.logs()

    job_id = deliver(web, purchase(EMAIL, "term"))
    running, victim, first_call, stopped_at = interrupt_mid_call(
        fleet,
        redis_conn,
        job_id,
        traffic.calls,
        "the job's first call",
        into=0.5,
        middle="the middle of the first call",
        sig=signal.SIGTERM,  # what Heroku sends every process of a dyno
    )
    other = next(worker for worker in fleet.workers if worker is not victim)
    code = victim.wait(STOP_LIMIT_SECONDS + 5)
    exit_time = now() - stopped_at
    assert first_call.in_flight_at(stopped_at + SHUTDOWN_GRACE_SECONDS - 1)

    wait_until(
        lambda: status(redis_conn, job_id) == JobStatus.FINISHED,
        30,
        "the interrupted job to finish on the other worker",
        logs,
    )
    done = now() - stopped_at
    job = fetch(redis_conn, job_id)
    members = members_with(slow, EMAIL)
    say(
        f"\n[sigterm, job longer than the grace] events_sent=1 faults=SIGTERM to worker "
        f"pid={victim.pid} mid-call; worker exited with {code} "
        f"{exit_time:.1f} s after SIGTERM (limit {STOP_LIMIT_SECONDS} s); job finished on the "
        f"other worker {done:.1f} s after SIGTERM; creates={len(traffic.creates())} "
        f"members={len(members)}; job {describe(job)}"
    )
    assert code is not None and exit_time < STOP_LIMIT_SECONDS, "the worker did not exit"
    assert code == 0, victim.output()[-3000:]
    assert other.alive()
    assert job.worker_name != running.worker_name
    assert len(members) == 1 and members[0]["paid"] is True
    # One member made (a hung create, if that was the first call, answers 409 later).
    assert len([call for call in traffic.creates() if call.status == 201]) == 1
    # Put back at once, without waiting on the retry schedule or using up a retry.
    assert job.retries_left == RETRY_ATTEMPTS
    assert done < exit_time + 10


def test_sigterm_during_a_short_job_lets_it_finish_then_the_worker_exits_cleanly(
    web: FlaskClient,
    redis_conn: redis.Redis,
    redis_url: str,
    sandbox_factory: SandboxFactory,
    fleets: FleetFactory,
) -> None:
    slow = sandbox_factory(latency=1.0)  # the job takes about 2 s, well within the grace
    traffic = watch(slow)
    fleet = fleets(redis_url, slow)
    (worker,) = start_workers(fleet, redis_conn, 1)

    job_id = deliver(web, purchase(EMAIL, "short"))
    running = wait_until(
        lambda: worker_running(redis_conn, job_id), 20, "the job to start", fleet.logs()
    )
    first_call = wait_until(traffic.calls, 20, "the job's first call", fleet.logs())[0]
    wait_until(lambda: now() - first_call.arrived >= 0.3, 2, "the middle of the first call")
    stopped_at = now()
    worker.signal_dyno(signal.SIGTERM)
    code = worker.wait(STOP_LIMIT_SECONDS + 5)
    exit_time = now() - stopped_at

    job = fetch(redis_conn, job_id)
    members = members_with(slow, EMAIL)
    result = job.latest_result()
    say(
        f"\n[sigterm, job within the grace] events_sent=1 faults=SIGTERM to worker "
        f"pid={worker.pid} mid-call; worker exited with {code} "
        f"{exit_time:.1f} s after SIGTERM; members={len(members)}; job {describe(job)}"
    )
    assert code == 0, worker.output()[-3000:]
    assert exit_time < SHUTDOWN_GRACE_SECONDS  # it finished the job, nothing was interrupted
    assert job.get_status(refresh=False) == JobStatus.FINISHED
    assert result is not None and result.worker_name == running.worker_name
    assert job.retries_left == RETRY_ATTEMPTS
    assert len(members) == 1 and members[0]["paid"] is True
    assert len(traffic.creates()) == 1


# -- 3. Redis restart --------------------------------------------------------------------


def test_worker_survives_a_redis_restart_and_every_event_is_applied_once(
    settings: Settings,
    sandbox_factory: SandboxFactory,
    fleets: FleetFactory,
    tmp_path: Path,
) -> None:
    events = 20
    data = tmp_path / "redis-data"
    server = EmbeddedRedis(data, persistent=True).start()
    sandbox = sandbox_factory(latency=0.3)  # about 0.6 s a job: one runs during the stop
    traffic = watch(sandbox)
    fleet = fleets(server.url, sandbox)
    connection = redis.Redis.from_url(server.url, socket_connect_timeout=1)
    restarted: EmbeddedRedis | None = None
    try:
        own = dataclasses.replace(
            settings,
            redis_url=server.url,
            retry_attempts=RETRY_ATTEMPTS,
            retry_base_seconds=RETRY_BASE_SECONDS,
        )
        client = create_app(own).test_client()
        (worker,) = start_workers(fleet, connection, 1)
        emails = [f"restart{n:02d}@example.com" for n in range(events)]
        jobs = [
            deliver(client, purchase(email, f"restart{n:02d}")) for n, email in enumerate(emails)
        ]
        before = len(jobs)
        # Stop Redis while the worker is in the middle of the queue and of a job.
        wait_until(
            lambda: (
                len(sandbox.state.members_snapshot()) >= 3
                and any(call.answered is None for call in traffic.calls())
            ),
            30,
            "a few members and a job in the middle of a Sotion call",
            fleet.logs(),
        )
        applied_before = len(sandbox.state.members_snapshot())
        stopped_at = now()
        server.stop()  # SIGTERM: Redis writes its append-only file and exits
        in_flight = [call for call in traffic.calls() if call.in_flight_at(stopped_at)]
        time.sleep(REDIS_DOWN_SECONDS)  # a restart takes a moment; the job's call returns
        restarted = EmbeddedRedis(data, port=server.port, persistent=True).start()
        downtime = now() - stopped_at
        queued_after = len(bridge_queue(connection))
        # More events once Redis is back (the web side reconnects too).
        more = [f"late{n:02d}@example.com" for n in range(events // 2)]
        jobs += [deliver(client, purchase(email, f"late{n:02d}")) for n, email in enumerate(more)]
        emails += more

        def paid() -> int:
            snapshot = sandbox.state.members_snapshot()
            return sum(1 for m in snapshot if m["email"] in emails and m["paid"])

        def all_paid() -> bool:
            if not worker.alive():
                pytest.fail(
                    f"the worker died on the Redis restart (exit code {worker.popen.returncode},"
                    f" Redis down {downtime:.1f} s)\n{worker.output()[-5000:]}"
                )
            return paid() == len(emails)

        def all_finished() -> bool:
            return all(status(connection, job) == JobStatus.FINISHED for job in jobs)

        try:
            wait_until(all_paid, 60, f"all {len(emails)} members", fleet.logs())
            wait_until(all_finished, 30, "every job to be marked finished", fleet.logs())
        finally:  # the figures, also when something was lost or the worker died
            elapsed = now() - stopped_at
            snapshot = sandbox.state.members_snapshot()
            counts = {email: sum(1 for m in snapshot if m["email"] == email) for email in emails}
            found = [fetch(connection, job) for job in jobs if status(connection, job)]
            done = [job for job in found if job.get_status(refresh=False) == JobStatus.FINISHED]
            say(
                f"\n[redis restart] events_sent={len(jobs)} ({before} before the stop, "
                f"{len(more)} after) applied={paid()} (before the stop: {applied_before}) "
                f"queued_after_restart={queued_after} redis_down={downtime:.1f} s "
                f"calls_in_flight_at_stop={len(in_flight)}; waited {elapsed:.1f} s after the "
                f"stop; creates={len(traffic.creates())} "
                f"re-queued={sum(job.meta.get('recoveries', 0) for job in found)} "
                f"retried={sum(RETRY_ATTEMPTS - (job.retries_left or 0) for job in found)} "
                f"finished={len(done)} "
                f"work_loop_restarts={worker.output().count('starting it again')} "
                f"worker_alive={worker.alive()}"
            )
        assert in_flight, "the stop did not land mid-job"
        assert worker.alive(), "the worker died on the Redis restart"
        assert set(counts.values()) == {1}, counts
        assert len(traffic.creates()) == len(emails)
    finally:
        fleet.stop_all()
        connection.close()
        server.stop()
        if restarted is not None:
            restarted.stop()


# -- 4. the email lease of a killed job ---------------------------------------------------


def test_lease_held_by_a_sigkilled_job_frees_the_email_for_its_next_job_within_seconds(
    web: FlaskClient,
    redis_conn: redis.Redis,
    redis_url: str,
    sandbox_factory: SandboxFactory,
    fleets: FleetFactory,
) -> None:
    slow = sandbox_factory(latency=1.0)
    traffic = watch(slow)
    fleet = fleets(redis_url, slow)
    start_workers(fleet, redis_conn, 2)
    logs = fleet.logs()

    first = deliver(web, purchase(EMAIL, "first"))
    _, victim, _, killed_at = interrupt_mid_call(
        fleet,
        redis_conn,
        first,
        traffic.creates,
        "the first job's create call",
        into=0.3,
        middle="the middle of the create call",
        sig=signal.SIGKILL,
    )
    assert victim.wait(10) == -signal.SIGKILL
    lease_left = redis_conn.pttl(lock_key(EMAIL)) / 1000

    second = deliver(web, purchase(EMAIL, "second"))  # another purchase by the same buyer
    wait_until(
        lambda: status(redis_conn, second) == JobStatus.FINISHED,
        LOCK_TIMEOUT_SECONDS + 10,
        "the second job of the email",
        logs,
    )
    applied = now() - killed_at
    job = fetch(redis_conn, second)
    members = members_with(slow, EMAIL)
    ledger = Store(redis_conn).entitlements(EMAIL)
    say(
        f"\n[lease of a killed job] events_sent=2 faults=SIGKILL of worker pid={victim.pid} "
        f"holding the email's lease ({lease_left:.1f} s of it left); "
        f"the second event of the email was applied {applied:.1f} s after the kill "
        f"(lease {LOCK_TIMEOUT_SECONDS} s, old lock 120 s); members={len(members)} "
        f"creates={len(traffic.creates())}; second job {describe(job)}"
    )
    assert applied <= LOCK_TIMEOUT_SECONDS + 5
    assert job.retries_left == RETRY_ATTEMPTS  # it waited for the lease, no retry needed
    assert len(members) == 1 and members[0]["paid"] is True
    assert len(traffic.creates()) == 1
    assert set(ledger) == {"stripe:pi_first", "stripe:pi_second"}


# -- 5. the worker model ------------------------------------------------------------------


def test_job_stuck_past_its_timeout_makes_its_worker_exit_and_runs_again_elsewhere(
    redis_conn: redis.Redis,
    redis_url: str,
    sotion: SandboxServer,
    fleets: FleetFactory,
) -> None:
    fleet = fleets(redis_url, sotion)
    start_workers(fleet, redis_conn, 2)
    logs = fleet.logs()
    # It swallows the JobTimeoutException of its 1 s timeout and goes on (first run only).
    job_id = (
        bridge_queue(redis_conn)
        .enqueue(f"{PROBES}.swallow_timeout_first_run", "stuck", job_timeout=1)
        .id
    )

    running = wait_until(lambda: worker_running(redis_conn, job_id), 20, "the job to start", logs)
    started_at = now()
    victim = fleet.by_pid(running.pid)
    assert victim is not None
    survivor = next(worker for worker in fleet.workers if worker is not victim)
    code = victim.wait(1 + STUCK_JOB_GRACE_SECONDS + HEARTBEAT_SECONDS + 10)
    exited = now() - started_at
    try:
        wait_until(
            lambda: status(redis_conn, job_id) == JobStatus.FINISHED,
            RECOVERY_LIMIT_SECONDS,
            "the stuck job to run again and finish",
            logs,
        )
    finally:
        done = now() - started_at
        job = fetch(redis_conn, job_id)
        say(
            f"\n[stuck job] workers=2 job_timeout=1 s grace={STUCK_JOB_GRACE_SECONDS} s; the "
            f"worker running it exited with {code} {exited:.1f} s after the job started; the "
            f"job finished {done:.1f} s after it started (limit {RECOVERY_LIMIT_SECONDS} s "
            f"after the exit); job {describe(job)}"
        )
    assert code == STUCK_JOB_EXIT_CODE, victim.output()[-3000:]
    # It was given its timeout and the grace (measured from when this test saw the job
    # running, which is up to a poll after it started: hence the second of slack).
    assert exited >= 1 + STUCK_JOB_GRACE_SECONDS - 1
    assert "past its timeout" in victim.output()
    assert redis_conn.get("stuck:timeouts") == b"1"  # the timeout did reach the job
    assert job.meta.get("recoveries") == 1
    result = job.latest_result()
    assert result is not None and result.worker_name != running.worker_name
    assert result.return_value == 2  # its second run
    assert survivor.alive()
    # Nothing of the dead worker lives on (its scheduler stopped with it).
    survivors = {survivor.pid, *children(survivor.pid)}
    assert [pid for pid in marked_pids(fleet.marker) if pid not in survivors] == []


def test_consecutive_jobs_run_in_the_worker_process_on_one_redis_connection_and_one_session(
    web: FlaskClient,
    redis_conn: redis.Redis,
    redis_url: str,
    sotion: SandboxServer,
    fleets: FleetFactory,
) -> None:
    fleet = fleets(redis_url, sotion)
    (worker,) = start_workers(fleet, redis_conn, 1)
    queue = bridge_queue(redis_conn)

    def finish(job_id: str) -> Job:
        wait_until(
            lambda: status(redis_conn, job_id) == JobStatus.FINISHED,
            20,
            "the job to finish",
            fleet.logs(),
        )
        return fetch(redis_conn, job_id)

    def report() -> dict[str, Any]:
        result = finish(queue.enqueue(f"{PROBES}.report_process").id).latest_result()
        assert result is not None
        answer: dict[str, Any] = result.return_value
        return answer

    first = report()
    finish(deliver(web, purchase(EMAIL, "warmup")))  # the web side's connection is open too
    opened_before = redis_conn.info("stats")["total_connections_received"]
    reports = []
    for n in range(5):
        finish(deliver(web, purchase(f"buyer{n}@example.com", f"reuse{n}")))
        reports.append(report())
    opened = redis_conn.info("stats")["total_connections_received"] - opened_before

    say(
        f"\n[one process, one connection] jobs=12 worker pid={worker.pid}; job pids="
        f"{sorted({r['pid'] for r in [first, *reports]})}; Redis connections opened during "
        f"10 jobs={opened}; Redis client ids={sorted({r['redis_client_id'] for r in reports})}; "
        f"session jobs={[r['session_jobs'] for r in [first, *reports]]}"
    )
    assert first["preloaded"] is True  # the job modules were imported before the first job
    assert {r["pid"] for r in [first, *reports]} == {worker.pid}  # no work horse
    assert opened == 0  # every job used the connections the worker already had
    assert len({r["redis_client_id"] for r in [first, *reports]}) == 1
    # One requests.Session object served every job (the sandbox closes each HTTP
    # connection, as Werkzeug does, so the reuse of a TCP connection shows only against
    # a server that keeps it alive, like Sotion's).
    assert [r["session_jobs"] for r in [first, *reports]] == [1, 2, 3, 4, 5, 6]
    assert len(members_with(sotion, "buyer4@example.com")) == 1
