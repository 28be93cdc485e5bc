"""Stripe end to end: signed webhook → intake → RQ job → worker → Sotion sandbox.

One test per case of DESIGN §4's Stripe row, plus the ordering and duplication
guarantees of §5. Every test asserts the member as the sandbox has it at the end.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask, abort, jsonify
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import as_text
from werkzeug.serving import make_server

from bridge.admin import failed_jobs
from bridge.intake import DEDUPE_PREFIX
from bridge.metrics import METRICS_KEY
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from tests.conftest import STRIPE_SECRET, drain
from tests.stripe_events import encode, event, fixture, sign
from workers import runtime as worker_runtime
from workers.parking import parked_events

EMAIL = "buyer@example.com"
CUSTOMER = "cus_flow_1"
SUBSCRIPTION = "sub_flow_1"
PAYMENT_INTENT = "pi_flow_1"
CHARGE = "ch_flow_1"
# Stripe's `created` of the first event of each story; later events add seconds.
T0 = 1_760_000_000

JSONObject = dict[str, Any]


# -- building Stripe objects from the fixtures -------------------------------------------


def checkout_payment(
    email: str = EMAIL,
    *,
    payment_status: str = "paid",
    payment_intent: str = PAYMENT_INTENT,
    customer: str = CUSTOMER,
    invoice: str | None = None,
    name: str = "Pay Buyer",
) -> JSONObject:
    """A one-time (mode=payment) Checkout Session."""
    obj: JSONObject = fixture("checkout_session_completed_payment")["data"]["object"]
    obj.update(
        id="cs_flow_payment",
        payment_status=payment_status,
        payment_intent=payment_intent,
        customer=customer,
        invoice=invoice,
    )
    obj["customer_details"].update(email=email, name=name)
    return obj


def checkout_subscription(
    email: str = EMAIL,
    *,
    payment_status: str = "paid",
    subscription: str = SUBSCRIPTION,
    customer: str = CUSTOMER,
) -> JSONObject:
    """A mode=subscription Checkout Session."""
    obj: JSONObject = fixture("checkout_session_completed_subscription")["data"]["object"]
    obj.update(
        id="cs_flow_subscription",
        payment_status=payment_status,
        subscription=subscription,
        customer=customer,
    )
    obj["customer_details"]["email"] = email
    return obj


def subscription(
    status: str = "active",
    *,
    sub_id: str = SUBSCRIPTION,
    customer: str = CUSTOMER,
    base: str = "customer_subscription_created",
) -> JSONObject:
    """A Subscription object (from the fixture named by ``base``) with this status."""
    obj: JSONObject = fixture(base)["data"]["object"]
    obj.update(id=sub_id, customer=customer, status=status)
    for item in obj["items"]["data"]:
        item["subscription"] = sub_id
    return obj


def invoice(
    email: str = EMAIL,
    *,
    paid: bool = True,
    invoice_id: str = "in_flow_1",
    sub_id: str | None = SUBSCRIPTION,
    customer: str = CUSTOMER,
) -> JSONObject:
    """A basil-shaped Invoice (subscription under ``parent``), paid or with a failed attempt."""
    obj: JSONObject = fixture("invoice_payment_failed")["data"]["object"]
    obj.update(id=invoice_id, customer=customer, customer_email=email)
    if paid:
        obj.update(status="paid", amount_paid=obj["amount_due"], amount_remaining=0)
        obj["status_transitions"]["paid_at"] = T0
    if sub_id is None:
        obj["parent"] = None
        obj["billing_reason"] = "manual"
        for line in obj["lines"]["data"]:
            line["parent"] = None
    else:
        obj["parent"]["subscription_details"]["subscription"] = sub_id
        for line in obj["lines"]["data"]:
            line["parent"]["subscription_item_details"]["subscription"] = sub_id
    for line in obj["lines"]["data"]:
        line["invoice"] = invoice_id
    return obj


def charge(
    *,
    refunded_amount: int,
    payment_intent: str = PAYMENT_INTENT,
    customer: str = CUSTOMER,
) -> JSONObject:
    """A Charge after a refund of ``refunded_amount`` (``refunded`` only when it is all)."""
    obj: JSONObject = fixture("charge_refunded")["data"]["object"]
    obj.update(
        id=CHARGE,
        customer=customer,
        payment_intent=payment_intent,
        amount_refunded=refunded_amount,
        refunded=refunded_amount >= obj["amount_captured"],
    )
    for refund in obj["refunds"]["data"]:
        refund.update(charge=CHARGE, payment_intent=payment_intent, amount=refunded_amount)
    return obj


def dispute(
    *, status: str = "needs_response", payment_intent: str | None = PAYMENT_INTENT
) -> JSONObject:
    """A Dispute of ``CHARGE``."""
    obj: JSONObject = fixture("charge_dispute_created")["data"]["object"]
    obj.update(charge=CHARGE, payment_intent=payment_intent, status=status)
    return obj


# -- delivering and observing -----------------------------------------------------------


def post(client: FlaskClient, payload: JSONObject, *, timestamp: int | None = None) -> JSONObject:
    """POST a signed event body the way Stripe does; the bridge must accept it."""
    body = encode(payload)
    response = client.post(
        "/webhooks/stripe",
        data=body,
        headers={
            "Stripe-Signature": sign(body, STRIPE_SECRET, timestamp=timestamp),
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: JSONObject = response.get_json()
    return answer


def deliver(
    client: FlaskClient, kind: str, obj: JSONObject, *, created: int, event_id: str | None = None
) -> str:
    """Sign and POST one Stripe event of ``kind``; returns its event id."""
    payload = event(kind, obj, created=created, event_id=event_id)
    answer = post(client, payload)
    assert answer["queued"] == 1, answer
    return str(payload["id"])


def member_of(sotion_api: SotionClient, email: str = EMAIL) -> Member:
    """The member Sotion has for this email (fails when there is none)."""
    found = sotion_api.find_member_by_email(email)
    assert found is not None, f"no Sotion member for {email}"
    return found


def settle(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    *deliveries: tuple[str, JSONObject, int],
) -> Member:
    """Deliver each ``(kind, obj, created)`` in order, drain the queue, return the member."""
    for kind, obj, created in deliveries:
        deliver(client, kind, obj, created=created)
    drain(queue)
    return member_of(sotion_api)


def paid_checkout_then_dispute(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    *also: tuple[str, JSONObject, int],
) -> None:
    """A paid checkout, its dispute opened (and ``also`` delivered), drained: blocked."""
    opened = settle(
        client,
        queue,
        sotion_api,
        ("checkout.session.completed", checkout_payment(), T0),
        ("charge.dispute.created", dispute(), T0 + 100),
        *also,
    )
    assert opened.status == "blocked"


def count_members(sotion_api: SotionClient, email: str = EMAIL) -> int:
    """How many Sotion members have this email."""
    return len(sotion_api.list_members(email=email, limit=100))


def job_of(queue: Queue, event_id: str) -> Job:
    """The RQ job the intake created for a Stripe event id."""
    job_id = queue.connection.get(f"{DEDUPE_PREFIX}stripe:{event_id}")
    assert job_id is not None, f"no job for {event_id}"
    return Job.fetch(as_text(job_id), connection=queue.connection, serializer=JSONSerializer)


def actions_of(queue: Queue, event_id: str) -> list[str]:
    """The Sotion calls the job of an event made (its result's ``actions``)."""
    result = job_of(queue, event_id).return_value()
    assert isinstance(result, dict), result
    actions: list[str] = result["actions"]
    return actions


class RequestLog:
    """WSGI middleware in front of the sandbox: records every request it receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[tuple[str, str, JSONObject | None]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Record method, path and JSON body, then pass the request on."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        with self._lock:
            self.calls.append(
                (environ["REQUEST_METHOD"], environ["PATH_INFO"], json.loads(raw) if raw else None)
            )
        return self.app(environ, start_response)

    def bodies(self, method: str) -> list[JSONObject | None]:
        """The bodies of every request with this method, in order."""
        return [body for verb, _, body in self.calls if verb == method]


def record_requests(server: SandboxServer) -> RequestLog:
    """Put a RequestLog in front of a sandbox's app."""
    log = RequestLog(server.app.wsgi_app)
    server.app.wsgi_app = log  # type: ignore[method-assign]
    return log


# -- grants -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["payment", "subscription"])
def test_paid_checkout_creates_a_paid_member_with_the_customer_details_email(
    mode: str,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    session = (
        checkout_payment("Buyer@Example.COM")
        if mode == "payment"
        else checkout_subscription("Buyer@Example.COM")
    )

    deliver(client, "checkout.session.completed", session, created=T0)
    drain(queue)

    member = member_of(sotion_api, EMAIL)
    assert member.paid is True
    assert member.status == "active"
    assert count_members(sotion_api) == 1


def test_unpaid_checkout_creates_no_member_until_the_async_payment_succeeds(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(
        client,
        "checkout.session.completed",
        checkout_payment(payment_status="unpaid"),
        created=T0,
    )
    drain(queue)
    assert sotion_api.find_member_by_email(EMAIL) is None

    deliver(client, "checkout.session.async_payment_succeeded", checkout_payment(), created=T0 + 60)
    drain(queue)

    assert member_of(sotion_api).paid is True


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_subscription_that_becomes_active_grants_access_to_the_email_its_checkout_taught(
    status: str,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # The checkout names the email but does not pay yet; the subscription carries only
    # the customer id, so the email must come from what the checkout taught.
    deliver(
        client,
        "checkout.session.completed",
        checkout_subscription(payment_status="unpaid"),
        created=T0,
    )
    drain(queue)
    assert sotion_api.find_member_by_email(EMAIL) is None

    deliver(client, "customer.subscription.updated", subscription(status), created=T0 + 5)
    drain(queue)

    assert member_of(sotion_api).paid is True


def test_paid_invoice_grants_access_to_its_customer_email(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "invoice.paid", invoice(), created=T0)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.display_name == "Example Customer"


# -- keeps access -----------------------------------------------------------------------


def test_subscription_set_to_cancel_at_period_end_keeps_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    cancelling = subscription(base="customer_subscription_updated_cancel_at_period_end")
    assert cancelling["cancel_at_period_end"] is True

    deliver(client, "customer.subscription.updated", cancelling, created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is True


def test_past_due_subscription_keeps_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    deliver(client, "customer.subscription.updated", subscription("past_due"), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is True


def test_failed_invoice_payment_alone_changes_nothing(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    event_id = deliver(client, "invoice.payment_failed", invoice(paid=False), created=T0)
    drain(queue)

    assert sotion_api.find_member_by_email(EMAIL) is None
    assert actions_of(queue, event_id) == []


def test_failed_renewal_payment_leaves_a_paying_member_paid(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    drain(queue)

    event_id = deliver(client, "invoice.payment_failed", invoice(paid=False), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is True
    assert actions_of(queue, event_id) == []


def test_partial_refund_keeps_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    partial = charge(refunded_amount=500)
    assert partial["refunded"] is False

    deliver(client, "charge.refunded", partial, created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is True


# -- ends -------------------------------------------------------------------------------


def test_deleted_subscription_ends_access_but_keeps_the_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    drain(queue)
    created = member_of(sotion_api)

    ended = subscription("canceled", base="customer_subscription_deleted")
    deliver(client, "customer.subscription.deleted", ended, created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is False
    assert member.status == "active"


@pytest.mark.parametrize("status", ["canceled", "unpaid", "incomplete_expired", "paused"])
def test_subscription_in_a_terminal_status_ends_access(
    status: str,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    drain(queue)
    assert member_of(sotion_api).paid is True

    deliver(client, "customer.subscription.updated", subscription(status), created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"


def test_full_refund_of_a_one_time_purchase_ends_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    assert member_of(sotion_api).paid is True

    full = charge(refunded_amount=1500)
    assert full["refunded"] is True
    deliver(client, "charge.refunded", full, created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is False


def test_full_refund_of_an_invoiced_one_time_purchase_ends_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # Checkout with invoice_creation: Stripe also sends invoice.paid for the same purchase.
    session = checkout_payment(invoice="in_one_time")
    deliver(client, "checkout.session.completed", session, created=T0)
    deliver(client, "invoice.paid", invoice(invoice_id="in_one_time", sub_id=None), created=T0)
    drain(queue)
    assert member_of(sotion_api).paid is True

    deliver(client, "charge.refunded", charge(refunded_amount=1500), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is False


# -- disputes ---------------------------------------------------------------------------


def test_dispute_of_a_one_time_purchase_blocks_the_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # The dispute names only the charge and payment intent; the checkout taught the latter.
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    deliver(client, "charge.dispute.created", dispute(), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).status == "blocked"


def test_dispute_naming_only_a_charge_learned_from_a_refund_blocks_the_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    deliver(client, "charge.refunded", charge(refunded_amount=500), created=T0 + 50)
    drain(queue)

    deliver(client, "charge.dispute.created", dispute(payment_intent=None), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).status == "blocked"


def test_later_unrelated_paid_invoice_does_not_lift_a_dispute_block(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    paid_checkout_then_dispute(client, queue, sotion_api)

    member = settle(
        client, queue, sotion_api, ("invoice.paid", invoice(sub_id="sub_other"), T0 + 200)
    )

    assert member.status == "blocked"
    assert member.paid is True


@pytest.mark.parametrize(
    ("also", "paid"),
    [
        pytest.param((), True, id="in_the_sellers_favour_unblocks_the_member"),
        # Before disputes were kept apart, the refund was dropped while the dispute stood and
        # the won dispute then made the refunded purchase active again.
        pytest.param(
            (("charge.refunded", charge(refunded_amount=1500), T0 + 150),),
            False,
            id="refund_during_a_dispute_is_recorded_so_a_won_dispute_does_not_restore_access",
        ),
    ],
)
def test_dispute_closed_in_the_sellers_favour_unblocks_the_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
    also: tuple[tuple[str, JSONObject, int], ...],
    paid: bool,
) -> None:
    paid_checkout_then_dispute(client, queue, sotion_api, *also)

    member = settle(
        client, queue, sotion_api, ("charge.dispute.closed", dispute(status="won"), T0 + 200)
    )

    assert member.status == "active"
    assert member.paid is paid


@pytest.mark.parametrize(
    ("first", "second", "status", "paid"),
    [
        pytest.param(
            ("charge.dispute.created", dispute(), T0 + 100),
            ("charge.dispute.closed", dispute(status="lost"), T0 + 200),
            "blocked",
            False,
            id="closed_as_lost_keeps_the_member_blocked",
        ),
        pytest.param(
            ("charge.dispute.closed", dispute(status="won"), T0 + 200),
            ("charge.dispute.created", dispute(), T0 + 100),
            "active",
            True,
            id="won_delivered_before_its_opening_still_ends_won",
        ),
    ],
)
def test_dispute_outcome_does_not_depend_on_delivery_order(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
    first: tuple[str, JSONObject, int],
    second: tuple[str, JSONObject, int],
    status: str,
    paid: bool,
) -> None:
    checkout = ("checkout.session.completed", checkout_payment(), T0)
    member = settle(client, queue, sotion_api, checkout, first, second)

    assert member.status == status
    assert member.paid is paid


def test_inquiry_leaves_the_member_paid_until_it_escalates_to_a_dispute(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    inquired = settle(
        client,
        queue,
        sotion_api,
        ("checkout.session.completed", checkout_payment(), T0),
        ("charge.dispute.created", dispute(status="warning_needs_response"), T0 + 100),
    )
    assert (inquired.paid, inquired.status) == (True, "active")

    escalated = settle(
        client,
        queue,
        sotion_api,
        ("charge.dispute.updated", dispute(status="needs_response"), T0 + 200),
    )

    assert escalated.status == "blocked"


# -- members the bridge did not make ----------------------------------------------------


def test_member_blocked_by_hand_who_pays_is_paid_but_stays_blocked(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    existing = sotion_api.create_member(EMAIL, paid=False)
    sotion_api.update_member(existing.id, status="blocked")

    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "blocked"


def test_existing_member_who_buys_is_patched_paid_only_and_not_duplicated(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    existing = sotion_api.create_member(EMAIL, display_name="Chosen Name", paid=False)
    requests = record_requests(sotion)

    event_id = deliver(
        client, "checkout.session.completed", checkout_payment(name="Card Name"), created=T0
    )
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == existing.id
    assert member.paid is True
    assert member.display_name == "Chosen Name"
    assert count_members(sotion_api) == 1
    # A new email is created directly; Sotion's 409 says the member exists: patched.
    assert requests.bodies("POST") == [{"email": EMAIL, "paid": True, "displayName": "Card Name"}]
    assert requests.bodies("PATCH") == [{"paid": True}]
    assert actions_of(queue, event_id) == ["create:conflict", "patch:paid=True"]


# -- order, duplicates, replays ---------------------------------------------------------


def test_deletion_delivered_before_older_active_events_ends_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    t = T0 + 100
    deliver(client, "checkout.session.completed", checkout_subscription(), created=t - 5)
    ended = subscription("canceled", base="customer_subscription_deleted")
    deliver(client, "customer.subscription.deleted", ended, created=t + 10)
    drain(queue)

    deliver(client, "customer.subscription.created", subscription("active"), created=t)
    deliver(client, "customer.subscription.updated", subscription("active"), created=t)
    drain(queue)

    assert member_of(sotion_api).paid is False


@pytest.mark.parametrize("created_first", [True, False], ids=["created-first", "updated-first"])
def test_created_and_updated_in_the_same_second_end_in_the_later_lifecycle_stage(
    created_first: bool,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(
        client,
        "checkout.session.completed",
        checkout_subscription(payment_status="unpaid"),
        created=T0,
    )
    drain(queue)
    same_second = T0 + 10
    created = ("customer.subscription.created", subscription("incomplete"))
    updated = ("customer.subscription.updated", subscription("active"))

    for kind, obj in (created, updated) if created_first else (updated, created):
        deliver(client, kind, obj, created=same_second)
        drain(queue)

    assert member_of(sotion_api).paid is True


def test_stale_pause_delivered_after_a_later_resume_does_not_end_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # Checkout (teaches the email) → created active at T0 → paused at T0+100 → resumed at
    # T0+200; the pause is delivered last, after the resume that supersedes it.
    deliver(
        client,
        "checkout.session.completed",
        checkout_subscription(payment_status="unpaid"),
        created=T0 - 10,
    )
    deliver(client, "customer.subscription.created", subscription("active"), created=T0)
    deliver(client, "customer.subscription.resumed", subscription("active"), created=T0 + 200)
    drain(queue)
    assert member_of(sotion_api).paid is True

    deliver(client, "customer.subscription.paused", subscription("paused"), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).paid is True


def test_same_event_id_delivered_three_times_applies_once(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    payload = event("checkout.session.completed", checkout_payment(), created=T0)

    answers = [post(client, payload) for _ in range(3)]
    drain(queue)

    assert [a["queued"] for a in answers] == [1, 0, 0]
    assert [a["duplicates"] for a in answers] == [0, 1, 1]
    assert queue.finished_job_registry.count == 1
    assert count_members(sotion_api) == 1
    assert member_of(sotion_api).paid is True


def test_same_body_re_signed_with_a_new_timestamp_is_still_a_duplicate(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    payload = event("checkout.session.completed", checkout_payment(), created=T0)
    first = post(client, payload, timestamp=int(time.time()) - 120)
    body_signed_later = post(client, payload)

    drain(queue)

    assert (first["queued"], body_signed_later["duplicates"]) == (1, 1)
    assert queue.finished_job_registry.count == 1
    assert count_members(sotion_api) == 1


def test_replaying_the_same_state_leaves_the_member_unchanged_without_a_second_patch(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    session = checkout_payment()
    first = deliver(client, "checkout.session.completed", session, created=T0)
    drain(queue)
    before = member_of(sotion_api)
    requests = record_requests(sotion)

    second = deliver(client, "checkout.session.completed", session, created=T0)
    drain(queue)

    assert actions_of(queue, first) == ["create:paid=True"]
    assert actions_of(queue, second) == []
    assert requests.bodies("PATCH") == []
    assert requests.bodies("POST") == []
    assert member_of(sotion_api) == before


# -- whose email? -----------------------------------------------------------------------


def test_subscription_of_an_unknown_customer_without_an_api_key_is_parked_with_the_reason(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    event_id = deliver(client, "customer.subscription.created", subscription(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.id not in queue.failed_job_registry.get_job_ids()
    (parked,) = parked_events(queue)
    assert "STRIPE_API_KEY" in parked.reason
    assert redis_conn.hget(METRICS_KEY, "bridge_jobs|outcome=parked") == b"1"
    assert redis_conn.hget(METRICS_KEY, "bridge_jobs|outcome=failed") is None
    assert sotion_api.find_member_by_email(EMAIL) is None


def test_subscription_of_an_unknown_customer_without_parking_fails_once_with_the_reason(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    settings: Settings,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    worker_runtime.configure(dataclasses.replace(settings, park_hours=0), redis_conn)
    event_id = deliver(client, "customer.subscription.created", subscription(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.id in queue.failed_job_registry.get_job_ids()
    reasons = {failed.id: failed.reason for failed in failed_jobs(queue)}
    assert "STRIPE_API_KEY" in reasons[job.id]
    assert redis_conn.hget(METRICS_KEY, "bridge_jobs|outcome=failed") == b"1"
    assert redis_conn.hget(METRICS_KEY, "bridge_jobs|outcome=retrying") is None
    assert sotion_api.find_member_by_email(EMAIL) is None


class FakeStripeAPI:
    """Stripe's customer and subscription reads on a real socket (GET /v1/...)."""

    def __init__(self) -> None:
        self.customers: dict[str, JSONObject] = {}
        self.subscriptions: dict[str, JSONObject] = {}
        self.requests: list[str] = []
        app = Flask("fake_stripe")
        app.add_url_rule("/v1/customers/<object_id>", view_func=self._customer)
        app.add_url_rule("/v1/subscriptions/<object_id>", view_func=self._subscription)
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The API base, as STRIPE_API_BASE would be set."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _customer(self, object_id: str) -> Any:
        self.requests.append(f"customer:{object_id}")
        found = self.customers.get(object_id) or abort(404)
        return jsonify(found)

    def _subscription(self, object_id: str) -> Any:
        self.requests.append(f"subscription:{object_id}")
        found = self.subscriptions.get(object_id) or abort(404)
        return jsonify(found)


@pytest.fixture
def stripe_api() -> Iterator[FakeStripeAPI]:
    """A fake Stripe API that knows one customer and one subscription."""
    fake = FakeStripeAPI()
    fake.customers[CUSTOMER] = {"id": CUSTOMER, "object": "customer", "email": "API@Example.com"}
    fake.subscriptions[SUBSCRIPTION] = subscription("active")
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def api_runtime(
    settings: Settings,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    stripe_api: FakeStripeAPI,
) -> worker_runtime.Runtime:
    """The worker runtime with STRIPE_API_KEY set and pointed at the fake Stripe API."""
    with_key = dataclasses.replace(
        settings, stripe_api_key="sk_test_x", stripe_api_base=stripe_api.url
    )
    return worker_runtime.configure(with_key, redis_conn)


def test_unknown_customers_email_is_resolved_through_the_stripe_api(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    stripe_api: FakeStripeAPI,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "customer.subscription.created", subscription("active"), created=T0)
    drain(queue)

    assert member_of(sotion_api, "api@example.com").paid is True
    assert f"customer:{CUSTOMER}" in stripe_api.requests


def test_current_subscription_status_from_the_stripe_api_wins_over_the_payload(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    stripe_api: FakeStripeAPI,
    sotion_api: SotionClient,
) -> None:
    deliver(client, "customer.subscription.created", subscription("active"), created=T0)
    drain(queue)
    assert member_of(sotion_api, "api@example.com").paid is True

    # The subscription was canceled since; a late event still says "active".
    stripe_api.subscriptions[SUBSCRIPTION] = subscription("canceled")
    deliver(client, "customer.subscription.updated", subscription("active"), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api, "api@example.com").paid is False
    assert stripe_api.requests.count(f"subscription:{SUBSCRIPTION}") == 2
