"""The status report (bridge/status.py) read from a real Redis after real jobs ran: workers,
queue depths, retries, failures, parked events, the rate budget, the last event of each
provider and what became of its job, reconciles, the dry-run counter, and the verdict."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.suspension import suspend

from bridge import admin
from bridge.app import create_app
from bridge.embedded import free_port
from bridge.intake_script import LAST_EVENT_KEY
from bridge.queues import RECONCILE_JOB
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import RateLimit, SotionClient
from bridge.status import status_report
from bridge.status_model import UNKNOWN, StatusReport
from tests.conftest import drain, registered_worker
from tests.reconcile.scripted import ScriptedSource, observed
from tests.stripe_events import event
from tests.test_stripe_flow import (
    EMAIL,
    T0,
    checkout_payment,
    deliver,
    job_of,
    member_of,
    post,
    subscription,
)
from workers import runtime as worker_runtime
from workers.budget import SharedBudget
from workers.parking import PARKED_JOB_PREFIX
from workers.reconcile import RUN_LOCK_KEY
from workers.schedule import ensure_scheduled


def purchase(client: FlaskClient, queue: Queue, email: str = EMAIL) -> str:
    """A paid Stripe checkout delivered (the intake records it as Stripe's last event);
    its job id."""
    event_id = deliver(client, "checkout.session.completed", checkout_payment(email), created=T0)
    return job_of(queue, event_id).id


def report_of(queue: Queue, settings: Settings, **later: float) -> StatusReport:
    return status_report(queue.connection, settings, datetime.now(UTC) + timedelta(**later))


@pytest.fixture
def worker(queue: Queue) -> Iterator[SimpleWorker]:
    """An RQ worker registered on the bridge's queue (as a running one is), idle."""
    with registered_worker(queue, "status-worker") as registered:
        yield registered


def test_empty_redis_reports_no_worker_as_the_only_problem(
    queue: Queue, settings: Settings
) -> None:
    report = report_of(queue, settings)
    assert not report.healthy
    assert [p.code for p in report.problems] == ["no_worker"]
    assert report.workers == ()
    assert report.queue is not None
    assert (report.queue.queued, report.queue.failed, report.queue.parked) == (0, 0, 0)
    assert report.queue.scheduled_retries == 0 and report.queue.next_retry_at is None
    assert report.budget is not None and not report.budget.known
    # The last-event hash does not exist yet: no provider has a last event.
    assert [(p.name, p.enabled, p.last_event) for p in report.providers] == [
        ("stripe", True, None),
        ("lemonsqueezy", False, None),
        ("gumroad", False, None),
    ]
    assert all(p.last_reconcile_at is None for p in report.providers)
    assert report.dry_run.on is False and report.dry_run.writes == 0


def test_registered_worker_is_alive_with_its_state_and_heartbeat_age(
    queue: Queue, settings: Settings, worker: SimpleWorker
) -> None:
    report = report_of(queue, settings, seconds=5)
    assert report.healthy and report.problems == ()
    (alive,) = report.workers
    assert (alive.name, alive.state, alive.current_job) == ("status-worker", "idle", None)
    assert alive.pid == worker.pid
    assert alive.heartbeat_age_seconds is not None and 4 <= alive.heartbeat_age_seconds <= 8


def test_applied_purchase_is_the_providers_last_event(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion_api: SotionClient,
) -> None:
    job_id = purchase(client, queue)
    queued = report_of(queue, settings)
    assert queued.queue is not None and queued.queue.queued == 1
    stripe = queued.providers[0].last_event
    assert stripe is not None and (stripe.job_id, stripe.outcome) == (job_id, admin.QUEUED)

    drain(queue)
    assert member_of(sotion_api).paid
    report = report_of(queue, settings)
    stripe = report.providers[0].last_event
    assert stripe is not None
    assert (stripe.job_id, stripe.outcome, stripe.reason) == (job_id, admin.APPLIED, None)
    assert stripe.received_at is not None
    assert abs(stripe.received_at.timestamp() - time.time()) < 30
    assert report.queue is not None and report.queue.queued == 0


def test_job_waiting_for_its_retry_is_counted_with_its_due_time(
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion: SandboxServer,
) -> None:
    # Retries a minute apart (the intake gives each job its waits).
    patient = create_app(dataclasses.replace(settings, retry_base_seconds=60)).test_client()
    sotion.faults.inject("503", count=1)
    before = time.time()
    job_id = purchase(patient, queue)
    drain(queue)

    report = report_of(queue, settings)
    assert report.queue is not None and report.queue.scheduled_retries == 1
    due = report.queue.next_retry_at
    assert due is not None and before + 29 <= due.timestamp() <= time.time() + 61
    stripe = report.providers[0].last_event
    assert stripe is not None
    assert (stripe.job_id, stripe.outcome, stripe.next_attempt_at) == (
        job_id,
        admin.RETRYING,
        due,
    )
    # A retry is no failure: the verdict only misses a worker.
    assert [p.code for p in report.problems] == ["no_worker"]


def test_job_put_back_at_once_after_a_failure_is_retrying(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion: SandboxServer,
) -> None:
    sotion.faults.inject("503", count=1)
    job_id = purchase(client, queue)
    drain(queue, max_jobs=1)  # fails; retries without waiting (the settings' base is 0 s)

    report = report_of(queue, settings)
    stripe = report.providers[0].last_event
    assert stripe is not None and (stripe.job_id, stripe.outcome) == (job_id, admin.RETRYING)
    assert report.queue is not None and report.queue.queued == 1


def test_failed_job_is_counted_and_named_with_its_reason(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    worker: SimpleWorker,
) -> None:
    worker_runtime.configure(dataclasses.replace(settings, sotion_api_key="so_wrong"), redis_conn)
    job_id = purchase(client, queue)
    drain(queue)  # Sotion answers 401: failed at once, for good

    report = report_of(queue, settings)
    assert not report.healthy
    assert [p.code for p in report.problems] == ["failed_jobs"]
    assert report.problems[0].message == "1 failed job(s): see `bridge jobs failed`"
    assert report.queue is not None and report.queue.failed == 1
    stripe = report.providers[0].last_event
    assert stripe is not None
    assert stripe.job_id == job_id and stripe.outcome == admin.FAILED
    assert stripe.reason is not None and "AuthError" in stripe.reason
    assert "status=401" in stripe.reason


def test_parked_event_is_counted_and_followed_to_its_parked_job(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    worker: SimpleWorker,
) -> None:
    # A subscription nobody can tie to an email yet (no STRIPE_API_KEY): parked.
    payload = event("customer.subscription.created", subscription(), created=T0)
    assert post(client, payload)["queued"] == 1
    job_id = job_of(queue, str(payload["id"])).id
    drain(queue)

    report = report_of(queue, settings)
    assert [p.code for p in report.problems] == ["parked_jobs"]
    assert report.queue is not None
    assert (report.queue.parked, report.queue.scheduled_retries) == (1, 0)
    stripe = report.providers[0].last_event
    assert stripe is not None and stripe.job_id == job_id
    assert stripe.outcome == admin.PARKED
    assert stripe.followed_job is not None and stripe.followed_job.startswith(PARKED_JOB_PREFIX)
    deadline = time.time() + settings.park_hours * 3600
    assert stripe.next_attempt_at is not None
    assert abs(stripe.next_attempt_at.timestamp() - deadline) < 60


def test_shared_budget_is_read_as_the_workers_keep_it(
    queue: Queue, redis_conn: redis.Redis, settings: Settings, worker: SimpleWorker
) -> None:
    budget = SharedBudget(redis_conn)
    reset = time.time() + 40
    budget.record(RateLimit(limit=60, remaining=12, reset_at=reset))
    report = report_of(queue, settings)
    assert report.budget is not None and report.healthy
    assert (report.budget.remaining, report.budget.limit, report.budget.exhausted) == (
        12,
        60,
        False,
    )
    assert report.budget.reset_at is not None
    assert report.budget.reset_at.timestamp() == int(reset)

    budget.record(RateLimit(limit=60, remaining=0, reset_at=reset))  # the window is spent
    spent = report_of(queue, settings)
    assert spent.budget is not None and spent.budget.exhausted
    assert [p.code for p in spent.problems] == ["budget_exhausted"]

    over = report_of(queue, settings, seconds=60)  # once the window is over, it is not
    assert over.budget is not None and not over.budget.exhausted
    assert (over.budget.remaining, over.budget.reset_at) == (60, None)
    assert over.healthy


def test_reconciles_show_when_each_provider_was_last_read_and_the_counters(
    queue: Queue, runtime: worker_runtime.Runtime, settings: Settings, sotion_api: SotionClient
) -> None:
    runtime.reconciler.sources["stripe"] = ScriptedSource([[observed("r@example.com", "sub_r")]])
    started = time.time()
    runtime.reconciler.reconcile(["stripe"])
    queue.enqueue(RECONCILE_JOB)  # a scheduled run, as the worker's schedule starts it
    drain(queue)
    ensure_scheduled(queue, settings.reconcile_interval_minutes)

    report = report_of(queue, settings)
    stripe, lemonsqueezy, gumroad = report.providers
    assert stripe.last_reconcile_at is not None
    assert started - 1 <= stripe.last_reconcile_at.timestamp() <= time.time()
    assert lemonsqueezy.last_reconcile_at is None and gumroad.last_reconcile_at is None
    reconcile = report.reconcile
    assert reconcile is not None
    assert (reconcile.runs_done, reconcile.runs_failed, reconcile.running) == (1, 0, False)
    assert reconcile.next_at is not None
    assert abs(reconcile.next_at.timestamp() - (time.time() + 3600)) < 60
    assert reconcile.last is not None  # the scheduled run, which found nothing new
    assert (reconcile.last.kind, reconcile.last.dry_run) == ("reconcile", False)
    assert (reconcile.last.members, reconcile.last.changed, reconcile.last.failures) == (1, 0, 0)
    assert reconcile.last.started_at is not None
    assert started <= reconcile.last.started_at.timestamp() <= time.time()
    # The scheduled run waits in RQ's scheduler, and is no retry.
    assert report.queue is not None and report.queue.scheduled_retries == 0

    queue.connection.set(RUN_LOCK_KEY, "a run", px=10_000)
    running = report_of(queue, settings).reconcile
    assert running is not None and running.running


def test_dry_run_reports_the_writes_it_did_not_send(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion_api: SotionClient,
) -> None:
    dry = dataclasses.replace(settings, dry_run=True)
    worker_runtime.configure(dry, redis_conn)
    purchase(client, queue)
    drain(queue)
    assert sotion_api.find_member_by_email(EMAIL) is None

    report = report_of(queue, dry)
    assert report.dry_run.on
    assert report.dry_run.writes == 1 and dict(report.dry_run.by_action) == {"create": 1}
    stripe = report.providers[0].last_event
    assert stripe is not None and stripe.outcome == admin.APPLIED
    assert report_of(queue, settings).dry_run.on is False  # the flag is the settings'


def test_last_event_whose_job_is_gone_is_expired_and_a_garbled_one_unknown(
    queue: Queue, settings: Settings
) -> None:
    queue.connection.hset(LAST_EVENT_KEY, "lemonsqueezy", f"lemonsqueezy-gone|{T0}")
    queue.connection.hset(LAST_EVENT_KEY, "gumroad", "not the documented format")
    _, lemonsqueezy, gumroad = report_of(queue, settings).providers
    assert lemonsqueezy.last_event is not None
    assert lemonsqueezy.last_event.outcome == admin.EXPIRED
    assert lemonsqueezy.last_event.received_at == datetime.fromtimestamp(T0, UTC)
    assert gumroad.last_event is not None
    assert (gumroad.last_event.outcome, gumroad.last_event.received_at) == (UNKNOWN, None)


def test_suspended_workers_need_attention(
    queue: Queue, settings: Settings, worker: SimpleWorker
) -> None:
    suspend(queue.connection)
    report = report_of(queue, settings)
    assert report.queue is not None and report.queue.suspended
    assert [p.code for p in report.problems] == ["suspended"]


def test_unreachable_redis_is_the_one_problem(settings: Settings) -> None:
    closed = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    report = status_report(closed, settings, datetime.now(UTC))
    assert report.redis_unreachable and not report.healthy
    assert [p.message for p in report.problems] == ["Redis is unreachable (ConnectionError)"]
    assert report.queue is None and report.workers == ()
    assert [p.name for p in report.providers] == ["stripe", "lemonsqueezy", "gumroad"]
