"""Stripe webhooks: signature verification and normalization into MembershipEvents.

Semantics per DESIGN §4: checkout sessions, invoices and subscription statuses grant;
cancellation, full refunds and terminal statuses end; a dispute applies the dispute
action; ``past_due`` and ``cancel_at_period_end`` keep access.

Disputes are read from the Dispute object's ``status`` in every ``charge.dispute.*``
event (created, updated, closed), so an inquiry that escalates, and any order of
delivery, end in the status Stripe reports last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import stripe

from bridge.errors import PayloadError, SignatureError
from bridge.events import DisputeState, EntitlementState, MembershipEvent

PROVIDER = "stripe"
# Stripe's own default replay window, in seconds.
TOLERANCE_SECONDS = 300

_SUBSCRIPTION_STATES = {
    "active": EntitlementState.ACTIVE,
    "trialing": EntitlementState.ACTIVE,
    "past_due": EntitlementState.PAST_DUE,
    "incomplete": EntitlementState.PENDING,
    "incomplete_expired": EntitlementState.ENDED,
    "canceled": EntitlementState.ENDED,
    "unpaid": EntitlementState.ENDED,
    "paused": EntitlementState.ENDED,
}
_SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
# A Dispute's `status` (Stripe's docs, "Dispute object"): inquiries (`warning_*`) move no
# funds and are not chargebacks; `prevented` disputes never became one.
DISPUTE_STATES = {
    "warning_needs_response": DisputeState.INQUIRY,
    "warning_under_review": DisputeState.INQUIRY,
    "warning_closed": DisputeState.WON,
    "needs_response": DisputeState.OPEN,
    "under_review": DisputeState.OPEN,
    "won": DisputeState.WON,
    "prevented": DisputeState.WON,
    "lost": DisputeState.LOST,
}
_DISPUTE_EVENTS = frozenset(
    {"charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed"}
)
_CHECKOUT_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
    }
)
# Every event type parse() turns into membership events: what a webhook endpoint subscribes.
HANDLED_EVENTS = frozenset(
    {
        *_CHECKOUT_EVENTS,
        *_SUBSCRIPTION_EVENTS,
        "invoice.paid",
        "invoice.payment_failed",
        "charge.refunded",
        *_DISPUTE_EVENTS,
    }
)


def verify(
    raw: bytes,
    signature_header: str | None,
    secrets: tuple[str, ...],
    *,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Check ``Stripe-Signature`` against every secret (rotation); raise SignatureError.

    The stripe SDK compares the ``v1`` signatures (constant time, other schemes ignored);
    the timestamp is checked here against ``now`` so tests control the clock.
    """
    if not signature_header:
        raise SignatureError("Missing Stripe-Signature header")
    if not signature_header.isascii():
        raise SignatureError("Stripe-Signature is not ASCII")
    timestamp = _timestamp(signature_header)
    try:
        payload = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignatureError("Body is not UTF-8, so it cannot be what Stripe signed") from exc
    last_error: Exception | None = None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, signature_header, secret, tolerance=0)
        except stripe.SignatureVerificationError as exc:
            last_error = exc
            continue
        if timestamp < now - tolerance:
            raise SignatureError("Stripe-Signature timestamp is outside the tolerance zone")
        return
    message = str(getattr(last_error, "user_message", None) or last_error or "no secret")
    raise SignatureError(f"Stripe signature does not match: {message}")


def _timestamp(header: str) -> int:
    for item in header.split(","):
        key, _, value = item.partition("=")  # exactly as the SDK reads it: no stripping
        if key == "t":
            try:
                return int(value)
            except ValueError:
                break
    raise SignatureError("Stripe-Signature has no valid t= timestamp")


def load(raw: bytes) -> dict[str, Any]:
    """Decode a verified body into an event dict; raise PayloadError if it is not one."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("Body is not JSON") from exc
    if not isinstance(event, dict):
        raise PayloadError("Body is not a JSON object")
    if event.get("object") == "v2.core.event":
        return event  # a thin event: acknowledged, nothing to apply
    data = event.get("data")
    if (
        not isinstance(event.get("id"), str)
        or not isinstance(event.get("type"), str)
        or not isinstance(data, dict)
        or not isinstance(data.get("object"), dict)
    ):
        raise PayloadError("Body is not a Stripe event (id, type, data.object)")
    if not isinstance(event.get("created"), int | float):
        raise PayloadError("Stripe event has no created timestamp")
    return event


def parse(event: Mapping[str, Any]) -> list[MembershipEvent]:
    """The membership events one Stripe event means (none for irrelevant types)."""
    try:
        return _parse(event)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        # Signed by Stripe but not shaped as documented: refuse it, never crash on it.
        raise PayloadError(f"Stripe event has an unexpected shape: {type(exc).__name__}") from exc


def _parse(event: Mapping[str, Any]) -> list[MembershipEvent]:
    if event.get("object") == "v2.core.event":
        return []
    kind = str(event.get("type", ""))
    obj = event.get("data", {}).get("object", {})
    base: dict[str, Any] = {
        "provider": PROVIDER,
        "event_id": str(event.get("id", "")),
        "event_type": kind,
        "occurred_at": float(event.get("created") or 0),
        "test_mode": event.get("livemode") is False,
    }
    if kind in _CHECKOUT_EVENTS:
        return _checkout(kind, obj, base)
    if kind in _SUBSCRIPTION_EVENTS:
        return [_subscription(kind, obj, base)]
    if kind in ("invoice.paid", "invoice.payment_failed"):
        return [_invoice(kind, obj, base)]
    if kind == "charge.refunded":
        return [_refund(obj, base)]
    if kind in _DISPUTE_EVENTS:
        return [_dispute(obj, base)]
    return []


def subscription_state(subscription: Mapping[str, Any]) -> EntitlementState:
    """Access meaning of a Subscription object's ``status``."""
    status = str(subscription.get("status", ""))
    return _SUBSCRIPTION_STATES.get(status, EntitlementState.PENDING)


def subscription_products(subscription: Mapping[str, Any]) -> tuple[str, ...]:
    """Price and product ids of a subscription's items."""
    found: list[str] = []
    items = subscription.get("items")
    for item in (items or {}).get("data", []) if isinstance(items, dict) else []:
        found.extend(_price_ids(item.get("price") or item.get("plan")))
    return _unique(found)


def _checkout(kind: str, obj: Mapping[str, Any], base: dict[str, Any]) -> list[MembershipEvent]:
    paid = obj.get("payment_status") in ("paid", "no_payment_required")
    if kind == "checkout.session.async_payment_failed":
        state: EntitlementState | None = EntitlementState.ENDED
    elif paid:
        state = EntitlementState.ACTIVE
    else:
        state = EntitlementState.PENDING  # unpaid: wait for async_payment_succeeded
    subscription = _id(obj.get("subscription"))
    payment_intent = _id(obj.get("payment_intent"))
    # One purchase, one entitlement: invoice.paid names the same purchase by its invoice.
    key = subscription or _id(obj.get("invoice")) or payment_intent or _id(obj.get("id"))
    details = obj.get("customer_details") or {}
    refs = _refs(
        checkout_session=_id(obj.get("id")),
        payment_intent=payment_intent,
        subscription=subscription,
        invoice=_id(obj.get("invoice")),
    )
    return [
        MembershipEvent(
            **base,
            email=details.get("email") or obj.get("customer_email"),
            customer=_id(obj.get("customer")),
            entitlement=f"{PROVIDER}:{key}" if key else None,
            state=state,
            refs=refs,
            display_name=details.get("name"),
        )
    ]


def _subscription(kind: str, obj: Mapping[str, Any], base: dict[str, Any]) -> MembershipEvent:
    if kind == "customer.subscription.deleted":
        state = EntitlementState.ENDED
    else:
        # cancel_at_period_end keeps the status "active" until the deletion: access stays.
        state = subscription_state(obj)
    return MembershipEvent(
        **base,
        customer=_id(obj.get("customer")),
        entitlement=f"{PROVIDER}:{obj.get('id')}",
        state=state,
        products=subscription_products(obj),
        refs=_refs(subscription=_id(obj.get("id"))),
    )


def _invoice(kind: str, obj: Mapping[str, Any], base: dict[str, Any]) -> MembershipEvent:
    subscription = _invoice_subscription(obj)
    invoice_id = _id(obj.get("id"))
    key = subscription or invoice_id
    # A failed renewal changes nothing by itself: the subscription's status (past_due,
    # then unpaid/canceled) carries the decision. It still teaches us the email.
    state = EntitlementState.ACTIVE if kind == "invoice.paid" else None
    products: list[str] = []
    for line in (obj.get("lines") or {}).get("data", []):
        products.extend(_price_ids(line.get("price")))
        pricing = line.get("pricing") or {}
        details = pricing.get("price_details") or {}
        products.extend(v for v in (details.get("price"), details.get("product")) if v)
    return MembershipEvent(
        **base,
        email=obj.get("customer_email"),
        customer=_id(obj.get("customer")),
        entitlement=f"{PROVIDER}:{key}" if key else None,
        state=state,
        products=_unique(products),
        refs=_refs(
            invoice=invoice_id,
            subscription=subscription,
            payment_intent=_id(obj.get("payment_intent")),
            charge=_id(obj.get("charge")),
        ),
        display_name=obj.get("customer_name"),
    )


def _refund(obj: Mapping[str, Any], base: dict[str, Any]) -> MembershipEvent:
    # `refunded` is true only once the whole amount is refunded; partial refunds keep access.
    full = bool(obj.get("refunded"))
    billing = obj.get("billing_details") or {}
    return MembershipEvent(
        **base,
        email=billing.get("email") or obj.get("receipt_email"),
        customer=_id(obj.get("customer")),
        entitlement=None,
        state=EntitlementState.ENDED if full else None,
        refs=_refs(
            charge=_id(obj.get("id")),
            payment_intent=_id(obj.get("payment_intent")),
            invoice=_id(obj.get("invoice")),
        ),
        display_name=billing.get("name"),
    )


def dispute_state(dispute: Mapping[str, Any]) -> DisputeState:
    """Where a Dispute object stands; a status this code does not know counts as open."""
    return DISPUTE_STATES.get(str(dispute.get("status", "")), DisputeState.OPEN)


def _dispute(obj: Mapping[str, Any], base: dict[str, Any]) -> MembershipEvent:
    """A dispute's status: the lifecycle of the purchase is left as it is."""
    return MembershipEvent(
        **base,
        entitlement=None,
        dispute=dispute_state(obj),
        refs=_refs(
            dispute=_id(obj.get("id")),
            charge=_id(obj.get("charge")),
            payment_intent=_id(obj.get("payment_intent")),
        ),
    )


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """The subscription id of an invoice, in the basil shape or the older one."""
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return _id(details.get("subscription")) or _id(invoice.get("subscription"))


def _price_ids(price: Any) -> list[str]:
    if isinstance(price, str):
        return [price]
    if not isinstance(price, dict):
        return []
    return [v for v in (_id(price.get("id")), _id(price.get("product"))) if v]


def _id(value: Any) -> str | None:
    """An id whether the field is a plain id or an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _refs(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))
