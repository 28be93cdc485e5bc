"""The sample events of ``bridge trigger``: every event the README's tables list, signed as
its provider signs it, read by the bridge's own verifiers and parsers as the table says."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from bridge import trigger
from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.providers import gumroad, lemonsqueezy, stripe
from bridge.samples import SAMPLES, check_purchase, default_product, purchase_key
from tests import gumroad_events, lemonsqueezy_events, stripe_events
from tests.conftest import STRIPE_SECRET

LS_SECRET = "ls-signing-secret-0123456789"
GUMROAD_TOKEN = "gumroad-token-0123456789abcdef0123456789"
SECRETS = {"stripe": STRIPE_SECRET, "lemonsqueezy": LS_SECRET, "gumroad": GUMROAD_TOKEN}
EMAIL = "buyer@example.com"
README = Path(__file__).resolve().parent.parent / "README.md"

A, P, E = EntitlementState.ACTIVE, EntitlementState.PAST_DUE, EntitlementState.ENDED
# What each sample must mean, from the README's tables: (entitlement state, dispute).
EXPECTED: dict[str, dict[str, tuple[EntitlementState | None, DisputeState | None]]] = {
    "stripe": {
        "checkout.session.completed": (A, None),
        "checkout.session.async_payment_succeeded": (A, None),
        "customer.subscription.created": (A, None),
        "customer.subscription.updated": (A, None),
        "customer.subscription.updated:trialing": (A, None),
        "customer.subscription.resumed": (A, None),
        "invoice.paid": (A, None),
        "customer.subscription.updated:past_due": (P, None),
        "customer.subscription.updated:cancel_at_period_end": (A, None),
        "customer.subscription.deleted": (E, None),
        "customer.subscription.updated:canceled": (E, None),
        "customer.subscription.updated:unpaid": (E, None),
        "customer.subscription.updated:incomplete_expired": (E, None),
        "customer.subscription.paused": (E, None),
        "charge.refunded": (E, None),
        "charge.refunded:partial": (None, None),
        "charge.dispute.created": (None, DisputeState.OPEN),
        "charge.dispute.created:inquiry": (None, DisputeState.INQUIRY),
        "charge.dispute.updated": (None, DisputeState.OPEN),
        "charge.dispute.closed": (None, DisputeState.WON),
        "charge.dispute.closed:lost": (None, DisputeState.LOST),
    },
    "lemonsqueezy": {
        "order_created": (A, None),
        "subscription_created": (A, None),
        "subscription_created:on_trial": (A, None),
        "subscription_updated": (A, None),
        "subscription_resumed": (A, None),
        "subscription_unpaused": (A, None),
        "subscription_payment_success": (A, None),
        "subscription_payment_recovered": (A, None),
        "subscription_cancelled": (A, None),
        "subscription_updated:past_due": (P, None),
        "subscription_paused:free": (A, None),
        "subscription_paused": (E, None),
        "subscription_expired": (E, None),
        "subscription_updated:unpaid": (E, None),
        "order_refunded": (E, None),
        "order_refunded:partial": (None, None),
        "subscription_payment_failed": (None, None),
        "subscription_payment_refunded": (None, None),
    },
    "gumroad": {
        "sale": (A, None),
        "subscription_restarted": (A, None),
        "cancellation": (None, None),
        "subscription_ended": (E, None),
        "refund": (E, None),
        "dispute": (None, DisputeState.OPEN),
        "dispute_won": (None, DisputeState.WON),
        "subscription_updated": (A, None),
    },
}
ALL = [(provider, event) for provider, events in SAMPLES.items() for event in events]


def _send(
    provider: str, event: str, *, live: bool = False, product: str | None = None
) -> trigger.Delivery:
    chosen = SAMPLES[provider][event]
    product = product or default_product(provider)
    return trigger.build(
        chosen,
        email=EMAIL,
        purchase=purchase_key(provider, EMAIL, product),
        product=product,
        live=live,
        secret=SECRETS[provider],
        now=time.time(),
    )


def _received(delivery: trigger.Delivery) -> list[MembershipEvent]:
    """What the bridge's web side makes of the request: verify, load, parse."""
    now = time.time()
    if delivery.provider == "stripe":
        stripe.verify(
            delivery.body, delivery.headers["Stripe-Signature"], (STRIPE_SECRET,), now=now
        )
        return stripe.parse(stripe.load(delivery.body))
    if delivery.provider == "lemonsqueezy":
        lemonsqueezy.verify(delivery.body, delivery.headers["X-Signature"], (LS_SECRET,))
        return lemonsqueezy.parse(lemonsqueezy.load(delivery.body))
    token = delivery.path.rsplit("/", 1)[1]
    gumroad.verify(token, GUMROAD_TOKEN)
    payload = gumroad.load(delivery.body, delivery.headers["Content-Type"])
    return gumroad.parse(payload, received_at=now)


def test_every_sample_has_an_expected_meaning_and_nothing_else_is_sampled() -> None:
    assert {p: set(events) for p, events in SAMPLES.items()} == {
        p: set(events) for p, events in EXPECTED.items()
    }


def _readme_events(heading: str) -> set[str]:
    """The event names in the first column of the README table under ``heading``."""
    text = README.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n\n", section.index("|"))]
    names: set[str] = set()
    rows = [line for line in section.splitlines() if line.startswith("|")]
    for row in rows[2:]:  # past the header and its |---| line
        first = row.split("|")[1]
        for token in re.findall(r"`([^`]+)`", first):
            head, *alternatives = token.split("/")
            stem = head.rsplit("." if "." in head else "_", 1)[0]
            join = "." if "." in head else "_"
            names.add(head)
            names.update(f"{stem}{join}{alt}" for alt in alternatives)
    return names


@pytest.mark.parametrize(
    ("heading", "provider", "shape"),
    [
        ("### What Stripe events do", "stripe", r"[a-z_]+\.[a-z_.]+"),
        ("### What Lemon Squeezy events do", "lemonsqueezy", r"(order|subscription)_[a-z_]+"),
        ("### What Gumroad pings do", "gumroad", r"[a-z_]+"),
    ],
)
def test_every_event_the_readme_lists_has_a_sample(heading: str, provider: str, shape: str) -> None:
    listed = {name for name in _readme_events(heading) if re.fullmatch(shape, name)}
    sent = {sample.provider_event for sample in SAMPLES[provider].values()}
    assert listed, heading
    assert listed <= sent, sorted(listed - sent)


@pytest.mark.parametrize(("provider", "event"), ALL)
def test_each_signed_sample_parses_to_what_the_readme_says(provider: str, event: str) -> None:
    delivery = _send(provider, event, live=True)
    (parsed,) = _received(delivery)
    assert parsed.event_type == SAMPLES[provider][event].provider_event
    assert (parsed.state, parsed.dispute) == EXPECTED[provider][event]
    assert parsed.test_mode is False
    assert parsed.email in (EMAIL, None)
    # What the command checked before sending is what the bridge reads.
    assert [(e.dedupe_key, e.state) for e in delivery.events] == [(parsed.dedupe_key, parsed.state)]


@pytest.mark.parametrize(("provider", "event"), ALL)
def test_each_sample_is_a_new_event_on_every_send(provider: str, event: str) -> None:
    first, second = _send(provider, event), _send(provider, event)
    assert first.events[0].dedupe_key != second.events[0].dedupe_key


@pytest.mark.parametrize(
    ("provider", "event"),
    [
        ("stripe", "checkout.session.completed"),
        ("lemonsqueezy", "order_created"),
        ("gumroad", "sale"),
    ],
)
def test_samples_are_test_mode_unless_live(provider: str, event: str) -> None:
    assert _received(_send(provider, event))[0].test_mode is True
    assert _received(_send(provider, event, live=True))[0].test_mode is False


def test_stripe_test_and_live_markers_are_those_stripe_sends() -> None:
    test = json.loads(_send("stripe", "checkout.session.completed").body)
    live = json.loads(_send("stripe", "checkout.session.completed", live=True).body)
    assert (test["livemode"], live["livemode"]) == (False, True)
    assert test["data"]["object"]["id"].startswith("cs_test_")


def test_lemonsqueezy_and_gumroad_test_markers_are_theirs() -> None:
    ls = json.loads(_send("lemonsqueezy", "order_created").body)
    assert ls["meta"]["test_mode"] is True and ls["data"]["attributes"]["test_mode"] is True
    ping = gumroad.load(_send("gumroad", "sale").body, gumroad_events.FORM)
    assert ping["test"] == "true"
    assert "test" not in gumroad.load(_send("gumroad", "sale", live=True).body, gumroad_events.FORM)


@pytest.mark.parametrize(
    ("provider", "grant", "end"),
    [
        ("stripe", "checkout.session.completed", "customer.subscription.deleted"),
        ("stripe", "invoice.paid", "charge.refunded"),
        ("lemonsqueezy", "subscription_created", "subscription_expired"),
        ("gumroad", "sale", "subscription_ended"),
        ("gumroad", "sale", "refund"),
    ],
)
def test_samples_for_one_email_and_product_name_the_same_purchase(
    provider: str, grant: str, end: str
) -> None:
    granted, ended = _send(provider, grant).events[0], _send(provider, end).events[0]
    same_refs = set(granted.refs.items()) & set(ended.refs.items())
    assert granted.entitlement == ended.entitlement or same_refs, (granted, ended)


def test_another_product_or_email_is_another_purchase() -> None:
    base = purchase_key("stripe", EMAIL, "price_a")
    assert purchase_key("stripe", " Buyer@Example.com ", "price_a") == base
    assert purchase_key("stripe", EMAIL, "price_b") != base
    assert purchase_key("stripe", "other@example.com", "price_a") != base
    assert purchase_key("lemonsqueezy", EMAIL, "1").isdigit()


def test_a_given_purchase_id_is_checked_and_stripped_of_its_prefix() -> None:
    assert check_purchase("stripe", "sub_abc123") == "abc123"
    assert check_purchase("lemonsqueezy", "4242") == "4242"
    with pytest.raises(ValueError, match="number"):
        check_purchase("lemonsqueezy", "sub_1")
    with pytest.raises(ValueError, match="Stripe"):
        check_purchase("stripe", "sub_a b")


def test_the_product_given_is_the_one_the_bridge_records() -> None:
    stripe_event = _send("stripe", "customer.subscription.created", product="price_pro").events[0]
    assert "price_pro" in stripe_event.products
    by_product = _send("stripe", "customer.subscription.created", product="prod_pro").events[0]
    assert "prod_pro" in by_product.products
    ls_event = _send("lemonsqueezy", "order_created", product="777").events[0]
    assert {"product:777", "variant:777"} <= set(ls_event.products)
    ping = _send("gumroad", "sale", product="pro").events[0]
    assert {"product:pro", "permalink:pro"} <= set(ping.products)


def test_the_stripe_signature_is_the_one_the_test_builders_compute() -> None:
    delivery = _send("stripe", "invoice.paid")
    header = delivery.headers["Stripe-Signature"]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert header == stripe_events.sign(delivery.body, STRIPE_SECRET, timestamp=timestamp)


def test_the_lemonsqueezy_signature_is_the_hex_hmac_of_the_body() -> None:
    delivery = _send("lemonsqueezy", "subscription_updated")
    assert delivery.headers["X-Signature"] == lemonsqueezy_events.sign(delivery.body, LS_SECRET)
    assert delivery.headers["X-Event-Name"] == "subscription_updated"


def test_a_wrong_secret_does_not_verify() -> None:
    delivery = _send("stripe", "checkout.session.completed")
    with pytest.raises(Exception, match="does not match"):
        stripe.verify(
            delivery.body, delivery.headers["Stripe-Signature"], ("whsec_other",), now=time.time()
        )


def test_gumroad_pings_carry_the_configured_seller_and_a_masked_path() -> None:
    chosen = SAMPLES["gumroad"]["sale"]
    delivery = trigger.build(
        chosen,
        email=EMAIL,
        purchase="sub1",
        product="pro",
        live=True,
        secret=GUMROAD_TOKEN,
        now=time.time(),
        seller_id=gumroad_events.SELLER,
    )
    payload = gumroad.load(delivery.body, gumroad_events.FORM)
    assert gumroad.parse(payload, seller_id=gumroad_events.SELLER)
    assert GUMROAD_TOKEN in delivery.path and GUMROAD_TOKEN not in delivery.shown_path
