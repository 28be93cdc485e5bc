"""BRIDGE_DRY_RUN end to end: signed webhooks go through intake, the queue and the job,
the ledger records the payment, and the Sotion writes the job would make are counted and
named in its result instead of sent. Switched off, a reconcile makes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue

from bridge.app import create_app
from bridge.intake import Intake
from bridge.metrics import METRICS_KEY, field
from bridge.sandbox import SandboxServer
from bridge.settings import Settings, retry_policy
from bridge.sotion import SotionClient
from tests.conftest import drain
from tests.reconcile.scripted import ScriptedSource
from tests.test_check_command import RunCheck, output_of, run_check  # noqa: F401
from tests.test_stripe_flow import (
    EMAIL,
    T0,
    actions_of,
    charge,
    checkout_payment,
    deliver,
    member_of,
    record_requests,
)
from workers import runtime as worker_runtime
from workers.dry_run import DRY_RUN_COUNTER
from workers.reconcile import Reconciler
from workers.records import MemberRecord

WRITES = ("POST", "PATCH", "PUT", "DELETE")


@pytest.fixture
def dry_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, dry_run=True)


@pytest.fixture
def dry_client(dry_settings: Settings, redis_conn: redis.Redis) -> FlaskClient:
    return create_app(dry_settings).test_client()


def configured(settings: Settings, connection: redis.Redis) -> worker_runtime.Runtime:
    """Make ``settings`` the worker runtime's (what jobs run with) from now on."""
    worker_runtime.reset()
    return worker_runtime.configure(settings, connection)


@pytest.fixture
def dry_runtime(
    dry_settings: Settings, redis_conn: redis.Redis
) -> Iterator[worker_runtime.Runtime]:
    yield configured(dry_settings, redis_conn)
    worker_runtime.reset()


def unsent(connection: redis.Redis, action: str) -> int:
    """The dry-run counter of one kind of call."""
    value = connection.hget(METRICS_KEY, field(DRY_RUN_COUNTER, action=action))
    return int(value) if value is not None else 0


def reconciler(runtime: worker_runtime.Runtime, queue: Queue, settings: Settings) -> Reconciler:
    """A reconcile over a Stripe listing with nothing new: it only repairs members."""
    return Reconciler(
        runtime.store,
        runtime.applier,
        runtime.sotion,
        Intake(queue, retry_policy(settings)),
        {"stripe": ScriptedSource([[]])},
        always_dry=settings.dry_run,
    )


def test_a_purchase_in_dry_run_is_recorded_and_no_sotion_write_is_sent(
    dry_client: FlaskClient,
    queue: Queue,
    dry_runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    requests = record_requests(sotion)

    event_id = deliver(dry_client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    assert actions_of(queue, event_id) == ["dry-run:create:paid=True"]
    assert [verb for verb, _, _ in requests.calls if verb in WRITES] == []
    assert sotion_api.find_member_by_email(EMAIL) is None
    assert unsent(redis_conn, "create") == 1
    entitlements, record = dry_runtime.store.member_state(EMAIL)
    assert [e.key for e in entitlements.values()] == ["stripe:pi_flow_1"]
    assert record == MemberRecord()  # nothing was written, so nothing is claimed


def test_a_refund_in_dry_run_leaves_the_member_paid_and_counts_the_patch(
    client: FlaskClient,
    dry_client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    dry_settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    before = runtime.store.member_record(EMAIL)
    assert member_of(sotion_api).paid is True and before.bridge_paid

    dry = configured(dry_settings, redis_conn)
    event_id = deliver(dry_client, "charge.refunded", charge(refunded_amount=1500), created=T0 + 9)
    drain(queue)

    assert actions_of(queue, event_id) == ["dry-run:patch:paid=False"]
    assert member_of(sotion_api).paid is True
    assert unsent(redis_conn, "patch") == 1
    assert dry.store.member_record(EMAIL) == before


def test_switched_off_a_reconcile_makes_the_writes_the_dry_run_held_back(
    dry_client: FlaskClient,
    queue: Queue,
    dry_runtime: worker_runtime.Runtime,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    deliver(dry_client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    assert sotion_api.find_member_by_email(EMAIL) is None

    live = configured(settings, redis_conn)
    report = reconciler(live, queue, settings).reconcile(["stripe"])

    assert report.dry_run is False
    assert [change.actions for change in report.sync.changes] == [["create:paid=True"]]
    assert member_of(sotion_api).paid is True


def test_under_dry_run_every_reconcile_is_dry_whatever_it_is_asked(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    dry_settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    member = member_of(sotion_api)
    sotion_api.update_member(member.id, paid=False)  # drift made by hand

    dry = configured(dry_settings, redis_conn)
    forced = reconciler(dry, queue, dry_settings)
    report = forced.reconcile(["stripe"], dry_run=False)

    assert report.dry_run is True
    assert [change.actions for change in report.sync.changes] == [["patch:paid=True"]]
    assert sotion_api.get_member(member.id).paid is False
    assert unsent(redis_conn, "patch") == 1
    assert forced.last_run("stripe") is None  # a dry run is not a reconcile done


def test_check_says_dry_run_is_on(run_check: RunCheck) -> None:  # noqa: F811
    result = run_check(BRIDGE_DRY_RUN="true")

    assert result.returncode == 0, output_of(result)
    assert "dry run: on (BRIDGE_DRY_RUN: Sotion writes are not sent)" in output_of(result)


def test_a_malformed_dry_run_value_is_refused_naming_the_variable(
    run_check: RunCheck,  # noqa: F811
) -> None:
    result = run_check(BRIDGE_DRY_RUN="perhaps")

    assert result.returncode != 0
    assert "BRIDGE_DRY_RUN" in output_of(result)
    assert "Traceback" not in output_of(result)
