"""Lemon Squeezy webhooks: signature verification and normalization into MembershipEvents.

Semantics per DESIGN §4: a paid order, an ``active``/``on_trial`` subscription and a paid
renewal grant; ``subscription_expired``, a full refund, ``unpaid`` and a ``void`` pause end;
``cancelled`` (until it expires), ``past_due`` and a ``free`` pause keep access.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from bridge.errors import PayloadError, SignatureError
from bridge.events import EntitlementState, MembershipEvent, parse_timestamp

PROVIDER = "lemonsqueezy"
# Longer derived event ids are replaced by their sha256, so dedupe keys stay bounded.
MAX_EVENT_ID_LENGTH = 200

# X-Signature is a hex SHA-256 digest: exactly 64 ASCII hex digits, nothing around them.
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")

# The JSON:API resource type each relevant event carries.
_ORDER_EVENTS = frozenset({"order_created", "order_refunded"})
_SUBSCRIPTION_EVENTS = frozenset(
    {
        "subscription_created",
        "subscription_updated",
        "subscription_cancelled",
        "subscription_resumed",
        "subscription_expired",
        "subscription_paused",
        "subscription_unpaused",
    }
)
_INVOICE_EVENTS = frozenset(
    {
        "subscription_payment_success",
        "subscription_payment_failed",
        "subscription_payment_recovered",
        "subscription_payment_refunded",
    }
)
_RESOURCE_TYPES = {
    **dict.fromkeys(_ORDER_EVENTS, "orders"),
    **dict.fromkeys(_SUBSCRIPTION_EVENTS, "subscriptions"),
    **dict.fromkeys(_INVOICE_EVENTS, "subscription-invoices"),
}
# Every event name parse() turns into membership events: what a webhook subscribes.
HANDLED_EVENTS = frozenset(_RESOURCE_TYPES)

_ORDER_STATES: dict[str, EntitlementState | None] = {
    "paid": EntitlementState.ACTIVE,
    "pending": EntitlementState.PENDING,
    "failed": EntitlementState.PENDING,
    "refunded": EntitlementState.ENDED,
    "fraudulent": EntitlementState.ENDED,
    # Still paid for the most part: a partial refund neither grants nor ends anything.
    "partial_refund": None,
}
_SUBSCRIPTION_STATES = {
    "on_trial": EntitlementState.ACTIVE,
    "active": EntitlementState.ACTIVE,
    # Access continues until ends_at; subscription_expired is what ends it.
    "cancelled": EntitlementState.ACTIVE,
    "past_due": EntitlementState.PAST_DUE,
    "unpaid": EntitlementState.ENDED,
    "expired": EntitlementState.ENDED,
}


def verify(raw: bytes, signature: str | None, secrets: tuple[str, ...]) -> None:
    """Check ``X-Signature`` (hex HMAC-SHA256 of the body) against every secret (rotation)."""
    if not signature:
        raise SignatureError("Missing X-Signature header")
    if not isinstance(signature, str) or _SIGNATURE.fullmatch(signature) is None:
        raise SignatureError("X-Signature is not a hex SHA-256 digest")
    # Compare the digests, not their spelling: LS writes lowercase hex, but the case of a hex
    # digit is notation, not content, so an uppercased header proves the same thing.
    claimed = bytes.fromhex(signature)
    keys = [key for key in map(_key, secrets) if key]
    if not keys:
        raise SignatureError("No usable Lemon Squeezy signing secret")
    for key in keys:
        if hmac.compare_digest(hmac.new(key, raw, hashlib.sha256).digest(), claimed):
            return
    raise SignatureError("Lemon Squeezy signature does not match")


def _key(secret: str) -> bytes | None:
    """The secret's bytes; None for an empty or unencodable one (it must never verify)."""
    if not isinstance(secret, str) or not secret:
        return None  # an empty key is no secret at all: anyone could sign with it
    try:
        # surrogateescape gives back the original bytes of a secret read from a non-UTF-8 env.
        return secret.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


def load(raw: bytes) -> dict[str, Any]:
    """Decode a verified body into a webhook dict; raise PayloadError if it is not one."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("Body is not JSON") from exc
    if not isinstance(payload, dict):
        raise PayloadError("Body is not a JSON object")
    meta = payload.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("event_name"), str):
        raise PayloadError("Body has no meta.event_name")
    if not meta["event_name"]:
        raise PayloadError("Body has an empty meta.event_name")
    data = payload.get("data")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("type"), str)
        or not _is_id(data.get("id"))
        or not isinstance(data.get("attributes"), dict)
    ):
        raise PayloadError("Body is not a Lemon Squeezy resource (data.type, id, attributes)")
    return payload


def parse(payload: Mapping[str, Any]) -> list[MembershipEvent]:
    """The membership events one Lemon Squeezy webhook means (none for irrelevant events)."""
    try:
        return _parse(payload)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        # Signed by Lemon Squeezy but not shaped as documented: refuse it, never crash on it.
        raise PayloadError(
            f"Lemon Squeezy event has an unexpected shape: {type(exc).__name__}"
        ) from exc


def order_state(attributes: Mapping[str, Any]) -> EntitlementState | None:
    """Access meaning of an Order's ``status`` (None: a partial refund changes nothing)."""
    status = attributes.get("status")
    if not isinstance(status, str) or status not in _ORDER_STATES:
        return EntitlementState.PENDING  # not known to be paid: no access yet
    return _ORDER_STATES[status]


def subscription_state(attributes: Mapping[str, Any]) -> EntitlementState:
    """Access meaning of a Subscription's ``status`` (and ``pause.mode`` when paused)."""
    status = attributes.get("status")
    if not isinstance(status, str):
        return EntitlementState.PENDING
    if status == "paused":
        pause = attributes.get("pause")
        # "free" keeps the service available without payment; "void" (or a pause we cannot
        # read) means the creator cannot offer it, so access is suspended.
        mode = pause.get("mode") if isinstance(pause, Mapping) else None
        return EntitlementState.ACTIVE if mode == "free" else EntitlementState.ENDED
    return _SUBSCRIPTION_STATES.get(status, EntitlementState.PENDING)


def _parse(payload: Mapping[str, Any]) -> list[MembershipEvent]:
    meta = payload["meta"]
    name = meta["event_name"]
    if not isinstance(name, str):
        raise PayloadError("Lemon Squeezy event has no event name")
    expected_type = _RESOURCE_TYPES.get(name)
    if expected_type is None:
        return []  # license keys, affiliates and events we do not know: nothing to apply
    data = payload["data"]
    kind = data["type"]
    if kind != expected_type:
        raise PayloadError(f"Lemon Squeezy {name} carries {kind!r}, not {expected_type!r}")
    attributes = data["attributes"]
    if not isinstance(attributes, Mapping):
        raise PayloadError("Lemon Squeezy data.attributes is not an object")
    object_id = _required_id(data.get("id"), "data.id")
    occurred_at, stamp = _when(attributes)
    base: dict[str, Any] = {
        "provider": PROVIDER,
        "event_id": _event_id(name, kind, object_id, stamp, str(attributes.get("status") or "")),
        "event_type": name,
        "occurred_at": occurred_at,
        "email": _email(meta, attributes),
        "customer": _prefixed("customer_", attributes.get("customer_id")),
        "display_name": _text(attributes.get("user_name")),
        "test_mode": bool(meta.get("test_mode") or attributes.get("test_mode")),
    }
    if name in _ORDER_EVENTS:
        return [_order(name, object_id, attributes, base)]
    if name in _SUBSCRIPTION_EVENTS:
        return [_subscription(name, object_id, attributes, base)]
    return [_invoice(name, object_id, attributes, base)]


def _order(
    name: str, order_id: str, attributes: Mapping[str, Any], base: dict[str, Any]
) -> MembershipEvent:
    state = order_state(attributes)
    if name == "order_refunded" and state is not EntitlementState.ENDED:
        # A refund event can end a purchase (full refund, fraud) but never grant or suspend
        # one, whatever status its snapshot shows.
        state = None
    item = attributes.get("first_order_item") or {}
    # No entitlement key: an order that started a subscription is the same purchase as that
    # subscription, and only the worker (ledger, API) can tell which it is.
    return MembershipEvent(
        **base,
        entitlement=None,
        state=state,
        products=_products(item.get("product_id"), item.get("variant_id")),
        refs={"order": f"order_{order_id}"},
    )


def _subscription(
    name: str, subscription_id: str, attributes: Mapping[str, Any], base: dict[str, Any]
) -> MembershipEvent:
    if name == "subscription_expired":
        state = EntitlementState.ENDED  # the end of the grace period, whatever status says
    else:
        state = subscription_state(attributes)
    return MembershipEvent(
        **base,
        entitlement=f"{PROVIDER}:sub_{subscription_id}",
        state=state,
        products=_products(attributes.get("product_id"), attributes.get("variant_id")),
        refs=_refs(
            subscription=f"sub_{subscription_id}",
            order=_prefixed("order_", attributes.get("order_id")),
        ),
    )


def _invoice(
    name: str, invoice_id: str, attributes: Mapping[str, Any], base: dict[str, Any]
) -> MembershipEvent:
    subscription_id = _required_id(attributes.get("subscription_id"), "subscription_id")
    paid = attributes.get("status") == "paid"
    if name in ("subscription_payment_success", "subscription_payment_recovered") and paid:
        state: EntitlementState | None = EntitlementState.ACTIVE
    else:
        # A failed renewal changes nothing by itself (the subscription's own status, past_due
        # then unpaid/expired, carries the decision), and a refunded renewal does not end the
        # subscription. Both still teach the ledger the email of the subscription.
        state = None
    return MembershipEvent(
        **base,
        entitlement=f"{PROVIDER}:sub_{subscription_id}",
        state=state,
        products=_products(attributes.get("product_id"), attributes.get("variant_id")),
        refs={"subscription": f"sub_{subscription_id}", "invoice": f"invoice_{invoice_id}"},
    )


def _event_id(name: str, kind: str, object_id: str, stamp: str, status: str) -> str:
    """A stable id for a webhook that carries none.

    Lemon Squeezy sends no event or delivery id. Its retries and manual resends deliver the
    same object snapshot, so they map to the same id and merge; two distinct events about
    one object differ in their name or in the object's ``updated_at``, so they stay apart.
    ``updated_at`` has whole seconds only: the status is part of the id too, so two
    changes of status within one second are not merged into one.
    """
    event_id = f"{name}:{kind}:{object_id}:{stamp}" + (f":{status}" if status else "")
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        return hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return event_id


def _when(attributes: Mapping[str, Any]) -> tuple[float, str]:
    """When the snapshot was taken (``updated_at``, else ``created_at``) and its raw text."""
    for field in ("updated_at", "created_at"):
        value = attributes.get(field)
        moment = parse_timestamp(value)
        # JSON allows NaN and Infinity; neither can be ordered against the ledger.
        if moment is not None and math.isfinite(moment):
            return moment, str(value)
    raise PayloadError("Lemon Squeezy event has no readable updated_at or created_at")


def _email(meta: Mapping[str, Any], attributes: Mapping[str, Any]) -> str | None:
    """The Sotion login email passed at checkout if any, else the buyer's email."""
    custom = meta.get("custom_data")
    # custom_data is whatever the creator's checkout link put there: use it only when it
    # holds something email-shaped, otherwise fall back to the buyer.
    if isinstance(custom, Mapping):
        for key in ("sotion_email", "email"):
            value = custom.get(key)
            if isinstance(value, str) and "@" in value:
                return value
    email = attributes.get("user_email")
    if email is None:
        return None
    if not isinstance(email, str):
        raise PayloadError("Lemon Squeezy user_email is not a string")
    return email if email.strip() else None


def _is_id(value: Any) -> bool:
    """JSON:API ids are strings; numbers are accepted as the same id."""
    if isinstance(value, bool):
        return False
    return (isinstance(value, str) and value != "") or isinstance(value, int)


def _id(value: Any) -> str | None:
    """An optional id as text; absent when null or empty, an error when of another type."""
    if value is None or value == "":
        return None
    if not _is_id(value):
        raise PayloadError(f"Lemon Squeezy id of unexpected type {type(value).__name__}")
    return str(value)


def _required_id(value: Any, field: str) -> str:
    found = _id(value)
    if found is None:
        raise PayloadError(f"Lemon Squeezy event has no {field}")
    return found


def _prefixed(prefix: str, value: Any) -> str | None:
    found = _id(value)
    return f"{prefix}{found}" if found is not None else None


def _products(product_id: Any, variant_id: Any) -> tuple[str, ...]:
    found: list[str] = []
    for label, value in (("product", product_id), ("variant", variant_id)):
        known = _id(value)
        if known is not None:
            found.append(f"{label}:{known}")
    return tuple(found)


def _text(value: Any) -> str | None:
    """A display string; anything else is dropped (a name is cosmetic, never worth a 400)."""
    return value if isinstance(value, str) and value.strip() else None


def _refs(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}
