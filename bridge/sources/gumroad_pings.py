"""Gumroad's API objects as the pings Gumroad would have sent for them (pure: no I/O).

A sale becomes the fields of its sale ping, a subscriber that is over the
``subscription_ended`` ping; the ping parser (bridge/providers/gumroad.py) then makes the
events, so keys, refs and ids are the webhook path's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bridge.errors import PayloadError
from bridge.events import MembershipEvent, parse_timestamp
from bridge.providers.gumroad import parse
from bridge.sources import SYNTHETIC_PREFIX

logger = logging.getLogger(__name__)

# A subscriber's statuses that mean it is over, and the timestamp saying since when.
_ENDED_STATUSES = {
    "cancelled": "cancelled_at",
    "failed_payment": "failed_at",
    "fixed_subscription_period_ended": "ended_at",
}
# Gumroad's docs: terminated once any of these is set and in the past.
_TERMINAL_STAMPS = ("ended_at", "failed_at", "cancelled_at")
# Stands in for a subscriber with no email while the parser builds the event; removed after.
_NO_EMAIL = "no-email@gumroad.invalid"


def sale_ping(sale: Mapping[str, Any], permalinks: Mapping[str, str]) -> dict[str, Any]:
    """The sale-style ping fields Gumroad would send for ``sale`` (Purchase::PingNotification)."""
    product_id = text(sale.get("product_id"))
    unique = text(sale.get("product_permalink"))  # the API's is the unique permalink
    return {
        "sale_id": sale.get("id"),
        "sale_timestamp": sale.get("created_at"),
        # The ping's email is the one typed at checkout, which the API calls purchase_email;
        # the API's own `email` is the buyer's Gumroad account email when there is one.
        "email": sale.get("purchase_email") or sale.get("email"),
        "seller_id": sale.get("seller_id"),
        "product_id": product_id,
        "permalink": permalinks.get(product_id or "") or unique,  # general_permalink
        "short_product_id": unique,
        "subscription_id": sale.get("subscription_id"),
        "full_name": sale.get("full_name"),
        "purchaser_id": sale.get("purchaser_id"),
        "test": sale.get("test"),
        "disputed": sale.get("disputed"),
        "dispute_won": sale.get("dispute_won"),
    }


def subscriber_events(
    subscriber: Mapping[str, Any], requested_at: float
) -> tuple[MembershipEvent, ...]:
    """ENDED when the subscriber is over, else nothing (alive or a pending cancellation)."""
    stamps = {name: text(subscriber.get(name)) for name in _TERMINAL_STAMPS}
    past = sorted(
        (at, stamp)
        for stamp in stamps.values()
        if stamp and (at := parse_timestamp(stamp)) is not None and at <= requested_at
    )
    status = str(subscriber.get("status"))
    if status not in _ENDED_STATUSES and not past:
        return ()
    # The timestamp of the status's own reason, else the earliest that has passed.
    stamp = stamps.get(_ENDED_STATUSES.get(status, "")) or (past[0][1] if past else None)
    payload = {
        "subscription_id": subscriber.get("id"),
        "product_id": subscriber.get("product_id"),
        # `email` is the subscription's (the ping's user_email); `user_email` the account's.
        "user_email": subscriber.get("email") or subscriber.get("user_email"),
        "user_id": subscriber.get("user_id"),
        "purchase_ids": subscriber.get("purchase_ids") or [],
    }
    try:
        return (ended_event(payload, stamp, requested_at),)
    except PayloadError as exc:
        logger.warning("gumroad_subscriber_unreadable provider=gumroad error=%s", exc)
        return ()


def ended_event(payload: dict[str, Any], stamp: str | None, requested_at: float) -> MembershipEvent:
    """The subscription_ended ping's event, dated by ``stamp`` or else the request time."""
    at = parse_timestamp(stamp) if stamp else None
    if at is None or at > requested_at:
        at, stamp = requested_at, datetime.fromtimestamp(requested_at, UTC).isoformat()
    email = text(payload.get("user_email"))
    body = {**payload, "resource_name": "subscription_ended", "ended_at": stamp}
    (event,) = parse({**body, "user_email": email or _NO_EMAIL})
    return replace(event, event_id=SYNTHETIC_PREFIX + event.event_id, occurred_at=at, email=email)


def text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None
