"""Lemon Squeezy sample webhooks: one subscription and the order that started it.

The order, the subscription, its invoices and the customer share one numeric id (the
purchase id); ``updated_at`` carries the microseconds of ``now``, so every sample is a
new snapshot (Lemon Squeezy sends no event id: the bridge derives one from it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

PROVIDER = "lemonsqueezy"
# The product (and variant) id the samples sell when no --product is given.
DEFAULT_PRODUCT = "100001"
# The store the samples come from.
_STORE = 10001
# What one period costs, in cents.
_AMOUNT = 900

JSON = dict[str, Any]
_Builder = Callable[[str, str, str, bool, float], JSON]


def purchase_id(digest: str) -> str:
    """A purchase id from a hex digest (Lemon Squeezy ids are numbers)."""
    return str(100_000_000 + int(digest[:12], 16) % 900_000_000)


def check_purchase(value: str) -> str:
    """A Lemon Squeezy id is a number; ValueError otherwise."""
    if not value.isdigit() or len(value) > 18:
        raise ValueError("a Lemon Squeezy purchase id is a number (the order/subscription id)")
    return value


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ids(product: str) -> tuple[int | str, int | str]:
    """(product id, variant id): a number names both (the products file may list either)."""
    value: int | str = int(product) if product.isdigit() else product
    return value, value


def _webhook(name: str, kind: str, object_id: str, attributes: JSON, live: bool) -> JSON:
    return {
        "meta": {
            "event_name": name,
            "test_mode": not live,
            "webhook_id": str(uuid.uuid4()),
        },
        "data": {
            "type": kind,
            "id": object_id,
            "attributes": {**attributes, "test_mode": not live},
            "relationships": {},
            "links": {"self": f"https://api.lemonsqueezy.com/v1/{kind}/{object_id}"},
        },
    }


def _order(name: str, status: str) -> _Builder:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        product_id, variant_id = _ids(product)
        refunded = {"refunded": 0, "partial_refund": 300, "refunded_full": _AMOUNT}
        amount = refunded.get(status, 0)
        attributes = {
            "store_id": _STORE,
            "customer_id": int(purchase),
            "identifier": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lemonsqueezy:{purchase}")),
            "order_number": int(purchase) % 1_000_000,
            "user_name": "Sample Buyer",
            "user_email": email,
            "currency": "USD",
            "subtotal": _AMOUNT,
            "total": _AMOUNT,
            "status": "refunded" if status == "refunded_full" else status,
            "refunded": status == "refunded_full",
            "refunded_at": _stamp(now) if amount else None,
            "refunded_amount": amount,
            "first_order_item": {
                "id": int(purchase),
                "order_id": int(purchase),
                "product_id": product_id,
                "variant_id": variant_id,
                "product_name": "Sample membership",
                "variant_name": "Monthly",
                "price": _AMOUNT,
                "test_mode": not live,
            },
            "created_at": _stamp(now),
            "updated_at": _stamp(now),
        }
        return _webhook(name, "orders", purchase, attributes, live)

    return build


def _subscription(name: str, status: str, pause: str | None = None) -> _Builder:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        product_id, variant_id = _ids(product)
        ends = status in ("cancelled", "expired")
        attributes = {
            "store_id": _STORE,
            "customer_id": int(purchase),
            "order_id": int(purchase),
            "order_item_id": int(purchase),
            "product_id": product_id,
            "variant_id": variant_id,
            "product_name": "Sample membership",
            "variant_name": "Monthly",
            "user_name": "Sample Buyer",
            "user_email": email,
            "status": status,
            "status_formatted": status.replace("_", " ").title(),
            "card_brand": "visa",
            "card_last_four": "4242",
            "pause": {"mode": pause, "resumes_at": None} if pause else None,
            "cancelled": status == "cancelled",
            "trial_ends_at": None,
            "billing_anchor": 1,
            "renews_at": _stamp(now + 30 * 24 * 3600),
            "ends_at": _stamp(now + 30 * 24 * 3600) if ends else None,
            "created_at": _stamp(now),
            "updated_at": _stamp(now),
        }
        return _webhook(name, "subscriptions", purchase, attributes, live)

    return build


def _invoice(name: str, status: str) -> _Builder:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        attributes = {
            "store_id": _STORE,
            "subscription_id": int(purchase),
            "customer_id": int(purchase),
            "user_name": "Sample Buyer",
            "user_email": email,
            "billing_reason": "renewal",
            "card_brand": "visa",
            "card_last_four": "4242",
            "currency": "USD",
            "status": status,
            "status_formatted": status.title(),
            "refunded": status == "refunded",
            "refunded_at": _stamp(now) if status == "refunded" else None,
            "subtotal": _AMOUNT,
            "total": _AMOUNT,
            "refunded_amount": _AMOUNT if status == "refunded" else 0,
            "created_at": _stamp(now),
            "updated_at": _stamp(now),
        }
        return _webhook(name, "subscription-invoices", purchase, attributes, live)

    return build


# Every sample: event -> (effect, builder), in the order of the README's table.
SAMPLES: dict[str, tuple[str, _Builder]] = {
    "order_created": (
        "grants: an order with status paid (folded into the subscription it started)",
        _order("order_created", "paid"),
    ),
    "subscription_created": (
        "grants: a subscription with status active",
        _subscription("subscription_created", "active"),
    ),
    "subscription_created:on_trial": (
        "grants: a subscription with status on_trial",
        _subscription("subscription_created", "on_trial"),
    ),
    "subscription_updated": (
        "grants: the subscription is active",
        _subscription("subscription_updated", "active"),
    ),
    "subscription_resumed": (
        "grants: a cancelled subscription resumed",
        _subscription("subscription_resumed", "active"),
    ),
    "subscription_unpaused": (
        "grants: a paused subscription unpaused",
        _subscription("subscription_unpaused", "active"),
    ),
    "subscription_payment_success": (
        "grants: a renewal paid",
        _invoice("subscription_payment_success", "paid"),
    ),
    "subscription_payment_recovered": (
        "grants: a failed renewal paid after all",
        _invoice("subscription_payment_recovered", "paid"),
    ),
    "subscription_cancelled": (
        "keeps access until ends_at (status cancelled; subscription_expired ends it)",
        _subscription("subscription_cancelled", "cancelled"),
    ),
    "subscription_updated:past_due": (
        "keeps access while Lemon Squeezy retries (status past_due, grace policy)",
        _subscription("subscription_updated", "past_due"),
    ),
    "subscription_paused:free": (
        "keeps access: paused with pause.mode free",
        _subscription("subscription_paused", "paused", pause="free"),
    ),
    "subscription_paused": (
        "ends: paused with pause.mode void",
        _subscription("subscription_paused", "paused", pause="void"),
    ),
    "subscription_expired": (
        "ends: the subscription expired",
        _subscription("subscription_expired", "expired"),
    ),
    "subscription_updated:unpaid": (
        "ends: status unpaid",
        _subscription("subscription_updated", "unpaid"),
    ),
    "order_refunded": (
        "ends: the order refunded in full",
        _order("order_refunded", "refunded_full"),
    ),
    "order_refunded:partial": (
        "no change: a partial refund",
        _order("order_refunded", "partial_refund"),
    ),
    "subscription_payment_failed": (
        "no change: a failed renewal (the subscription's status decides)",
        _invoice("subscription_payment_failed", "failed"),
    ),
    "subscription_payment_refunded": (
        "no change: a renewal refunded",
        _invoice("subscription_payment_refunded", "refunded"),
    ),
}
