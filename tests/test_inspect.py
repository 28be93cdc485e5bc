"""The report on one buyer: ledger, events and their jobs, the live member, the verdict."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import requests
from flask.testing import FlaskClient
from rq import Queue

from bridge import admin
from bridge.embedded import free_port
from bridge.inspect import EntitlementView, SotionMember, SotionView, member_report
from bridge.intake_script import member_events_key
from bridge.membership import DesiredMember
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import SotionClient
from bridge.verdict import grants, verdict
from bridge.web import EXPLAIN_HEADER
from tests import lemonsqueezy_events as ls
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET, drain
from workers import runtime as worker_runtime

LS_SECRET = "ls_secret_inspect"
T0 = 1_760_000_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with Lemon Squeezy configured beside Stripe."""
    return dataclasses.replace(settings, lemonsqueezy_webhook_secrets=(LS_SECRET,))


# -- deliveries through the signed builders ----------------------------------------------


def stripe_purchase(
    client: FlaskClient, email: str, *, intent: str = "pi_inspect_1", name: str = "Pat Buyer"
) -> str:
    """A paid one-time Checkout Session for ``email``; returns its job id."""
    obj: dict[str, Any] = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj.update(id=f"cs_{intent}", payment_intent=intent, customer=f"cus_{intent}", invoice=None)
    obj["customer_details"].update(email=email, name=name)
    return _post_stripe(client, se.event("checkout.session.completed", obj, created=T0))


def stripe_subscription(client: FlaskClient, customer: str, sub_id: str, *, created: int) -> str:
    """A subscription event naming only the customer (no email); returns its job id."""
    obj: dict[str, Any] = se.fixture("customer_subscription_created")["data"]["object"]
    obj.update(id=sub_id, customer=customer, status="active")
    for item in obj["items"]["data"]:
        item["subscription"] = sub_id
    return _post_stripe(client, se.event("customer.subscription.updated", obj, created=created))


def stripe_subscription_checkout(
    client: FlaskClient, email: str, customer: str, sub_id: str
) -> str:
    """A paid mode=subscription Checkout Session for ``email``; returns its job id."""
    obj: dict[str, Any] = se.fixture("checkout_session_completed_subscription")["data"]["object"]
    obj.update(id=f"cs_{sub_id}", subscription=sub_id, customer=customer)
    obj["customer_details"]["email"] = email
    return _post_stripe(client, se.event("checkout.session.completed", obj, created=T0))


def _post_stripe(client: FlaskClient, payload: dict[str, Any]) -> str:
    body = se.encode(payload)
    headers = {"Stripe-Signature": se.sign(body, STRIPE_SECRET), EXPLAIN_HEADER: "1"}
    response = client.post("/webhooks/stripe", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    (job_id,) = response.get_json()["jobs"]
    return str(job_id)


def ls_order(client: FlaskClient, email: str, event: str, status: str, *, at: int) -> None:
    """A Lemon Squeezy order webhook (created or refunded) for ``email``."""
    payload = ls.order(event, status, order_id="7100", email=email, updated_at=T0 + at)
    body = ls.encode(payload)
    response = client.post(
        "/webhooks/lemonsqueezy", data=body, headers=ls.headers(payload, body, LS_SECRET)
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def inject_faults(sotion: SandboxServer, kind: str, count: int, method: str) -> None:
    """Make the sandbox answer the next ``count`` ``method`` calls with ``kind``."""
    response = requests.post(
        f"{sotion.root_url}/_sandbox/faults",
        json={"kind": kind, "count": count, "method": method},
        timeout=5,
    )
    assert response.status_code == 201, response.text


def run_retry_now(queue: Queue, job_id: str) -> None:
    """Move a job waiting for its retry to the queue, as RQ's scheduler does when due."""
    job = queue.fetch_job(job_id)
    assert job is not None
    queue.scheduled_job_registry.remove(job)
    queue.enqueue_job(job)


# -- the report --------------------------------------------------------------------------


def test_a_purchase_shows_its_entitlement_its_applied_job_and_the_paid_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    job_id = stripe_purchase(client, "Paid@Example.com")
    drain(queue)

    report = member_report(redis_conn, sotion_api, settings, "paid@example.com")

    (entitlement,) = report.entitlements
    assert entitlement.key == "stripe:pi_inspect_1"
    assert entitlement.purchase == "payment pi_inspect_1"
    assert entitlement.state == "active" and entitlement.grants_access
    assert entitlement.job_id == job_id
    (job,) = report.events
    assert job.id == job_id and job.status == admin.APPLIED
    assert job.event_type == "checkout.session.completed"
    assert any(action.startswith("create") for action in job.actions)
    assert report.sotion.member is not None and report.sotion.member.paid is True
    assert report.has_access and report.known
    assert report.verdict.startswith("has access: Stripe payment pi_inspect_1 active since 20")


def test_a_refunded_order_explains_why_there_is_no_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    ls_order(client, "refunded@example.com", "order_created", "paid", at=0)
    drain(queue)
    ls_order(client, "refunded@example.com", "order_refunded", "refunded", at=60)
    drain(queue)

    report = member_report(redis_conn, sotion_api, settings, "refunded@example.com")

    assert [e.state for e in report.entitlements] == ["ended"]
    assert [job.status for job in report.events] == [admin.APPLIED, admin.APPLIED]
    assert report.events[0].event_type == "order_refunded"  # newest first
    assert report.sotion.member is not None and report.sotion.member.paid is False
    assert not report.has_access
    assert report.verdict.startswith("no access: Lemon Squeezy order 7100 refunded at 2025-10-09")


def test_an_unknown_email_is_not_known_and_says_no_event_was_received(
    settings: Settings, redis_conn: redis.Redis, sotion_api: SotionClient
) -> None:
    report = member_report(redis_conn, sotion_api, settings, "nobody@example.com")

    assert not report.known
    assert report.entitlements == () and report.events == ()
    assert report.sotion.read and report.sotion.member is None
    assert "no event received" in report.verdict
    assert "`bridge status`" in report.verdict


def test_a_job_failing_against_sotion_is_retrying_with_its_next_time_then_failed(
    client: FlaskClient,
    queue: Queue,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    slow = dataclasses.replace(settings, retry_attempts=1, retry_base_seconds=600)
    worker_runtime.configure(slow, redis_conn)
    try:
        inject_faults(sotion, "500", 10, "POST")
        client = _client_for(slow, redis_conn)
        job_id = stripe_purchase(client, "retry@example.com", intent="pi_retry")
        drain(queue)

        report = member_report(redis_conn, sotion_api, slow, "retry@example.com")
        (job,) = report.events
        assert job.status == admin.RETRYING
        assert job.next_attempt_at is not None and job.next_attempt_at.timestamp() > time.time()
        assert job.failures == 1
        assert report.has_access and report.sotion.member is None
        assert report.verdict.startswith("should have access (Stripe payment pi_retry")
        assert f"job {job_id} is retrying (next attempt 20" in report.verdict

        run_retry_now(queue, job_id)
        drain(queue)

        report = member_report(redis_conn, sotion_api, slow, "retry@example.com")
        (job,) = report.events
        assert job.status == admin.FAILED
        assert job.reason is not None and "500" in job.reason
        assert f"job {job_id} failed: " in report.verdict
        assert f"`bridge jobs replay {job_id}`" in report.verdict
    finally:
        worker_runtime.reset()


def _client_for(settings: Settings, connection: redis.Redis) -> FlaskClient:
    from bridge.app import create_app

    return create_app(settings).test_client()


def test_sotion_unreachable_or_refusing_the_key_is_one_line_in_the_report(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion: SandboxServer,
) -> None:
    stripe_purchase(client, "down@example.com")
    drain(queue)
    closed = SotionClient.connect(f"http://127.0.0.1:{free_port()}/api/v1", SANDBOX_KEY)
    refused = SotionClient.connect(sotion.url, "so_wrong_key")

    down = member_report(redis_conn, closed, settings, "down@example.com")
    denied = member_report(redis_conn, refused, settings, "down@example.com")
    unset = member_report(redis_conn, None, settings, "down@example.com")

    for report in (down, denied, unset):
        assert report.sotion.member is None and report.sotion.error is not None
        assert "\n" not in report.sotion.error
        assert report.known and report.has_access
        assert report.verdict.startswith("has access per the ledger: Stripe payment")
    assert down.sotion.error.startswith("could not be read: ")
    assert "AuthError" in (denied.sotion.error or "")
    assert "SOTION_API_KEY" in (unset.sotion.error or "")


def test_an_event_without_email_is_listed_under_its_owner_by_the_worker(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    checkout = stripe_subscription_checkout(client, "owner@example.com", "cus_owner", "sub_owner")
    drain(queue)
    update = stripe_subscription(client, "cus_owner", "sub_owner", created=T0 + 30)
    drain(queue)

    ids = [raw.decode() for raw in redis_conn.zrange(member_events_key("owner@example.com"), 0, -1)]
    assert ids == [checkout, update]
    report = member_report(redis_conn, sotion_api, settings, "owner@example.com")
    assert [job.id for job in report.events] == [update, checkout]
    assert all(job.status == admin.APPLIED for job in report.events)
    assert report.entitlements[0].key == "stripe:sub_owner"


def test_the_dry_run_is_said_where_sotion_differs(
    client: FlaskClient,
    queue: Queue,
    settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    dry = dataclasses.replace(settings, dry_run=True)
    worker_runtime.configure(dry, redis_conn)
    try:
        stripe_purchase(client, "dry@example.com")
        drain(queue)
        report = member_report(redis_conn, sotion_api, dry, "dry@example.com")
    finally:
        worker_runtime.reset()

    assert report.dry_run and report.sotion.member is None
    assert report.verdict.endswith("Dry run is on: writes are not sent (BRIDGE_DRY_RUN)")


# -- the verdict of a products rule that grants groups, not paid (pure) ---------------------


def _groups_only(member: SotionMember | None) -> str:
    entitlement = EntitlementView(
        key="stripe:sub_bonus",
        provider="stripe",
        purchase="subscription sub_bonus",
        state="active",
        since=datetime(2026, 12, 1, tzinfo=UTC),
        event_id="evt_1",
        job_id=None,
        products=("price_bonus",),
        disputes=(),
        grants_access=True,
        listed=True,
    )
    desired = DesiredMember(paid=False, blocked=False, groups=frozenset({"grp_bonus"}))
    assert grants(desired)
    return verdict([entitlement], desired, SotionView(member), [], dry_run=False)


def test_a_rule_granting_groups_only_is_access_when_sotion_has_the_group() -> None:
    inside = SotionMember("m1", False, "active", ("Bonus",), ("grp_bonus",))
    assert _groups_only(inside).startswith("has access: Stripe subscription sub_bonus active")


def test_a_missing_group_is_named_in_the_verdict() -> None:
    outside = SotionMember("m1", False, "active", (), ())
    line = _groups_only(outside)
    assert line.startswith("should have access")
    assert "outside group(s) grp_bonus" in line
