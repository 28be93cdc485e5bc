"""Stripe sample events: one subscription purchase, as API version 2024-06-20 shapes it.

That version's invoices and charges still name each other (``invoice.charge``,
``charge.invoice``), so the bridge ties a refund or a dispute to the subscription
without the Stripe API. The ids derive from the purchase id: ``sub_<id>``, ``cus_<id>``,
``in_<id>``, ``ch_<id>``, ``pi_<id>``, ``cs_<id>``, ``dp_<id>``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

PROVIDER = "stripe"
# The price the samples sell when no --product is given.
DEFAULT_PRODUCT = "price_bridge_sample"
# The API version whose object shapes the samples follow.
API_VERSION = "2024-06-20"
# What one period costs, in cents.
_AMOUNT = 900
# A month, in seconds (the subscription's billing period).
_PERIOD = 30 * 24 * 3600
_PREFIXES = ("sub_", "cus_", "in_", "ch_", "pi_", "cs_test_", "cs_live_", "cs_", "dp_")
_ID = re.compile(r"[A-Za-z0-9_]{1,64}")

JSON = dict[str, Any]


def purchase_id(digest: str) -> str:
    """A purchase id from a hex digest."""
    return f"bridge{digest[:14]}"


def check_purchase(value: str) -> str:
    """``sub_abc`` or ``abc`` → ``abc``; ValueError for what no Stripe id can hold."""
    for prefix in _PREFIXES:
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    if not _ID.fullmatch(value):
        raise ValueError("a Stripe purchase id is letters, digits and _ (e.g. sub_abc123)")
    return value


def _prices(product: str) -> tuple[str, str]:
    """(price id, product id): ``prod_...`` names the product, anything else the price."""
    if product.startswith("prod_"):
        return f"price_{product.removeprefix('prod_')}", product
    return product, "prod_bridge_sample"


def _event(kind: str, obj: JSON, live: bool, now: float) -> JSON:
    return {
        "id": f"evt_{'1' if live else 'test'}{uuid.uuid4().hex[:20]}",
        "object": "event",
        "api_version": API_VERSION,
        "created": int(now),
        "data": {"object": obj},
        "livemode": live,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }


def _price(product: str, live: bool) -> JSON:
    price, product_id = _prices(product)
    return {
        "id": price,
        "object": "price",
        "active": True,
        "currency": "usd",
        "livemode": live,
        "product": product_id,
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": _AMOUNT,
    }


def _subscription(purchase: str, product: str, live: bool, now: float, status: str) -> JSON:
    start = int(now)
    return {
        "id": f"sub_{purchase}",
        "object": "subscription",
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "current_period_end": start + _PERIOD,
        "current_period_start": start,
        "customer": f"cus_{purchase}",
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{purchase}",
                    "object": "subscription_item",
                    "price": _price(product, live),
                    "quantity": 1,
                    "subscription": f"sub_{purchase}",
                }
            ],
            "has_more": False,
        },
        "latest_invoice": f"in_{purchase}",
        "livemode": live,
        "metadata": {},
        "pause_collection": None,
        "status": status,
    }


def _status(status: str, **changes: Any) -> Callable[[str, str, str, bool, float], JSON]:
    """A ``customer.subscription.updated`` whose subscription is in ``status``."""

    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        obj = _subscription(purchase, product, live, now, status)
        obj.update(changes)
        if status in ("canceled", "incomplete_expired"):
            obj.update(canceled_at=int(now), ended_at=int(now))
        return _event("customer.subscription.updated", obj, live, now)

    return build


def _subscription_event(kind: str, status: str) -> Callable[[str, str, str, bool, float], JSON]:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        obj = _subscription(purchase, product, live, now, status)
        if kind == "customer.subscription.deleted":
            obj.update(canceled_at=int(now), ended_at=int(now))
        return _event(kind, obj, live, now)

    return build


def _checkout(kind: str) -> Callable[[str, str, str, bool, float], JSON]:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        session = {
            "id": f"cs_{'live' if live else 'test'}_{purchase}",
            "object": "checkout.session",
            "amount_subtotal": _AMOUNT,
            "amount_total": _AMOUNT,
            "created": int(now),
            "currency": "usd",
            "customer": f"cus_{purchase}",
            "customer_creation": "always",
            "customer_details": {"email": email, "name": "Sample Buyer", "phone": None},
            "customer_email": None,
            "invoice": f"in_{purchase}",
            "livemode": live,
            "metadata": {},
            "mode": "subscription",
            "payment_intent": None,
            "payment_status": "paid",
            "status": "complete",
            "subscription": f"sub_{purchase}",
        }
        return _event(kind, session, live, now)

    return build


def _invoice_paid(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
    invoice = {
        "id": f"in_{purchase}",
        "object": "invoice",
        "amount_due": _AMOUNT,
        "amount_paid": _AMOUNT,
        "billing_reason": "subscription_cycle",
        "charge": f"ch_{purchase}",
        "created": int(now),
        "currency": "usd",
        "customer": f"cus_{purchase}",
        "customer_email": email,
        "customer_name": "Sample Buyer",
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{purchase}",
                    "object": "line_item",
                    "amount": _AMOUNT,
                    "price": _price(product, live),
                    "quantity": 1,
                    "type": "subscription",
                }
            ],
            "has_more": False,
        },
        "livemode": live,
        "paid": True,
        "payment_intent": f"pi_{purchase}",
        "status": "paid",
        "subscription": f"sub_{purchase}",
    }
    return _event("invoice.paid", invoice, live, now)


def _refund(refunded: int) -> Callable[[str, str, str, bool, float], JSON]:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        charge = {
            "id": f"ch_{purchase}",
            "object": "charge",
            "amount": _AMOUNT,
            "amount_captured": _AMOUNT,
            "amount_refunded": refunded,
            "billing_details": {"email": email, "name": "Sample Buyer"},
            "captured": True,
            "created": int(now),
            "currency": "usd",
            "customer": f"cus_{purchase}",
            "invoice": f"in_{purchase}",
            "livemode": live,
            "paid": True,
            "payment_intent": f"pi_{purchase}",
            "receipt_email": email,
            "refunded": refunded >= _AMOUNT,
            "status": "succeeded",
        }
        return _event("charge.refunded", charge, live, now)

    return build


def _dispute(kind: str, status: str) -> Callable[[str, str, str, bool, float], JSON]:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        dispute = {
            "id": f"dp_{purchase}",
            "object": "dispute",
            "amount": _AMOUNT,
            "charge": f"ch_{purchase}",
            "created": int(now),
            "currency": "usd",
            "is_charge_refundable": False,
            "livemode": live,
            "metadata": {},
            "payment_intent": f"pi_{purchase}",
            "reason": "fraudulent",
            "status": status,
        }
        return _event(kind, dispute, live, now)

    return build


# Every sample: event -> (effect, builder), in the order of the README's table.
SAMPLES: dict[str, tuple[str, Callable[[str, str, str, bool, float], JSON]]] = {
    "checkout.session.completed": (
        "grants: a subscription Checkout paid (payment_status=paid)",
        _checkout("checkout.session.completed"),
    ),
    "checkout.session.async_payment_succeeded": (
        "grants: a Checkout's delayed payment succeeded",
        _checkout("checkout.session.async_payment_succeeded"),
    ),
    "customer.subscription.created": (
        "grants: a subscription with status active",
        _subscription_event("customer.subscription.created", "active"),
    ),
    "customer.subscription.updated": (
        "grants: the subscription is active",
        _status("active"),
    ),
    "customer.subscription.updated:trialing": (
        "grants: the subscription is trialing",
        _status("trialing"),
    ),
    "customer.subscription.resumed": (
        "grants: a paused subscription resumed",
        _subscription_event("customer.subscription.resumed", "active"),
    ),
    "invoice.paid": ("grants: a renewal paid", _invoice_paid),
    "customer.subscription.updated:past_due": (
        "keeps access while Stripe retries the payment (status past_due)",
        _status("past_due"),
    ),
    "customer.subscription.updated:cancel_at_period_end": (
        "keeps access until customer.subscription.deleted (cancel_at_period_end=true)",
        _status("active", cancel_at_period_end=True),
    ),
    "customer.subscription.deleted": (
        "ends: the subscription is over",
        _subscription_event("customer.subscription.deleted", "canceled"),
    ),
    "customer.subscription.updated:canceled": ("ends: status canceled", _status("canceled")),
    "customer.subscription.updated:unpaid": ("ends: status unpaid", _status("unpaid")),
    "customer.subscription.updated:incomplete_expired": (
        "ends: status incomplete_expired",
        _status("incomplete_expired"),
    ),
    "customer.subscription.paused": (
        "ends: status paused",
        _subscription_event("customer.subscription.paused", "paused"),
    ),
    "charge.refunded": ("ends: the whole amount refunded", _refund(_AMOUNT)),
    "charge.refunded:partial": ("no change: a partial refund keeps access", _refund(300)),
    "charge.dispute.created": (
        "the dispute action (BRIDGE_ON_DISPUTE): a chargeback, status needs_response",
        _dispute("charge.dispute.created", "needs_response"),
    ),
    "charge.dispute.created:inquiry": (
        "none by default (BRIDGE_ON_INQUIRY): an inquiry, status warning_needs_response",
        _dispute("charge.dispute.created", "warning_needs_response"),
    ),
    "charge.dispute.updated": (
        "the dispute action: the chargeback is under_review",
        _dispute("charge.dispute.updated", "under_review"),
    ),
    "charge.dispute.closed": (
        "lifts the bridge's block: the dispute was won",
        _dispute("charge.dispute.closed", "won"),
    ),
    "charge.dispute.closed:lost": (
        "stays as a chargeback: the dispute was lost",
        _dispute("charge.dispute.closed", "lost"),
    ),
}
