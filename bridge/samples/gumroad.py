"""Gumroad sample pings: one membership (a subscription) and its charges.

The subscription id is the purchase id; every sale ping is a charge of its own (a new
``sale_id``: Gumroad's event ids derive from it); subscription pings are dated to the
microsecond so that each is new. Gumroad marks a seller's own test purchase with
``test=true`` on sale pings only: its subscription pings carry no such flag.
"""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

PROVIDER = "gumroad"
# The product id the samples sell when no --product is given.
DEFAULT_PRODUCT = "bridge-sample"
# The seller the samples name unless the bridge checks another (GUMROAD_SELLER_ID).
SELLER = "bridge-sample-seller"
_ID = re.compile(r"[A-Za-z0-9_=+/-]{1,64}")
# The new tier of the subscription_updated sample (an upgrade).
_UPGRADE_TIER = "tier-upgrade"

JSON = dict[str, Any]
_Builder = Callable[[str, str, str, bool, float], JSON]


def purchase_id(digest: str) -> str:
    """A subscription id from a hex digest, spelled as Gumroad's (base64, ``==``)."""
    return base64.urlsafe_b64encode(bytes.fromhex(digest[:32])).decode()


def check_purchase(value: str) -> str:
    """A Gumroad subscription id; ValueError for what none can be."""
    if not _ID.fullmatch(value):
        raise ValueError(
            "a Gumroad purchase id is a subscription id (e.g. GazW4_NBcQy-o7Gjjng7lw==)"
        )
    return value


def _second(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _buyer(purchase: str) -> str:
    """The purchaser id: digits, the same for the whole purchase."""
    return str(int(hashlib.sha256(purchase.encode()).hexdigest()[:12], 16))


def _first_sale(purchase: str) -> str:
    return purchase_id(hashlib.sha256(f"first:{purchase}".encode()).hexdigest())


def _sale(resource: str, **flags: str) -> _Builder:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        sale_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
        ping: JSON = {
            "seller_id": SELLER,
            "product_id": product,
            "product_name": "Sample membership",
            "permalink": product,
            "product_permalink": f"https://seller.gumroad.com/l/{product}",
            "short_product_id": product,
            "email": email,
            "price": "900",
            "gumroad_fee": "146",
            "currency": "usd",
            "quantity": "1",
            "discover_fee_charged": "false",
            "can_contact": "true",
            "referrer": "direct",
            "card": {"visual": "**** **** **** 4242", "type": "visa"},
            "order_number": str(int(now) % 1_000_000_000),
            "sale_id": sale_id,
            "sale_timestamp": _second(now),
            "full_name": "Sample Buyer",
            "purchaser_id": _buyer(purchase),
            "subscription_id": purchase,
            "variants": {"Tier": "Monthly"},
            "is_recurring_charge": "false",
            "recurrence": "monthly",
            "ip_country": "United States",
            "is_gift_receiver_purchase": "false",
            "refunded": "false",
            "resource_name": resource,
            "disputed": "false",
            "dispute_won": "false",
        }
        ping.update(flags)
        if not live:
            ping["test"] = "true"
        return ping

    return build


def _subscription(resource: str, **fields: str) -> _Builder:
    def build(email: str, purchase: str, product: str, live: bool, now: float) -> JSON:
        ping: JSON = {
            "subscription_id": purchase,
            "product_id": product,
            "product_name": "Sample membership",
            "user_id": _buyer(purchase),
            "user_email": email,
            "purchase_ids": [_first_sale(purchase)],
            "created_at": _second(now - 30 * 24 * 3600),
            "charge_occurrence_count": "",
            "recurrence": "monthly",
            "free_trial_ends_at": "",
            "resource_name": resource,
        }
        ping.update(
            {name: _micro(now) if value == "now" else value for name, value in fields.items()}
        )
        if resource == "subscription_updated":
            ping["old_plan"] = _plan("tier-monthly", "Monthly", 900)
            ping["new_plan"] = _plan(_UPGRADE_TIER, "Upgrade", 1900)
        return ping

    return build


def _plan(tier: str, name: str, cents: int) -> JSON:
    return {
        "tier": {"id": tier, "name": name},
        "recurrence": "monthly",
        "price_cents": str(cents),
        "quantity": "1",
    }


# Every sample: event -> (effect, builder), in the order of the README's table.
SAMPLES: dict[str, tuple[str, _Builder]] = {
    "sale": ("grants: a sale (not refunded or disputed)", _sale("sale")),
    "subscription_restarted": (
        "grants: a cancelled membership restarted",
        _subscription("subscription_restarted", restarted_at="now"),
    ),
    "cancellation": (
        "nothing yet: access continues until subscription_ended",
        _subscription(
            "cancellation", cancelled="true", cancelled_at="now", cancelled_by_buyer="true"
        ),
    ),
    "subscription_ended": (
        "ends: the membership ended",
        _subscription("subscription_ended", ended_at="now", ended_reason="cancelled"),
    ),
    "refund": ("ends: the sale refunded in full", _sale("refund", refunded="true")),
    "dispute": (
        "the dispute action (BRIDGE_ON_DISPUTE): a chargeback",
        _sale("dispute", disputed="true"),
    ),
    "dispute_won": (
        "lifts the dispute action: the dispute was won",
        _sale("dispute_won", disputed="true", dispute_won="true"),
    ),
    "subscription_updated": (
        "follows the new plan's product (an upgrade to another tier)",
        _subscription("subscription_updated", type="upgrade", effective_as_of="now"),
    ),
}


def encode(data: JSON) -> bytes:
    """Gumroad's form encoding: ``a[b]=x`` for hashes, ``a[]=x`` for arrays (HTTParty)."""
    pairs: list[tuple[str, str]] = []

    def flatten(value: Any, name: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(inner, f"{name}[{key}]")
        elif isinstance(value, list):
            for inner in value:
                pairs.append((f"{name}[]", str(inner)))
        else:
            pairs.append((name, str(value)))

    for key, value in data.items():
        flatten(value, key)
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote).encode()
