"""Stripe provider: signature verification, payload loading and normalization (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bridge.errors import PayloadError, SignatureError
from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.providers import stripe
from tests.conftest import STRIPE_SECRET
from tests.stripe_events import encode, event, fixture, sign

# A fixed clock for verification: signatures are made at T and checked against T + n.
T = 1_760_000_000
BODY = encode(fixture("checkout_session_completed_payment"))
SUBSCRIPTION_ID = "sub_1SFxYRHje2ICnTUdc5Unj2nU"
SUBSCRIPTION_PRODUCTS = ("price_1SFXpaHje2ICnTUdiJ5wGeN4", "prod_TBvg8IjYy1EfV0")


def _verify(
    raw: bytes = BODY,
    header: str | None = None,
    secrets: tuple[str, ...] = (STRIPE_SECRET,),
    now: float = T,
) -> None:
    signature = sign(raw, STRIPE_SECRET, timestamp=T) if header is None else header
    stripe.verify(raw, signature, secrets, now=now)


def _only(payload: dict[str, Any]) -> MembershipEvent:
    events = stripe.parse(payload)
    assert len(events) == 1
    return events[0]


def _with_object(name: str, **changes: Any) -> dict[str, Any]:
    payload = fixture(name)
    payload["data"]["object"].update(changes)
    return payload


# -- verify -------------------------------------------------------------------------------


def test_valid_signature_passes() -> None:
    _verify()


def test_signature_made_with_another_secret_is_rejected() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        _verify(header=sign(BODY, "whsec_someone_else", timestamp=T))


def test_tampered_body_is_rejected() -> None:
    header = sign(BODY, STRIPE_SECRET, timestamp=T)
    tampered = BODY.replace(b"buyer@example.com", b"thief@example.com")
    assert tampered != BODY
    with pytest.raises(SignatureError, match="does not match"):
        _verify(tampered, header)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_signature_header_is_rejected(header: str | None) -> None:
    with pytest.raises(SignatureError, match="Missing"):
        stripe.verify(BODY, header, (STRIPE_SECRET,), now=T)


def test_header_without_timestamp_is_rejected() -> None:
    v1 = sign(BODY, STRIPE_SECRET, timestamp=T).split(",")[1]
    with pytest.raises(SignatureError, match="t="):
        _verify(header=v1)


def test_header_with_non_numeric_timestamp_is_rejected() -> None:
    v1 = sign(BODY, STRIPE_SECRET, timestamp=T).split(",")[1]
    with pytest.raises(SignatureError, match="t="):
        _verify(header=f"t=yesterday,{v1}")


def test_header_with_only_a_v0_signature_is_rejected() -> None:
    digest = sign(BODY, STRIPE_SECRET, timestamp=T).split("v1=")[1]
    with pytest.raises(SignatureError, match="v1"):
        _verify(header=f"t={T},v0={digest}")


def test_stale_stripe_timestamp_is_rejected() -> None:
    with pytest.raises(SignatureError, match="tolerance"):
        _verify(now=T + stripe.TOLERANCE_SECONDS + 1)


def test_timestamp_just_inside_the_tolerance_is_accepted() -> None:
    _verify(now=T + stripe.TOLERANCE_SECONDS - 1)


def test_future_timestamp_is_accepted_as_the_stripe_sdk_does() -> None:
    _verify(now=T - 3600)


def test_timestamp_hidden_behind_whitespace_cannot_refresh_an_old_signature() -> None:
    # An attacker replays an old signed delivery and prepends a fresh t= item with a space:
    # the timestamp checked for staleness must be the one the signature covers.
    old = sign(BODY, STRIPE_SECRET, timestamp=T)
    fresh = T + 3600
    with pytest.raises(SignatureError):
        _verify(header=f"v0=x, t={fresh},{old}", now=fresh)


def test_non_ascii_signature_is_rejected_as_a_signature_error() -> None:
    with pytest.raises(SignatureError):
        _verify(header=f"t={T},v1=\u00e9")


def test_second_secret_verifies_during_rotation() -> None:
    _verify(secrets=("whsec_new_secret", STRIPE_SECRET))


def test_signature_by_neither_rotated_secret_is_rejected() -> None:
    with pytest.raises(SignatureError):
        _verify(
            header=sign(BODY, "whsec_third", timestamp=T),
            secrets=("whsec_new_secret", STRIPE_SECRET),
        )


def test_header_with_two_v1_signatures_passes_when_one_matches() -> None:
    wrong = sign(BODY, "whsec_new_secret", timestamp=T).split("v1=")[1]
    right = sign(BODY, STRIPE_SECRET, timestamp=T).split("v1=")[1]
    _verify(header=f"t={T},v1={wrong},v1={right}")


def test_non_utf8_body_is_rejected() -> None:
    raw = b'{"id": "\xff\xfe"}'
    with pytest.raises(SignatureError, match="UTF-8"):
        _verify(raw, sign(raw, STRIPE_SECRET, timestamp=T))


# -- load ---------------------------------------------------------------------------------


def test_load_returns_the_event_dict() -> None:
    loaded = stripe.load(BODY)
    assert loaded["id"] == "evt_1Rp92IE2YllEOQrty5bxSwY3"
    assert loaded["type"] == "checkout.session.completed"


def test_load_rejects_a_body_that_is_not_json() -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        stripe.load(b"id=evt_1&type=charge.refunded")


def test_load_rejects_a_json_array() -> None:
    with pytest.raises(PayloadError, match="object"):
        stripe.load(b"[1, 2, 3]")


def test_load_rejects_deeply_nested_json_without_crashing() -> None:
    with pytest.raises(PayloadError):
        stripe.load(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda e: e.pop("id"), id="no-id"),
        pytest.param(lambda e: e.pop("type"), id="no-type"),
        pytest.param(lambda e: e.pop("data"), id="no-data"),
        pytest.param(lambda e: e["data"].pop("object"), id="no-data-object"),
        pytest.param(lambda e: e["data"].update(object="ch_1"), id="data-object-not-a-dict"),
        pytest.param(lambda e: e.update(id=42), id="id-not-a-string"),
        pytest.param(lambda e: e.pop("created"), id="no-created"),
    ],
)
def test_load_rejects_json_that_is_not_a_stripe_event(broken: Any) -> None:
    payload = fixture("checkout_session_completed_payment")
    broken(payload)
    with pytest.raises(PayloadError):
        stripe.load(encode(payload))


def _thin_event() -> dict[str, Any]:
    """A thin event as event destinations deliver it (``created`` is an RFC 3339 string)."""
    return {
        "id": "evt_test_65R9Ijk8G1ejWr2WlNz16RhCyEDFSQFqW8Kc4HBdHp4",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "livemode": False,
        "created": "2024-09-17T06:20:52.246Z",
        "related_object": {
            "id": "mtr_test_61R9IjkDaYg8Dtrsv41Fk8BGZvBuYV9",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_test_61R9IjkDaYg8Dtrsv41Fk8BGZvBuYV9",
        },
    }


def test_load_accepts_a_thin_event() -> None:
    assert stripe.load(encode(_thin_event()))["object"] == "v2.core.event"


def test_thin_event_means_no_membership_event() -> None:
    assert stripe.parse(stripe.load(encode(_thin_event()))) == []


# -- parse: checkout ----------------------------------------------------------------------


def test_paid_one_time_checkout_grants_the_payment_intent() -> None:
    payload = fixture("checkout_session_completed_payment")
    session = payload["data"]["object"]
    found = _only(payload)
    assert found.provider == "stripe"
    assert found.event_id == "evt_1Rp92IE2YllEOQrty5bxSwY3"
    assert found.event_type == "checkout.session.completed"
    assert found.occurred_at == payload["created"]
    assert found.entitlement == "stripe:pi_3Rp92HE2YllEOQrt10Khp5XV"
    assert found.state is EntitlementState.ACTIVE
    assert found.email == "buyer@example.com"
    assert found.customer == "cus_SkQpGfARLDMyiS"
    assert found.display_name == "test"
    assert found.refs == {
        "checkout_session": session["id"],
        "payment_intent": "pi_3Rp92HE2YllEOQrt10Khp5XV",
    }
    assert found.products == ()


def test_paid_subscription_checkout_grants_the_subscription() -> None:
    payload = fixture("checkout_session_completed_subscription")
    found = _only(payload)
    assert found.entitlement == "stripe:sub_1LNkeSKXBGcbgpbZ7jMqOPSi"
    assert found.state is EntitlementState.ACTIVE
    assert found.email == "chris@gorails.com"
    assert found.customer == "cus_M5wW9RPFk9xNZ5"
    assert found.display_name == "Chris Oliver"
    assert found.refs == {
        "checkout_session": payload["data"]["object"]["id"],
        "subscription": "sub_1LNkeSKXBGcbgpbZ7jMqOPSi",
    }


def test_one_time_checkout_with_an_invoice_is_keyed_by_the_invoice() -> None:
    # invoice.paid for the same purchase then names the same entitlement.
    payload = _with_object("checkout_session_completed_payment", invoice="in_one_time")
    found = _only(payload)
    assert found.entitlement == "stripe:in_one_time"
    assert found.refs["invoice"] == "in_one_time"
    assert found.refs["payment_intent"] == "pi_3Rp92HE2YllEOQrt10Khp5XV"


def test_checkout_email_is_lowercased_and_falls_back_to_customer_email() -> None:
    payload = _with_object(
        "checkout_session_completed_payment",
        customer_details=None,
        customer_email="  Buyer@Example.COM ",
    )
    assert _only(payload).email == "buyer@example.com"


def test_unpaid_checkout_is_pending() -> None:
    payload = _with_object("checkout_session_completed_payment", payment_status="unpaid")
    found = _only(payload)
    assert found.state is EntitlementState.PENDING
    assert found.entitlement == "stripe:pi_3Rp92HE2YllEOQrt10Khp5XV"


def test_async_payment_succeeded_grants_access() -> None:
    payload = fixture("checkout_session_completed_payment")
    payload["type"] = "checkout.session.async_payment_succeeded"
    found = _only(payload)
    assert found.state is EntitlementState.ACTIVE
    assert found.entitlement == "stripe:pi_3Rp92HE2YllEOQrt10Khp5XV"
    assert found.email == "buyer@example.com"


def test_async_payment_failed_ends_the_entitlement() -> None:
    payload = _with_object("checkout_session_completed_payment", payment_status="unpaid")
    payload["type"] = "checkout.session.async_payment_failed"
    found = _only(payload)
    assert found.state is EntitlementState.ENDED
    assert found.entitlement == "stripe:pi_3Rp92HE2YllEOQrt10Khp5XV"


# -- parse: subscriptions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("active", EntitlementState.ACTIVE),
        ("trialing", EntitlementState.ACTIVE),
        ("past_due", EntitlementState.PAST_DUE),
        ("incomplete", EntitlementState.PENDING),
        ("incomplete_expired", EntitlementState.ENDED),
        ("canceled", EntitlementState.ENDED),
        ("unpaid", EntitlementState.ENDED),
        ("paused", EntitlementState.ENDED),
    ],
)
@pytest.mark.parametrize("kind", ["customer.subscription.created", "customer.subscription.updated"])
def test_subscription_status_maps_to_its_entitlement_state(
    kind: str, status: str, state: EntitlementState
) -> None:
    payload = _with_object("customer_subscription_created", status=status)
    payload["type"] = kind
    found = _only(payload)
    assert found.state is state
    assert found.entitlement == f"stripe:{SUBSCRIPTION_ID}"
    assert found.customer == "cus_TA4eA8GQAss9bI"
    assert found.email is None
    assert found.products == SUBSCRIPTION_PRODUCTS
    assert found.refs == {"subscription": SUBSCRIPTION_ID}
    assert found.event_type == kind


def test_subscription_cancelled_at_period_end_keeps_access() -> None:
    payload = fixture("customer_subscription_updated_cancel_at_period_end")
    assert payload["data"]["object"]["cancel_at_period_end"] is True
    found = _only(payload)
    assert found.state is EntitlementState.ACTIVE
    assert found.entitlement == f"stripe:{SUBSCRIPTION_ID}"


def test_deleted_subscription_ends_the_entitlement() -> None:
    found = _only(fixture("customer_subscription_deleted"))
    assert found.state is EntitlementState.ENDED
    assert found.entitlement == f"stripe:{SUBSCRIPTION_ID}"
    assert found.customer == "cus_TA4eA8GQAss9bI"
    assert found.products == SUBSCRIPTION_PRODUCTS


def test_deleted_subscription_ends_even_if_its_status_still_says_active() -> None:
    payload = _with_object("customer_subscription_deleted", status="active")
    assert _only(payload).state is EntitlementState.ENDED


# -- parse: invoices ----------------------------------------------------------------------


def test_invoice_paid_in_the_basil_shape_grants_its_subscription() -> None:
    payload = fixture("invoice_payment_failed")
    payload["type"] = "invoice.paid"
    found = _only(payload)
    assert found.state is EntitlementState.ACTIVE
    assert found.entitlement == "stripe:sub_1234"
    assert found.email == "customer@example.org"
    assert found.customer == "cus_1234"
    assert found.display_name == "Example Customer"
    assert found.products == ("price_1234", "prod_1234")
    assert found.refs == {"invoice": "in_1234", "subscription": "sub_1234"}


def test_invoice_paid_in_the_old_shape_grants_its_subscription() -> None:
    invoice = {
        "id": "in_old",
        "object": "invoice",
        "customer": "cus_old",
        "customer_email": "Old@Example.com",
        "subscription": "sub_old",
        "payment_intent": "pi_old",
        "charge": "ch_old",
        "lines": {"data": [{"price": {"id": "price_old", "product": "prod_old"}}]},
    }
    found = _only(event("invoice.paid", invoice))
    assert found.state is EntitlementState.ACTIVE
    assert found.entitlement == "stripe:sub_old"
    assert found.email == "old@example.com"
    assert found.products == ("price_old", "prod_old")
    assert found.refs == {
        "invoice": "in_old",
        "subscription": "sub_old",
        "payment_intent": "pi_old",
        "charge": "ch_old",
    }


def test_failed_invoice_only_teaches_the_customer_email() -> None:
    found = _only(fixture("invoice_payment_failed"))
    assert found.state is None
    assert found.email == "customer@example.org"
    assert found.customer == "cus_1234"
    assert found.entitlement == "stripe:sub_1234"


# -- parse: refunds and disputes ----------------------------------------------------------


def test_full_refund_ends_the_charged_entitlement() -> None:
    payload = _with_object(
        "charge_refunded",
        refunded=True,
        amount_refunded=1500,
        billing_details={"email": "Payer@Example.com", "name": "Payer"},
    )
    found = _only(payload)
    assert found.state is EntitlementState.ENDED
    assert found.entitlement is None
    assert found.email == "payer@example.com"
    assert found.customer == "cus_0dUMWLtzCTagWs"
    assert found.refs == {"charge": "ch_chargeid", "payment_intent": "pm_1234"}


def test_partial_refund_keeps_access() -> None:
    payload = fixture("charge_refunded")
    assert payload["data"]["object"]["refunded"] is False
    found = _only(payload)
    assert found.state is None
    assert found.refs == {"charge": "ch_chargeid", "payment_intent": "pm_1234"}


DISPUTE_ID = "dp_1JAyTwJSZQVUcJYgPqasUEn1"
DISPUTE_REFS = {
    "dispute": DISPUTE_ID,
    "charge": "ch_fakefakefakefakefake0001",
    "payment_intent": "pi_1JAyTwJSZQVUcJYgBbsz0NuH",
}
DISPUTE_EVENT_TYPES = ("charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed")
# Every status of Stripe's Dispute object, and what it means for access.
DISPUTE_STATUSES = {
    "warning_needs_response": DisputeState.INQUIRY,
    "warning_under_review": DisputeState.INQUIRY,
    "warning_closed": DisputeState.WON,
    "needs_response": DisputeState.OPEN,
    "under_review": DisputeState.OPEN,
    "won": DisputeState.WON,
    "prevented": DisputeState.WON,
    "lost": DisputeState.LOST,
}


def _dispute_event(kind: str, status: str) -> dict[str, Any]:
    """The dispute fixture as a ``kind`` event, with only the Dispute's status changed."""
    obj = fixture("charge_dispute_created")["data"]["object"]
    obj["status"] = status
    return event(kind, obj, created=T, event_id="evt_dispute")


def test_dispute_created_fixture_opens_a_dispute_and_leaves_the_lifecycle_alone() -> None:
    found = _only(fixture("charge_dispute_created"))
    assert found.dispute is DisputeState.OPEN
    assert found.state is None
    assert found.changes_entitlement is True
    assert found.entitlement is None
    assert found.refs == DISPUTE_REFS
    assert found.dispute_id == DISPUTE_ID


@pytest.mark.parametrize("kind", DISPUTE_EVENT_TYPES)
@pytest.mark.parametrize(("status", "expected"), list(DISPUTE_STATUSES.items()))
def test_every_dispute_event_maps_the_disputes_status(
    kind: str, status: str, expected: DisputeState
) -> None:
    found = _only(_dispute_event(kind, status))
    assert found.dispute is expected
    assert found.state is None
    assert found.event_type == kind
    assert found.occurred_at == T
    assert found.refs == DISPUTE_REFS
    assert found.dispute_id == DISPUTE_ID


def test_dispute_states_cover_every_documented_status() -> None:
    assert stripe.DISPUTE_STATES == DISPUTE_STATUSES


@pytest.mark.parametrize("kind", DISPUTE_EVENT_TYPES)
def test_dispute_with_a_status_this_code_does_not_know_counts_as_open(kind: str) -> None:
    assert _only(_dispute_event(kind, "some_future_status")).dispute is DisputeState.OPEN


@pytest.mark.parametrize("dispute", [{}, {"status": None}, {"status": ""}])
def test_dispute_state_without_a_status_is_open(dispute: dict[str, Any]) -> None:
    assert stripe.dispute_state(dispute) is DisputeState.OPEN


def test_dispute_without_a_payment_intent_is_named_by_its_id() -> None:
    obj = fixture("charge_dispute_created")["data"]["object"]
    obj["payment_intent"] = None
    found = _only(event("charge.dispute.updated", obj))
    assert found.refs == {"dispute": DISPUTE_ID, "charge": "ch_fakefakefakefakefake0001"}
    assert found.dispute_id == DISPUTE_ID


@pytest.mark.parametrize(
    "kind", ["charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated"]
)
def test_dispute_funds_events_mean_nothing(kind: str) -> None:
    assert stripe.parse(_dispute_event(kind, "needs_response")) == []


# -- parse: everything else ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["customer.created", "payment_intent.created", "charge.succeeded"])
def test_irrelevant_event_types_mean_nothing(kind: str) -> None:
    assert stripe.parse(event(kind, {"id": "cus_1", "object": "customer"})) == []


def test_test_mode_flag_follows_livemode() -> None:
    test_payload = fixture("customer_subscription_created")
    live_payload = copy.deepcopy(test_payload)
    live_payload["livemode"] = True
    assert _only(test_payload).test_mode is True
    assert _only(live_payload).test_mode is False


def test_event_with_an_unexpected_shape_is_a_payload_error() -> None:
    payload = _with_object("checkout_session_completed_payment", customer_details=["x"])
    with pytest.raises(PayloadError, match="unexpected shape"):
        stripe.parse(payload)


# -- MembershipEvent ----------------------------------------------------------------------


def test_membership_event_survives_a_json_round_trip() -> None:
    original = MembershipEvent(
        provider="stripe",
        event_id="evt_round",
        event_type="charge.dispute.closed",
        occurred_at=1_700_000_000.5,
        email="Someone@Example.com",
        customer="cus_round",
        entitlement="stripe:sub_round",
        state=EntitlementState.PAST_DUE,
        products=("price_a", "prod_a"),
        refs={"charge": "ch_round", "dispute": "dp_round"},
        display_name="Some One",
        test_mode=True,
        dispute=DisputeState.WON,
    )
    assert original.to_json()["dispute"] == "won"
    rebuilt = MembershipEvent.from_json(original.to_json())
    assert rebuilt == original
    assert rebuilt.dispute is DisputeState.WON
    assert rebuilt.email == "someone@example.com"
    assert rebuilt.state is EntitlementState.PAST_DUE
    assert rebuilt.products == ("price_a", "prod_a")


def test_membership_event_without_a_state_round_trips() -> None:
    original = MembershipEvent("stripe", "evt_min", "invoice.payment_failed", 1.0)
    assert original.to_json()["state"] is None
    assert original.to_json()["dispute"] is None
    assert MembershipEvent.from_json(original.to_json()) == original
    assert original.changes_entitlement is False


def _queued_before_disputes_were_apart(**fields: Any) -> dict[str, Any]:
    """An event's JSON as the previous release queued it (no ``dispute`` field)."""
    data = MembershipEvent("stripe", "evt_old", "charge.dispute.created", 1.0).to_json()
    del data["dispute"]
    data["refs"] = {"dispute": "dp_old", "charge": "ch_old"}
    data.update(fields)
    return data


def test_event_queued_as_disputed_reads_as_an_open_dispute_without_a_lifecycle() -> None:
    rebuilt = MembershipEvent.from_json(
        _queued_before_disputes_were_apart(state="disputed", clears_dispute=False)
    )
    assert rebuilt.state is None
    assert rebuilt.dispute is DisputeState.OPEN
    assert rebuilt.dispute_id == "dp_old"


def test_event_queued_as_clearing_a_dispute_reads_as_a_won_dispute() -> None:
    rebuilt = MembershipEvent.from_json(
        _queued_before_disputes_were_apart(state="active", clears_dispute=True)
    )
    assert rebuilt.state is EntitlementState.ACTIVE
    assert rebuilt.dispute is DisputeState.WON


def test_event_queued_without_dispute_fields_has_no_dispute() -> None:
    rebuilt = MembershipEvent.from_json(
        _queued_before_disputes_were_apart(state="ended", clears_dispute=False)
    )
    assert rebuilt.state is EntitlementState.ENDED
    assert rebuilt.dispute is None


@pytest.mark.parametrize(
    ("refs", "named"),
    [
        ({"dispute": "dp_1", "charge": "ch_1", "payment_intent": "pi_1"}, "dp_1"),
        ({"charge": "ch_1", "payment_intent": "pi_1"}, "ch_1"),
        ({"sale": "sale_1", "subscription": "sub_1"}, "sale_1"),
        ({"payment_intent": "pi_1"}, "pi_1"),
        ({"order": "ord_1", "subscription": "sub_1"}, "ord_1"),
        ({"subscription": "sub_1"}, "evt_x"),
        ({}, "evt_x"),
    ],
)
def test_dispute_id_names_the_dispute_else_the_disputed_payment(
    refs: dict[str, str], named: str
) -> None:
    found = MembershipEvent("stripe", "evt_x", "charge.dispute.created", 1.0, refs=refs)
    assert found.dispute_id == named
