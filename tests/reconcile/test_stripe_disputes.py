"""A backfilled Stripe dispute of a subscription's payment, through the engine, end to end.

A Dispute names only its charge and payment intent, and in the API version the SDK speaks
neither names its invoice: `bridge backfill` asks Stripe's Invoice Payments which invoice
(and so which subscription) the disputed payment paid, so the dispute lands on the
subscription the listing taught, whose products the products file knows. The command runs
as in tests/reconcile/test_commands.py: in-process, configured by the environment, against
the Stripe stand-in, a real Redis and the Sotion sandbox.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import redis
from rq import Queue

from bridge.app import create_app
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests.conftest import drain
from tests.reconcile.providers import STRIPE_KEY, Bridge, Clock, find, stripe_env
from tests.standins.server import StandInServer
from tests.standins.stripe import MONTHLY, ONE_TIME, StripeStandIn
from tests.test_stripe_flow import post
from workers import runtime as worker_runtime
from workers.store import Store


@pytest.fixture
def products(tmp_path: Path) -> Path:
    """A products file that lists the monthly plan and the one-time course."""
    path = tmp_path / "products.toml"
    path.write_text(
        f'[[products]]\nname = "Club"\nstripe_prices = ["{MONTHLY[0]}"]\n'
        f'[[products]]\nname = "Course"\nstripe_prices = ["{ONE_TIME[0]}"]\n',
        encoding="utf-8",
    )
    return path


def test_a_backfilled_dispute_of_a_renewal_blocks_the_subscriber_with_a_products_file(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_server: StandInServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
    products: Path,
) -> None:
    disputer = stripe.add_customer("a@renewal-disputed.example")
    sub = stripe.add_subscription(disputer)
    renewal = stripe.renew(sub)
    charge = stripe.charge_of_invoice(renewal)
    intent = stripe.get("charge", charge)["payment_intent"]
    stripe.add_dispute(charge)
    stripe.renew(stripe.add_subscription(stripe.add_customer("a@renewed.example")))
    stripe.add_dispute(stripe.charge_of(stripe.add_checkout(email="a@course-disputed.example")))
    env = {**stripe_env(stripe_server), "BRIDGE_PRODUCTS": str(products)}

    out = bridge.run("backfill", "stripe", **env)

    assert out.code == 0, out.output
    blocked = find(sotion_api, "a@renewal-disputed.example")
    assert blocked.blocked and not blocked.paid
    assert find(sotion_api, "a@renewed.example").paid
    assert find(sotion_api, "a@course-disputed.example").blocked
    # The dispute is the subscription's: no stray purchase of the payment intent alone, and
    # the payment's ids now lead to the subscription (later webhooks of this dispute too).
    store = Store(redis_conn)
    assert set(store.entitlements("a@renewal-disputed.example")) == {f"stripe:{sub}"}
    assert store.entitlement_for("stripe", intent) == f"stripe:{sub}"
    assert store.entitlement_for("stripe", charge) == f"stripe:{sub}"
    # One look-up, for the renewal's dispute; the course's payment was a listed checkout's.
    [call] = stripe.calls_to("/v1/invoice_payments")
    assert call.query["payment[payment_intent]"] == intent
    assert "product not in the products file" not in out.provider("stripe")["skipped"]


def test_a_won_dispute_of_a_renewal_read_from_stripes_events_lifts_the_block(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_clock: Clock,
    stripe_server: StandInServer,
    sotion_api: SotionClient,
    products: Path,
) -> None:
    sub = stripe.add_subscription(stripe.add_customer("a@won.example"))
    dispute = stripe.add_dispute(stripe.charge_of_invoice(stripe.renew(sub)))
    env = {**stripe_env(stripe_server), "BRIDGE_PRODUCTS": str(products)}
    assert bridge.run("backfill", "stripe", **env).code == 0
    assert find(sotion_api, "a@won.example").blocked
    stripe_clock.advance(3)
    # `charge.dispute.closed` names the charge and payment intent only, as the webhook does.
    stripe.update_dispute(dispute, "won")

    out = bridge.run("reconcile", "--provider", "stripe", **env)

    assert out.code == 0, out.output
    member = find(sotion_api, "a@won.example")
    assert member.paid and not member.blocked
    assert len(stripe.calls_to("/v1/invoice_payments")) == 1  # the backfill's, none since


def test_a_dispute_of_a_renewal_read_from_stripes_events_blocks_the_subscriber(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_clock: Clock,
    stripe_server: StandInServer,
    sotion_api: SotionClient,
    products: Path,
) -> None:
    sub = stripe.add_subscription(stripe.add_customer("a@later.example"))
    env = {**stripe_env(stripe_server), "BRIDGE_PRODUCTS": str(products)}
    assert bridge.run("backfill", "stripe", **env).code == 0
    assert find(sotion_api, "a@later.example").paid
    stripe_clock.advance(3)
    # A renewal, then its chargeback, both while the bridge was down; basil's invoice.paid
    # names no payment intent, so only Stripe's Invoice Payments tie the two.
    stripe.add_dispute(stripe.charge_of_invoice(stripe.renew(sub)))

    out = bridge.run("reconcile", "--provider", "stripe", **env)

    assert out.code == 0, out.output
    assert find(sotion_api, "a@later.example").blocked
    assert len(stripe.calls_to("/v1/invoice_payments")) == 1


def test_a_dispute_webhook_of_a_renewal_blocks_the_subscriber_with_a_products_file(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_server: StandInServer,
    sotion_api: SotionClient,
    products: Path,
    settings: Settings,
    redis_conn: redis.Redis,
    queue: Queue,
) -> None:
    sub = stripe.add_subscription(stripe.add_customer("a@webhook.example"))
    env = {**stripe_env(stripe_server), "BRIDGE_PRODUCTS": str(products)}
    assert bridge.run("backfill", "stripe", **env).code == 0
    charge = stripe.charge_of_invoice(stripe.renew(sub))
    stripe.add_dispute(charge)
    [opened] = [e for e in stripe.events if e["type"] == "charge.dispute.created"]
    configured = dataclasses.replace(
        settings,
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=stripe_server.url,
        products_file=products,
    )
    worker_runtime.configure(configured, redis_conn)
    try:
        client = create_app(configured).test_client()
        assert post(client, opened)["queued"] == 1
        drain(queue)
    finally:
        worker_runtime.reset()
    assert find(sotion_api, "a@webhook.example").blocked
    assert [c.query["payment[payment_intent]"] for c in stripe.calls_to("/v1/invoice_payments")]
