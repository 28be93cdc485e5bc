"""Building and signing Lemon Squeezy webhooks for tests, from the shared fixtures or by hand.

Mirrors ``tests/stripe_events.py``: :func:`fixture` loads an example payload, :func:`order`
and :func:`subscription` set the fields the bridge reads (object id, status, email,
``updated_at``), :func:`encode` and :func:`headers` make the raw body and the headers
Lemon Squeezy sends with it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Copies of shared/fixtures/lemonsqueezy (provenance in tests/fixtures/SOURCES.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lemonsqueezy"

JSONObject = dict[str, Any]


def fixture(name: str) -> JSONObject:
    """A Lemon Squeezy example payload (tests/fixtures/lemonsqueezy/<name>.json)."""
    data: JSONObject = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def timestamp(unix: float) -> str:
    """A Unix time as Lemon Squeezy writes ``created_at``/``updated_at`` (whole seconds)."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def webhook(
    event_name: str,
    base: str,
    object_id: str,
    attributes: JSONObject,
    *,
    custom_data: JSONObject | None = None,
) -> JSONObject:
    """The fixture ``base`` as the webhook ``event_name`` about object ``object_id`` (live mode)."""
    payload = fixture(base)
    payload["meta"] = {"event_name": event_name, "test_mode": False}
    if custom_data is not None:
        payload["meta"]["custom_data"] = custom_data
    payload["data"]["id"] = object_id
    payload["data"]["attributes"].update(attributes, test_mode=False)
    return payload


def order(
    event_name: str = "order_created",
    status: str = "paid",
    *,
    order_id: str,
    email: str,
    updated_at: float,
    created_at: float | None = None,
    customer_id: int | None = None,
) -> JSONObject:
    """An Order webhook (``order_created``/``order_refunded``) in this status."""
    attributes: JSONObject = {
        "status": status,
        "user_email": email,
        "created_at": timestamp(updated_at if created_at is None else created_at),
        "updated_at": timestamp(updated_at),
        "refunded": status == "refunded",
    }
    if customer_id is not None:
        attributes["customer_id"] = customer_id
    return webhook(event_name, "order_created", order_id, attributes)


def subscription(
    event_name: str,
    status: str,
    *,
    subscription_id: str,
    email: str,
    updated_at: float,
    created_at: float | None = None,
    order_id: str | None = None,
    customer_id: int | None = None,
    pause_mode: str | None = None,
) -> JSONObject:
    """A Subscription webhook in this status (``order_id``: the order that started it)."""
    attributes: JSONObject = {
        "status": status,
        "pause": {"mode": pause_mode, "resumes_at": None} if pause_mode else None,
        "user_email": email,
        "order_id": int(order_id) if order_id is not None else None,
        "created_at": timestamp(updated_at if created_at is None else created_at),
        "updated_at": timestamp(updated_at),
    }
    if customer_id is not None:
        attributes["customer_id"] = customer_id
    return webhook(event_name, "subscription_created", subscription_id, attributes)


def encode(payload: JSONObject) -> bytes:
    """The raw body Lemon Squeezy would send."""
    return json.dumps(payload).encode()


def sign(body: bytes, secret: str) -> str:
    """The ``X-Signature`` header: the hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(payload: JSONObject, body: bytes, secret: str) -> dict[str, str]:
    """The headers Lemon Squeezy sends with ``body`` (the encoding of ``payload``)."""
    return {
        "X-Signature": sign(body, secret),
        "X-Event-Name": str(payload["meta"]["event_name"]),
        "Content-Type": "application/json",
    }
