"""The Stripe source against the stand-in API on a real socket, through the stripe SDK."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import requests

from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.providers import stripe as stripe_provider
from bridge.sources import Batch
from bridge.sources.pacing import MAX_RATE_LIMITED_TRIES, Pacer, RateLimitExhaustedError
from bridge.sources.stripe import (
    EVENT_TYPES,
    EVENTS_OVERLAP_SECONDS,
    StripeSource,
)
from bridge.stripe_api import (
    LIST_REQUESTS_PER_MINUTE,
    MAX_EVENT_TYPES,
    MAX_PAGE_SIZE,
    ProviderAPIError,
    StripeAPI,
    invoice_payment_refs,
)
from tests.sources.timing import FakeTime
from tests.standins.server import StandInServer
from tests.standins.stripe import MONTHLY, ONE_TIME, StripeStandIn

# Distinctive, so a leak into any message or log line is easy to spot.
API_KEY = "sk_test_TOPSECRETstripe0do0not0leak"
LIVE_KEY = "sk_live_TOPSECRETstripe0do0not0leak"
EMAIL = "Buyer@Example.COM"
# When the stand-in's objects are created (its clock), and when the source asks (its own).
CREATED = 1_790_000_000
REQUESTED_AT = 1_800_000_000.0
# A listing is dated in Stripe's whole seconds, one before the request: a change made in
# the second of the read, after it, is newer than the listing.
LISTED_AT = REQUESTED_AT - 1
DAY = 86_400
SUBSCRIPTION_STATES = {
    "active": EntitlementState.ACTIVE,
    "trialing": EntitlementState.ACTIVE,
    "past_due": EntitlementState.PAST_DUE,
    "incomplete": EntitlementState.PENDING,
    "incomplete_expired": EntitlementState.ENDED,
    "canceled": EntitlementState.ENDED,
    "unpaid": EntitlementState.ENDED,
    "paused": EntitlementState.ENDED,
}
DISPUTE_STATES = {
    "warning_needs_response": (DisputeState.INQUIRY, "charge.dispute.updated"),
    "warning_under_review": (DisputeState.INQUIRY, "charge.dispute.updated"),
    "warning_closed": (DisputeState.WON, "charge.dispute.closed"),
    "needs_response": (DisputeState.OPEN, "charge.dispute.updated"),
    "under_review": (DisputeState.OPEN, "charge.dispute.updated"),
    "won": (DisputeState.WON, "charge.dispute.closed"),
    "prevented": (DisputeState.WON, "charge.dispute.closed"),
    "lost": (DisputeState.LOST, "charge.dispute.closed"),
}


class Clock:
    """A settable Unix clock; with ``step`` each reading moves it on."""

    def __init__(self, now: float, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


@pytest.fixture
def world() -> Clock:
    """The stand-in's clock: when its objects and events are created."""
    return Clock(CREATED)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def standin(world: Clock, fake_time: FakeTime) -> StripeStandIn:
    return StripeStandIn(API_KEY, clock=world, rate_clock=fake_time.monotonic)


@pytest.fixture
def server(standin: StripeStandIn) -> Iterator[StandInServer]:
    with StandInServer(standin.app) as running:
        yield running


def _api(
    server: StandInServer, fake_time: FakeTime, *, key: str = API_KEY, per_minute: float = 0
) -> StripeAPI:
    """A client of the stand-in; unpaced unless ``per_minute`` (the fake sleep records waits)."""
    pacer = Pacer(per_minute, clock=fake_time.monotonic, sleep=fake_time.sleep)
    return StripeAPI(key, api_base=server.url, pacer=pacer)


@pytest.fixture
def api(server: StandInServer, fake_time: FakeTime) -> StripeAPI:
    return _api(server, fake_time)


@pytest.fixture
def source(api: StripeAPI) -> StripeSource:
    return StripeSource(api, clock=Clock(REQUESTED_AT))


def _events(batches: Iterator[Batch]) -> list[MembershipEvent]:
    return [event for batch in batches for event in batch.events]


def _only(batches: Iterator[Batch]) -> MembershipEvent:
    events = _events(batches)
    assert len(events) == 1, events
    return events[0]


def _webhook(standin: StripeStandIn, event_type: str) -> MembershipEvent:
    """What the webhook parser makes of the stand-in's last event of ``event_type``."""
    sent = [event for event in standin.events if event["type"] == event_type][-1]
    [parsed] = stripe_provider.parse(sent)
    return parsed


# -- subscriptions -----------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(SUBSCRIPTION_STATES))
def test_every_subscription_status_maps_as_the_webhook_parser_maps_it(
    status: str, standin: StripeStandIn, source: StripeSource
) -> None:
    customer = standin.add_customer(EMAIL, name="Jenny Rosen")
    sub = standin.add_subscription(customer, status=status, prices=[MONTHLY])

    event = _only(source.backfill())

    assert event.event_id == f"list:{sub}:{status}"
    assert event.event_type == "customer.subscription.updated"
    assert event.entitlement == f"stripe:{sub}"
    assert event.state is SUBSCRIPTION_STATES[status]
    assert event.dispute is None
    assert event.products == MONTHLY
    assert event.refs == {"subscription": sub}
    assert event.email == "buyer@example.com"
    assert event.customer == customer
    assert event.display_name == "Jenny Rosen"
    assert event.occurred_at == LISTED_AT
    assert event.test_mode is True
    webhook = _webhook(standin, "customer.subscription.created")
    assert (webhook.entitlement, webhook.products, webhook.refs, webhook.customer) == (
        event.entitlement,
        event.products,
        event.refs,
        event.customer,
    )


def test_a_subscription_canceling_at_period_end_keeps_access(
    standin: StripeStandIn, source: StripeSource
) -> None:
    sub = standin.add_subscription(standin.add_customer(EMAIL), cancel_at_period_end=True)

    event = _only(source.backfill())

    assert (event.entitlement, event.state) == (f"stripe:{sub}", EntitlementState.ACTIVE)


def test_a_deleted_customers_subscription_has_no_email_but_names_the_customer(
    standin: StripeStandIn, source: StripeSource
) -> None:
    customer = standin.add_customer(EMAIL)
    sub = standin.add_subscription(customer)
    standin.delete_customer(customer)

    event = _only(source.backfill())

    assert event.email is None
    assert event.display_name is None
    assert event.customer == customer
    assert (event.entitlement, event.state) == (f"stripe:{sub}", EntitlementState.ENDED)
    assert event.event_id == f"list:{sub}:canceled"


def test_customers_are_expanded_in_the_listing_never_read_one_by_one(
    standin: StripeStandIn, source: StripeSource
) -> None:
    for n in range(5):
        standin.add_subscription(standin.add_customer(f"buyer{n}@example.com"))

    emails = {event.email for event in _events(source.backfill())}

    assert emails == {f"buyer{n}@example.com" for n in range(5)}
    [call] = standin.calls_to("/v1/subscriptions")
    assert call.query["status"] == "all"
    assert call.array("expand") == ["data.customer"]
    assert not [c for c in standin.calls if c.path.startswith("/v1/customers")]


def test_live_mode_objects_are_not_test_mode(server: StandInServer, fake_time: FakeTime) -> None:
    live = StripeStandIn(LIVE_KEY)
    live.add_subscription(live.add_customer(EMAIL))
    live.add_checkout(email=EMAIL)
    with StandInServer(live.app) as running:
        events = _events(StripeSource(_api(running, fake_time, key=LIVE_KEY)).backfill())

    assert len(events) == 2
    assert all(event.test_mode is False for event in events)


# -- one-time checkouts ------------------------------------------------------------------


def test_a_paid_checkout_is_active_under_the_webhooks_key_refs_and_email(
    standin: StripeStandIn, source: StripeSource
) -> None:
    customer = standin.add_customer(EMAIL, name="Jenny Rosen")
    session = standin.add_checkout(customer_id=customer, prices=[ONE_TIME])

    event = _only(source.backfill())

    webhook = _webhook(standin, "checkout.session.completed")
    assert event.entitlement == webhook.entitlement
    assert (
        event.entitlement == f"stripe:{standin.get('checkout.session', session)['payment_intent']}"
    )
    assert event.refs == webhook.refs
    assert (event.email, event.customer) == (webhook.email, customer)
    assert event.email == "buyer@example.com"
    assert event.state is EntitlementState.ACTIVE
    assert event.products == ONE_TIME
    assert event.display_name == "Jenny Rosen"
    assert event.occurred_at == LISTED_AT
    assert event.event_id == f"list:{session}:active"
    [call] = standin.calls_to("/v1/checkout/sessions")
    assert call.query["status"] == "complete"
    assert call.array("expand") == ["data.line_items", "data.payment_intent.latest_charge"]


def test_a_guest_checkout_has_the_typed_email_and_no_customer(
    standin: StripeStandIn, source: StripeSource
) -> None:
    standin.add_checkout(email=EMAIL, name="Guest Buyer")

    event = _only(source.backfill())

    assert event.customer is None
    assert event.email == "buyer@example.com"
    assert event.display_name == "Guest Buyer"
    assert event.state is EntitlementState.ACTIVE


def test_a_free_checkout_is_active_under_its_session(
    standin: StripeStandIn, source: StripeSource
) -> None:
    session = standin.add_checkout(email=EMAIL, payment_status="no_payment_required", amount=0)

    event = _only(source.backfill())

    assert (event.entitlement, event.state) == (f"stripe:{session}", EntitlementState.ACTIVE)
    assert event.entitlement == _webhook(standin, "checkout.session.completed").entitlement


@pytest.mark.parametrize(
    ("refunded", "state"),
    [
        (2000, EntitlementState.ENDED),
        (500, EntitlementState.ACTIVE),
        (None, EntitlementState.ACTIVE),
    ],
)
def test_a_full_refund_ends_the_purchase_and_a_partial_one_keeps_access(
    refunded: int | None, state: EntitlementState, standin: StripeStandIn, source: StripeSource
) -> None:
    session = standin.add_checkout(email=EMAIL, amount=2000)
    if refunded is not None:
        standin.refund(standin.charge_of(session), refunded)

    event = _only(source.backfill())

    assert event.state is state
    assert event.event_id == f"list:{session}:{state.value}"
    assert event.entitlement == _webhook(standin, "checkout.session.completed").entitlement


def test_a_delayed_payment_is_pending_then_ends_or_grants_as_it_settles(
    standin: StripeStandIn, source: StripeSource
) -> None:
    failing = standin.add_checkout(email="a@example.com", payment_status="unpaid")
    succeeding = standin.add_checkout(email="b@example.com", payment_status="unpaid")

    before = {event.email: event.state for event in _events(source.backfill())}
    standin.settle_checkout(failing, succeeded=False)
    standin.settle_checkout(succeeding, succeeded=True)
    after = {event.email: event for event in _events(source.backfill())}

    assert before == {
        "a@example.com": EntitlementState.PENDING,
        "b@example.com": EntitlementState.PENDING,
    }
    assert after["a@example.com"].state is EntitlementState.ENDED
    assert after["a@example.com"].event_type == "checkout.session.async_payment_failed"
    assert after["b@example.com"].state is EntitlementState.ACTIVE


def test_subscription_checkouts_are_left_to_their_subscription(
    standin: StripeStandIn, source: StripeSource
) -> None:
    customer = standin.add_customer(EMAIL)
    sub = standin.add_subscription(customer)
    standin.add_checkout(customer_id=customer, mode="subscription", subscription_id=sub)

    events = _events(source.backfill())

    assert [event.entitlement for event in events] == [f"stripe:{sub}"]
    assert events[0].event_type == "customer.subscription.updated"


def test_line_items_past_the_expanded_first_page_are_read_on(
    standin: StripeStandIn, source: StripeSource
) -> None:
    prices = [(f"price_{n:02d}", f"prod_{n:02d}") for n in range(12)]
    session = standin.add_checkout(email=EMAIL, prices=prices)

    batches = list(source.backfill())

    checkout = next(event for batch in batches for event in batch.events)
    assert checkout.products == tuple(value for pair in prices for value in pair)
    [call] = standin.calls_to(f"/v1/checkout/sessions/{session}/line_items")
    first = standin.calls_to("/v1/checkout/sessions")
    assert call.query == {"limit": "100", "starting_after": call.query["starting_after"]}
    assert call.query["starting_after"].startswith("li_")
    assert len(first) == 1
    assert batches[1].calls == 2  # the sessions page and the line items page


def test_an_object_not_shaped_as_documented_is_skipped_and_the_rest_listed(
    standin: StripeStandIn, source: StripeSource, caplog: pytest.LogCaptureFixture
) -> None:
    broken = standin.add_checkout(email="broken@example.com")
    standin.patch("checkout.session", broken, customer_details="not an object")
    fine = standin.add_checkout(email=EMAIL)

    events = _events(source.backfill())

    assert [event.refs["checkout_session"] for event in events] == [fine]
    assert f"stripe object skipped id={broken}" in caplog.text
    assert "broken@example.com" not in caplog.text


# -- disputes ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(DISPUTE_STATES))
def test_every_dispute_status_maps_as_the_webhook_parser_maps_it(
    status: str, standin: StripeStandIn, source: StripeSource
) -> None:
    customer = standin.add_customer(EMAIL)
    session = standin.add_checkout(customer_id=customer)
    charge = standin.charge_of(session)
    dispute = standin.add_dispute(charge, status=status)
    intent = standin.get("checkout.session", session)["payment_intent"]

    event = next(e for e in _events(source.backfill()) if e.dispute is not None)

    expected, kind = DISPUTE_STATES[status]
    assert event.dispute is expected
    assert event.event_type == kind
    assert event.event_id == f"list:{dispute}:{status}"
    assert event.entitlement is None and event.state is None
    assert event.refs == {"dispute": dispute, "charge": charge, "payment_intent": intent}
    assert event.refs == _webhook(standin, "charge.dispute.created").refs
    # A customer's payment: the engine looks the customer's email up, as for a webhook.
    assert (event.customer, event.email) == (customer, None)
    assert event.occurred_at == LISTED_AT


def test_a_guest_payments_dispute_carries_the_email_on_the_charge(
    standin: StripeStandIn, source: StripeSource
) -> None:
    standin.add_dispute(standin.charge_of(standin.add_checkout(email=EMAIL, name="Guest")))

    event = next(e for e in _events(source.backfill()) if e.dispute is not None)

    assert (event.customer, event.email, event.display_name) == (None, "buyer@example.com", "Guest")
    [call] = standin.calls_to("/v1/disputes")
    assert call.array("expand") == ["data.charge"]


def _dispute_event(events: list[MembershipEvent]) -> MembershipEvent:
    [event] = [e for e in events if e.dispute is not None]
    return event


@pytest.mark.parametrize("which", ["first invoice", "renewal"])
def test_a_subscription_payments_dispute_names_its_invoice_and_subscription(
    which: str, standin: StripeStandIn, source: StripeSource
) -> None:
    customer = standin.add_customer(EMAIL)
    sub = standin.add_subscription(customer)
    invoice = standin.invoices_of(sub)[0] if which == "first invoice" else standin.renew(sub)
    charge = standin.charge_of_invoice(invoice)
    intent = standin.get("charge", charge)["payment_intent"]
    dispute = standin.add_dispute(charge)

    batches = list(source.backfill())

    event = _dispute_event([e for b in batches for e in b.events])
    assert event.refs == {
        "dispute": dispute,
        "charge": charge,
        "payment_intent": intent,
        "invoice": invoice,
        "subscription": sub,
    }
    # The rest is the webhook's: the engine's resolver tries `subscription` first.
    webhook = _webhook(standin, "charge.dispute.created")
    assert {k: v for k, v in event.refs.items() if k in webhook.refs} == webhook.refs
    assert (event.dispute, event.entitlement, event.customer) == (DisputeState.OPEN, None, customer)
    [call] = standin.calls_to("/v1/invoice_payments")
    assert {key: value for key, value in call.query.items() if "expand" not in key} == {
        "payment[type]": "payment_intent",
        "payment[payment_intent]": intent,
        "limit": "100",
    }
    assert call.array("expand") == ["data.invoice"]
    assert batches[-1].calls == 2  # the disputes page and the one look-up


def test_a_one_time_checkouts_dispute_makes_no_extra_call_and_is_unchanged(
    standin: StripeStandIn, source: StripeSource
) -> None:
    session = standin.add_checkout(customer_id=standin.add_customer(EMAIL))
    charge = standin.charge_of(session)
    dispute = standin.add_dispute(charge)

    batches = list(source.backfill())

    event = _dispute_event([e for b in batches for e in b.events])
    intent = standin.get("checkout.session", session)["payment_intent"]
    assert event.refs == {"dispute": dispute, "charge": charge, "payment_intent": intent}
    assert event.refs == _webhook(standin, "charge.dispute.created").refs
    assert not standin.calls_to("/v1/invoice_payments")
    assert [batch.calls for batch in batches] == [1, 1, 1]


def test_a_dispute_whose_checkout_was_not_listed_by_this_run_is_looked_up_once(
    standin: StripeStandIn, api: StripeAPI
) -> None:
    # A backfill resumed at the disputes: its sessions were listed by an earlier process.
    session = standin.add_checkout(email=EMAIL)
    charge = standin.charge_of(session)
    standin.add_dispute(charge)
    cursors = [batch.cursor for batch in StripeSource(api).backfill()]
    standin.calls.clear()

    [batch] = list(StripeSource(api).backfill(cursors[1]))

    [event] = batch.events
    assert event.refs == _webhook(standin, "charge.dispute.created").refs  # paid no invoice
    assert [call.path for call in standin.calls] == ["/v1/disputes", "/v1/invoice_payments"]
    assert batch.calls == 2


def test_each_dispute_costs_at_most_one_call_and_one_time_ones_none(
    standin: StripeStandIn, source: StripeSource
) -> None:
    subs = [standin.add_subscription(standin.add_customer(f"s{n}@example.com")) for n in range(3)]
    for sub in subs:
        standin.add_dispute(standin.charge_of_invoice(standin.renew(sub)))
    for n in range(4):
        standin.add_dispute(standin.charge_of(standin.add_checkout(email=f"c{n}@example.com")))
    standin.renew(subs[0])  # a renewal nobody disputed

    batches = list(source.backfill())

    disputes = [e for b in batches for e in b.events if e.dispute is not None]
    assert len(disputes) == 7
    assert sorted(e.refs["subscription"] for e in disputes if "subscription" in e.refs) == sorted(
        subs
    )
    assert len(standin.calls_to("/v1/invoice_payments")) == 3
    assert batches[-1].calls == 1 + 3
    assert sum(batch.calls for batch in batches) == len(standin.calls) == 3 + 3


def test_a_refused_invoice_look_up_leaves_the_dispute_as_its_webhook_names_it(
    standin: StripeStandIn,
    source: StripeSource,
    api: StripeAPI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A restricted key without Invoices read access: Stripe answers 403.
    sub = standin.add_subscription(standin.add_customer(EMAIL))
    dispute = standin.add_dispute(standin.charge_of_invoice(standin.renew(sub)))

    def refused(payment_intent: str, **_: object) -> None:
        raise ProviderAPIError("Stripe API GET /v1/invoice_payments status=403", retryable=False)

    monkeypatch.setattr(api, "list_invoice_payments", refused)

    batches = list(source.backfill())

    event = _dispute_event([e for b in batches for e in b.events])
    assert event.refs == _webhook(standin, "charge.dispute.created").refs
    assert batches[-1].calls == 2
    assert f"stripe dispute invoice unknown dispute={dispute}" in caplog.text


def test_a_failed_invoice_look_up_worth_retrying_stops_the_listing_at_its_page(
    standin: StripeStandIn,
    source: StripeSource,
    api: StripeAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sub = standin.add_subscription(standin.add_customer(EMAIL))
    standin.add_dispute(standin.charge_of_invoice(standin.renew(sub)))

    def failing(payment_intent: str, **_: object) -> None:
        raise ProviderAPIError("Stripe API GET /v1/invoice_payments status=503", retryable=True)

    monkeypatch.setattr(api, "list_invoice_payments", failing)
    batches = source.backfill()
    first, second = next(batches), next(batches)

    with pytest.raises(ProviderAPIError):
        next(batches)
    # The engine resumes from the last cursor it got: the disputes page is read again.
    assert second.cursor is not None and json.loads(second.cursor)["list"] == "disputes"
    assert first.events[0].refs == {"subscription": sub}


def test_invoice_payment_refs_read_both_invoice_shapes_and_prefer_a_subscriptions() -> None:
    basil = {"id": "in_2", "parent": {"subscription_details": {"subscription": "sub_2"}}}

    assert invoice_payment_refs([]) == {}
    assert invoice_payment_refs([{"invoice": "in_1"}]) == {"invoice": "in_1"}  # not expanded
    assert invoice_payment_refs([{"invoice": {"id": "in_1", "subscription": "sub_1"}}]) == {
        "invoice": "in_1",
        "subscription": "sub_1",
    }
    assert invoice_payment_refs(
        [{"invoice": {"id": "in_1", "parent": None}}, {"invoice": basil}]
    ) == {
        "invoice": "in_2",
        "subscription": "sub_2",
    }


# -- the stand-in's invoices ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "invoice_status", "payment"),
    [
        ("active", "paid", ("paid", "succeeded")),
        ("past_due", "paid", ("paid", "succeeded")),
        ("trialing", "paid", None),  # $0: no payment at all
        ("incomplete", "open", ("open", "requires_payment_method")),
        ("incomplete_expired", "void", ("canceled", "canceled")),
    ],
)
def test_the_stand_in_bills_a_new_subscription_as_stripe_does(
    status: str,
    invoice_status: str,
    payment: tuple[str, str] | None,
    standin: StripeStandIn,
    server: StandInServer,
) -> None:
    sub = standin.add_subscription(standin.add_customer(EMAIL), status=status)
    [invoice_id] = standin.invoices_of(sub)

    invoice = standin.get("invoice", invoice_id)
    assert standin.get("subscription", sub)["latest_invoice"] == invoice_id
    assert (invoice["status"], invoice["billing_reason"]) == (invoice_status, "subscription_create")
    assert invoice["parent"]["subscription_details"]["subscription"] == sub
    assert "payment_intent" not in invoice and "charge" not in invoice  # basil
    listed = requests.get(
        f"{server.url}/v1/invoice_payments",
        params={"invoice": invoice_id},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    ).json()["data"]
    if payment is None:
        assert listed == [] and invoice["amount_paid"] == 0
    else:
        [found] = listed
        intent = standin.get("payment_intent", found["payment"]["payment_intent"])
        assert (found["status"], intent["status"]) == payment
        assert "invoice" not in intent
    sent = [e for e in standin.events if e["data"]["object"]["id"] == invoice_id]
    assert [e["type"] for e in sent] == (["invoice.paid"] if invoice_status == "paid" else [])


def test_the_stand_ins_renewals_are_paid_invoices_the_webhook_parser_ties_to_the_subscription(
    standin: StripeStandIn,
) -> None:
    sub = standin.add_subscription(standin.add_customer(EMAIL), status="trialing")
    first = standin.invoices_of(sub)[0]
    period_end = standin.get("subscription", sub)["items"]["data"][0]["current_period_end"]

    renewal = standin.renew(sub)

    after = standin.get("subscription", sub)
    assert standin.invoices_of(sub) == [first, renewal]
    assert (after["status"], after["latest_invoice"]) == ("active", renewal)
    assert after["items"]["data"][0]["current_period_start"] == period_end
    invoice = standin.get("invoice", renewal)
    assert (invoice["billing_reason"], invoice["status"], invoice["amount_paid"]) == (
        "subscription_cycle",
        "paid",
        2000,
    )
    charge = standin.get("charge", standin.charge_of_invoice(renewal))
    assert "invoice" not in charge and charge["paid"] is True
    assert [e["type"] for e in standin.events[-2:]] == [
        "customer.subscription.updated",
        "invoice.paid",
    ]
    paid = _webhook(standin, "invoice.paid")
    assert (paid.entitlement, paid.state) == (f"stripe:{sub}", EntitlementState.ACTIVE)
    assert paid.refs == {"invoice": renewal, "subscription": sub}
    assert paid.products == MONTHLY
    standin.update_subscription(sub, status="canceled")
    with pytest.raises(ValueError, match="does not renew"):
        standin.renew(sub)


def test_a_subscription_checkout_names_the_subscriptions_first_invoice(
    standin: StripeStandIn,
) -> None:
    customer = standin.add_customer(EMAIL)
    sub = standin.add_subscription(customer)
    session = standin.add_checkout(customer_id=customer, mode="subscription", subscription_id=sub)

    assert standin.get("checkout.session", session)["invoice"] == standin.invoices_of(sub)[0]


def _invoice_payments(server: StandInServer, params: dict[str, str]) -> requests.Response:
    return requests.get(
        f"{server.url}/v1/invoice_payments",
        params=params,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )


def test_the_stand_ins_invoice_payments_filter_and_expand_as_documented(
    standin: StripeStandIn, server: StandInServer, world: Clock
) -> None:
    sub = standin.add_subscription(standin.add_customer(EMAIL))
    world.now += 100
    renewal = standin.renew(sub)
    intent = standin.get("charge", standin.charge_of_invoice(renewal))["payment_intent"]
    unpaid = standin.add_subscription(standin.add_customer("o@example.com"), status="incomplete")

    by_intent = _invoice_payments(
        server,
        {
            "payment[type]": "payment_intent",
            "payment[payment_intent]": intent,
            "expand[]": "data.invoice",
        },
    ).json()
    everything = _invoice_payments(server, {}).json()["data"]
    paid = _invoice_payments(server, {"status": "paid"}).json()["data"]
    recent = _invoice_payments(server, {"created[gte]": str(int(world.now))}).json()["data"]

    [found] = by_intent["data"]
    assert (by_intent["object"], by_intent["url"]) == ("list", "/v1/invoice_payments")
    assert found["object"] == "invoice_payment" and found["id"].startswith("inpay_")
    assert found["payment"] == {"type": "payment_intent", "payment_intent": intent}
    assert found["invoice"]["id"] == renewal  # expanded
    assert found["invoice"]["parent"]["subscription_details"]["subscription"] == sub
    assert len(everything) == 3 and [p["status"] for p in everything] == ["open", "paid", "paid"]
    assert len(paid) == 2 and all(isinstance(p["invoice"], str) for p in paid)
    assert [p["invoice"] for p in recent] == [standin.invoices_of(unpaid)[0], renewal]
    single = requests.get(
        f"{server.url}/v1/invoice_payments/{found['id']}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    ).json()
    assert single["invoice"] == renewal


@pytest.mark.parametrize(
    ("params", "param", "text"),
    [
        ({"payment[payment_intent]": "pi_1"}, "payment[type]", "Missing required param"),
        ({"payment[type]": "charge"}, "payment[type]", "Invalid payment[type]"),
        ({"payment[type]": "payment_intent", "payment[charge]": "ch_1"}, "payment[charge]", ""),
        ({"status": "draft"}, "status", "Invalid status"),
        ({"expand[]": "data.payment"}, None, "cannot be expanded (data.payment)"),
        ({"customer": "cus_1"}, "customer", "unknown parameter"),
    ],
)
def test_the_stand_ins_invoice_payments_refuse_what_stripe_refuses(
    params: dict[str, str], param: str | None, text: str, server: StandInServer
) -> None:
    answer = _invoice_payments(server, params)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert text in error["message"]
    assert error.get("param") == param


# -- pagination and cursors --------------------------------------------------------------


def _seed_subscriptions(standin: StripeStandIn, count: int) -> list[str]:
    customer = standin.add_customer(EMAIL)
    return [standin.add_subscription(customer) for _ in range(count)]


def test_listings_page_through_everything_at_the_largest_page_size(
    standin: StripeStandIn, source: StripeSource
) -> None:
    subs = _seed_subscriptions(standin, 250)
    standin.add_checkout(email=EMAIL)

    batches = list(source.backfill())

    listed = [e.entitlement for b in batches[:3] for e in b.events]
    assert listed == [f"stripe:{sub}" for sub in reversed(subs)]  # newest first, none twice
    assert [len(b.events) for b in batches] == [100, 100, 50, 1, 0]
    calls = standin.calls_to("/v1/subscriptions")
    assert [c.query["limit"] for c in calls] == [str(MAX_PAGE_SIZE)] * 3
    assert "starting_after" not in calls[0].query
    assert [c.query["starting_after"] for c in calls[1:]] == [subs[-100], subs[-200]]
    assert [json.loads(b.cursor)["list"] for b in batches if b.cursor] == [
        "subscriptions", "subscriptions", "checkout_sessions", "disputes",
    ]  # fmt: skip
    assert batches[-1].cursor is None
    assert all(batch.calls == 1 for batch in batches)


def test_a_backfill_resumed_from_a_cursor_lists_exactly_the_rest(
    standin: StripeStandIn, api: StripeAPI
) -> None:
    subs = _seed_subscriptions(standin, 230)
    session = standin.add_checkout(email=EMAIL)
    first = next(StripeSource(api).backfill())
    standin.calls.clear()

    rest = _events(StripeSource(api).backfill(first.cursor))

    listed = [str(e.entitlement) for e in [*first.events, *rest]]
    assert sorted(listed[: len(subs)]) == sorted(f"stripe:{sub}" for sub in subs)
    assert len(listed) == len(set(listed)) == len(subs) + 1
    assert rest[-1].refs["checkout_session"] == session
    assert standin.calls_to("/v1/subscriptions")[0].query["starting_after"] == subs[-100]


def test_a_cursor_at_a_later_listing_skips_the_earlier_ones(
    standin: StripeStandIn, source: StripeSource
) -> None:
    _seed_subscriptions(standin, 3)
    standin.add_dispute(standin.charge_of(standin.add_checkout(email=EMAIL)))
    cursors = [batch.cursor for batch in source.backfill()]
    standin.calls.clear()

    events = _events(source.backfill(cursors[1]))

    assert [event.dispute for event in events] == [DisputeState.OPEN]
    assert [call.path for call in standin.calls] == ["/v1/disputes"]


@pytest.mark.parametrize("cursor", ["", "not json", '{"list": "orders", "after": null}', "[1]"])
def test_a_cursor_that_is_not_this_sources_is_refused(cursor: str, source: StripeSource) -> None:
    with pytest.raises(ValueError, match="not a Stripe backfill cursor"):
        next(source.backfill(cursor))


# -- rate limits -------------------------------------------------------------------------


def test_429s_are_waited_out_with_exponential_back_off(
    standin: StripeStandIn, api: StripeAPI, fake_time: FakeTime
) -> None:
    standin.add_subscription(standin.add_customer(EMAIL))
    standin.throttle(3)
    clock = Clock(REQUESTED_AT, step=1.0)

    first = next(StripeSource(api, clock=clock).backfill())

    assert first.calls == 4
    assert [call.status for call in standin.calls_to("/v1/subscriptions")] == [429, 429, 429, 200]
    # Full jitter between half the ceiling and the ceiling: 1, 2, 4 s.
    assert len(fake_time.sleeps) == 3
    for wait, ceiling in zip(fake_time.sleeps, (1.0, 2.0, 4.0), strict=True):
        assert ceiling / 2 <= wait <= ceiling
    # Dated just before the request that was answered, not the first one.
    assert first.events[0].occurred_at == LISTED_AT + 3


def test_429s_without_end_give_up_with_rate_limit_exhausted(
    standin: StripeStandIn, source: StripeSource, fake_time: FakeTime
) -> None:
    standin.throttle(MAX_RATE_LIMITED_TRIES + 5)

    with pytest.raises(RateLimitExhaustedError) as caught:
        next(source.backfill())

    assert len(standin.calls) == MAX_RATE_LIMITED_TRIES
    assert len(fake_time.sleeps) == MAX_RATE_LIMITED_TRIES - 1
    assert caught.value.retryable is True
    assert API_KEY not in str(caught.value)


def test_the_default_pace_stays_under_stripes_per_endpoint_limit(
    world: Clock, fake_time: FakeTime
) -> None:
    # 25 requests a second per endpoint (docs.stripe.com/rate-limits); 27 pages to list.
    limited = StripeStandIn(
        API_KEY, clock=world, requests_per_second=25, rate_clock=fake_time.monotonic
    )
    _seed_subscriptions(limited, 2_650)
    with StandInServer(limited.app) as running:
        paced = _api(running, fake_time, per_minute=LIST_REQUESTS_PER_MINUTE)
        events = _events(StripeSource(paced).backfill())

    assert len(events) == 2_650
    assert {call.status for call in limited.calls} == {200}
    assert len(fake_time.sleeps) == len(limited.calls) - 1
    assert all(abs(wait - 0.1) < 1e-9 for wait in fake_time.sleeps)


def test_a_tighter_limit_than_the_pace_is_met_by_backing_off(
    world: Clock, fake_time: FakeTime
) -> None:
    limited = StripeStandIn(
        API_KEY, clock=world, requests_per_second=2, rate_clock=fake_time.monotonic
    )
    _seed_subscriptions(limited, 450)
    with StandInServer(limited.app) as running:
        events = _events(StripeSource(_api(running, fake_time)).backfill())

    assert len(events) == 450
    statuses = [call.status for call in limited.calls]
    assert 429 in statuses
    assert statuses.count(200) == 7  # 5 subscription pages, then sessions and disputes


# -- failures ----------------------------------------------------------------------------


def test_a_refused_key_is_a_clear_permanent_error_that_never_shows_the_key(
    server: StandInServer, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk_test_TOPSECRETwrong0key0do0not0leak"
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ProviderAPIError) as caught:
        next(StripeSource(_api(server, fake_time, key=wrong)).backfill())

    assert caught.value.retryable is False
    message = str(caught.value)
    assert "status=401" in message and "STRIPE_API_KEY" in message
    assert "TOPSECRET" not in message and "TOPSECRET" not in caplog.text


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({}, "You did not provide an API key."),
        (
            {"Authorization": "Bearer sk_test_TOPSECRETwrong0key"},
            "Invalid API Key provided: sk_test_",
        ),
    ],
)
def test_the_stand_in_answers_stripes_401_bodies(
    header: dict[str, str], message: str, server: StandInServer
) -> None:
    answer = requests.get(f"{server.url}/v1/subscriptions", headers=header, timeout=5)

    assert answer.status_code == 401
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)
    assert "TOPSECRETwrong0key" not in error["message"]
    assert answer.headers["Request-Id"].startswith("req_")


@pytest.mark.parametrize(
    ("query", "param", "text"),
    [
        ("limit=101", "limit", "less than or equal to 100"),
        ("limit=0", "limit", "greater than or equal to 1"),
        ("expand[]=customer", None, "try expanding 'data.customer' instead"),
        ("expand[]=data.plan", None, "cannot be expanded (data.plan)"),
        ("expand[]=data.customer.a.b.c", None, "more than 4 levels"),
        ("colour=blue", "colour", "unknown parameter"),
        ("starting_after=sub_nope", "starting_after", "No such subscription"),
        ("starting_after=a&ending_before=b", "starting_after", "Received both"),
        ("status=gone", "status", "Invalid status"),
    ],
)
def test_the_stand_in_refuses_what_stripe_refuses(
    query: str, param: str | None, text: str, server: StandInServer
) -> None:
    answer = requests.get(
        f"{server.url}/v1/subscriptions?{query}",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert text in error["message"]
    assert error.get("param") == param


def test_the_stand_in_pages_back_with_ending_before_and_takes_basic_auth(
    standin: StripeStandIn, server: StandInServer
) -> None:
    subs = _seed_subscriptions(standin, 5)  # listed newest first: subs[4] ... subs[0]

    answer = requests.get(
        f"{server.url}/v1/subscriptions",
        params={"limit": "2", "ending_before": subs[1]},
        auth=(API_KEY, ""),
        timeout=5,
    )

    assert answer.status_code == 200
    body = answer.json()
    assert [sub["id"] for sub in body["data"]] == [subs[3], subs[2]]
    assert body["has_more"] is True
    assert (body["object"], body["url"]) == ("list", "/v1/subscriptions")


def test_a_bad_request_is_a_permanent_error(standin: StripeStandIn, api: StripeAPI) -> None:
    standin.add_subscription(standin.add_customer(EMAIL))

    with pytest.raises(ProviderAPIError) as caught:
        api.list_subscriptions(starting_after="sub_gone")

    assert caught.value.retryable is False
    assert "status=400" in str(caught.value) and "resource_missing" in str(caught.value)


def test_the_existing_single_reads_work_against_the_stand_in(
    standin: StripeStandIn, api: StripeAPI
) -> None:
    customer = standin.add_customer(EMAIL)
    sub = standin.add_subscription(customer, status="past_due")
    session = standin.add_checkout(customer_id=customer, prices=[ONE_TIME, MONTHLY])
    gone = standin.add_customer("gone@example.com")
    standin.delete_customer(gone)

    assert api.customer_email(customer) == EMAIL
    assert api.customer_email(gone) is None
    assert api.subscription(sub)["status"] == "past_due"
    assert api.charge(standin.charge_of(session))["refunded"] is False
    assert api.checkout_products(session) == ONE_TIME + MONTHLY
    with pytest.raises(ProviderAPIError) as caught:
        api.subscription("sub_missing")
    assert caught.value.retryable is False


# -- changes -----------------------------------------------------------------------------


def test_changes_find_in_stripes_events_what_lost_webhooks_said(
    standin: StripeStandIn, api: StripeAPI, world: Clock
) -> None:
    customer = standin.add_customer(EMAIL)
    sub = standin.add_subscription(customer)
    session = standin.add_checkout(email=EMAIL)
    since = world.now + 600.0
    world.now += 1_000
    standin.update_subscription(sub, status="past_due")  # webhooks never delivered
    standin.refund(standin.charge_of(session))
    source = StripeSource(api, clock=Clock(since + 3_600))

    events = _events(source.changes(since))

    sent = [stripe_provider.parse(e)[0] for e in reversed(standin.events[-2:])]
    assert events == sent
    assert [event.event_type for event in events] == [
        "charge.refunded",
        "customer.subscription.updated",
    ]
    assert events[1].state is EntitlementState.PAST_DUE
    [call] = standin.calls_to("/v1/events")
    assert call.query["created[gte]"] == str(int(since - EVENTS_OVERLAP_SECONDS))
    assert call.array("types") == list(EVENT_TYPES)
    assert call.query["limit"] == "100"
    assert not standin.calls_to("/v1/subscriptions")


def test_events_just_before_since_are_read_and_older_ones_not(
    standin: StripeStandIn, api: StripeAPI, world: Clock
) -> None:
    customer = standin.add_customer(EMAIL)
    old = standin.add_subscription(customer)
    world.now += 500
    recent = standin.add_subscription(customer)
    since = world.now + 100.0

    events = _events(StripeSource(api, clock=Clock(since)).changes(since))

    # The subscription's creation and its first invoice's payment, newest first.
    assert [(event.event_type, event.entitlement) for event in events] == [
        ("invoice.paid", f"stripe:{recent}"),
        ("customer.subscription.created", f"stripe:{recent}"),
    ]
    assert f"stripe:{old}" not in {event.entitlement for event in events}


def test_changes_page_back_and_skip_nothing_created_while_paging(
    standin: StripeStandIn, api: StripeAPI, world: Clock
) -> None:
    customer = standin.add_customer(EMAIL)
    since = float(world.now)
    # Each subscription sends two events: its creation and its first invoice's payment.
    subs = [standin.add_subscription(customer) for _ in range(75)]
    window = {event["id"] for event in standin.events if event["type"] in EVENT_TYPES}
    batches = StripeSource(api, clock=Clock(since + 60)).changes(since)

    first = next(batches)
    world.now += 10
    late = [standin.add_subscription(customer) for _ in range(5)]  # while paging
    rest = list(batches)

    seen = [e.event_id for batch in [first, *rest] for e in batch.events]
    assert set(seen) == window and len(seen) == len(window) == 2 * len(subs)
    assert [len(first.events), *(len(b.events) for b in rest)] == [100, 50]
    assert all(batch.cursor is None for batch in [first, *rest])
    assert {e.entitlement for b in [first, *rest] for e in b.events}.isdisjoint(
        {f"stripe:{sub}" for sub in late}
    )
    calls = standin.calls_to("/v1/events")
    assert calls[1].query["starting_after"] == first.events[-1].event_id


@pytest.mark.parametrize("age_days", [None, 29.5, 31, 400])
def test_changes_older_than_stripes_thirty_days_list_everything_instead(
    age_days: float | None, standin: StripeStandIn, api: StripeAPI
) -> None:
    sub = standin.add_subscription(standin.add_customer(EMAIL))
    now = REQUESTED_AT
    since = None if age_days is None else now - age_days * DAY

    events = _events(StripeSource(api, clock=Clock(now)).changes(since))

    assert [event.event_id for event in events] == [f"list:{sub}:active"]
    assert not standin.calls_to("/v1/events")
    assert [call.path for call in standin.calls] == [
        "/v1/subscriptions", "/v1/checkout/sessions", "/v1/disputes",
    ]  # fmt: skip


def test_changes_within_the_retention_read_events(standin: StripeStandIn, api: StripeAPI) -> None:
    events = _events(StripeSource(api, clock=Clock(REQUESTED_AT)).changes(REQUESTED_AT - 28 * DAY))

    assert events == []
    assert [call.path for call in standin.calls] == ["/v1/events"]


def test_the_stand_in_keeps_events_thirty_days(
    standin: StripeStandIn, api: StripeAPI, world: Clock
) -> None:
    standin.add_subscription(standin.add_customer(EMAIL))
    world.now += 31 * DAY

    page = api.list_events(types=EVENT_TYPES, created_gte=0)

    assert page.objects == () and page.has_more is False


def test_event_types_are_every_type_the_webhook_parser_handles() -> None:
    handled = (
        stripe_provider._CHECKOUT_EVENTS
        | stripe_provider._SUBSCRIPTION_EVENTS
        | stripe_provider._DISPUTE_EVENTS
        | {"invoice.paid", "invoice.payment_failed", "charge.refunded"}
    )

    assert set(EVENT_TYPES) == handled
    assert len(EVENT_TYPES) <= MAX_EVENT_TYPES
    obj = {"id": "x_1", "object": "thing", "status": "active"}
    for kind in EVENT_TYPES:
        envelope = {"id": "evt_1", "type": kind, "created": 1, "data": {"object": obj}}
        assert stripe_provider.parse(envelope), kind
    with pytest.raises(ValueError):
        StripeAPI(API_KEY).list_events(types=[f"t{n}" for n in range(21)], created_gte=0)
