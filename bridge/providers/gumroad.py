"""Gumroad pings: URL-token verification and normalization into MembershipEvents.

Semantics per DESIGN §4: a ``sale`` that is not refunded or disputed and a
``subscription_restarted`` grant; a full ``refund`` and ``subscription_ended`` end; a
``dispute`` applies the dispute action and ``dispute_won`` lifts it; a ``cancellation``
keeps access until ``subscription_ended`` arrives.

Gumroad signs nothing (providers.md §3): the secret path segment of the ping URL is the
only proof of origin, and ``seller_id`` a second, weak check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from bridge.errors import ForbiddenError, PayloadError, SignatureError
from bridge.events import DisputeState, EntitlementState, MembershipEvent, parse_timestamp

PROVIDER = "gumroad"
# Gumroad's pings have a few dozen fields; anything far beyond that is not a ping.
MAX_FIELDS = 1000
# Longer derived event ids are replaced by their sha256, so dedupe keys stay bounded.
MAX_EVENT_ID_LENGTH = 200

# Resources that carry the purchase payload (Purchase#payload_for_ping_notification).
_SALE_RESOURCES = frozenset({"sale", "refund", "dispute", "dispute_won"})
# Resources that carry the subscription payload, and the timestamp each is dated by
# (created_at, the subscription's creation, only when Gumroad left the own one out).
_SUBSCRIPTION_TIMESTAMPS = {
    "cancellation": ("cancelled_at", "created_at"),
    "subscription_ended": ("ended_at", "created_at"),
    "subscription_restarted": ("restarted_at", "created_at"),
    "subscription_updated": ("effective_as_of", "created_at"),
}
# Every resource parse() turns into membership events: the resource subscriptions to hold.
HANDLED_EVENTS = frozenset({*_SALE_RESOURCES, *_SUBSCRIPTION_TIMESTAMPS})
_TRUE = frozenset({"true", "1"})
# ``name``, then any number of ``[segment]``s (an empty segment means "append to a list").
_NESTED_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def verify(token: str, configured: str) -> None:
    """Check the secret path segment of the ping URL in constant time; raise SignatureError."""
    # surrogatepass: a token werkzeug decoded with lone surrogates must fail, not raise.
    given = token.encode("utf-8", "surrogatepass")
    expected = configured.encode("utf-8", "surrogatepass")
    # An empty configured token would make an empty path segment a valid credential.
    if not expected or not hmac.compare_digest(given, expected):
        raise SignatureError("Unknown Gumroad ping URL")


def load(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a ping body (form-encoded by default, JSON when so configured) into a dict."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("Gumroad ping body is not UTF-8") from exc
    if media_type == "application/json":
        return _load_json(text)
    # Gumroad's default is application/x-www-form-urlencoded; a missing type is read the same.
    try:
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",  # a %FF that is not UTF-8 is refused, not turned into U+FFFD
            max_num_fields=MAX_FIELDS,
        )
    except ValueError as exc:  # UnicodeDecodeError is one, so is "Max number of fields"
        raise PayloadError(f"Gumroad ping body is not a form: {exc}") from exc
    if not pairs:
        raise PayloadError("Gumroad ping body is empty")
    return _nest(pairs)


def _load_json(text: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("Gumroad ping body is not JSON") from exc
    if not isinstance(payload, dict):
        raise PayloadError("Gumroad ping body is not a JSON object")
    return payload


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Rebuild what HTTParty flattened: ``a[b]=x`` → dict, ``a[]=x`` → list, deeper alike."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        path = _path(key)
        if not path[0]:
            raise PayloadError("Gumroad ping has a field with no name")
        if "" in path[:-1]:
            # `a[][b]` (arrays of hashes): no Gumroad ping has one, and guessing is worse.
            raise PayloadError(f"Gumroad ping field {key!r} nests inside a list")
        node: Any = root  # a dict, or the list the last segment appends to
        for depth, segment in enumerate(path[:-1]):
            wants_list = depth + 2 == len(path) and path[-1] == ""
            child = node.get(segment)
            if child is None:
                child = node[segment] = [] if wants_list else {}
            elif isinstance(child, list) != wants_list or isinstance(child, str):
                raise PayloadError(f"Gumroad ping field {key!r} conflicts with another field")
            node = child
        if path[-1] == "":
            node.append(value)
        elif path[-1] in node:
            # Either a scalar reused as a container or a repeated field: both are ambiguous.
            raise PayloadError(f"Gumroad ping field {key!r} conflicts with another field")
        else:
            node[path[-1]] = value
    return root


def _path(key: str) -> list[str]:
    match = _NESTED_KEY.fullmatch(key)
    if match is None:
        # Gumroad percent-encodes brackets inside key names, so a malformed bracket
        # key is not structure: keep it as the literal name it is.
        return [key]
    base, rest = match.groups()
    return [base, *_SEGMENT.findall(rest)]


def _flag(value: Any) -> bool:
    """A Gumroad boolean: ``"true"`` in a form body, ``true`` in JSON or the API."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return isinstance(value, int) and value == 1


def parse(
    payload: Mapping[str, Any],
    *,
    seller_id: str | None = None,
    received_at: float | None = None,
) -> list[MembershipEvent]:
    """The membership events one Gumroad ping means (none for unknown resources).

    ``received_at`` (the caller's clock) dates refunds and disputes: Gumroad stamps them
    only with the purchase time, which would make them look as old as the sale.
    """
    resource = payload.get("resource_name") or "sale"  # the settings Ping URL may omit it
    if not isinstance(resource, str):
        raise PayloadError("Gumroad resource_name is not a string")
    if resource not in _SALE_RESOURCES and resource not in _SUBSCRIPTION_TIMESTAMPS:
        return []  # a resource we do not handle: acknowledged, whoever it is for
    if seller_id is not None:
        _check_seller(payload, seller_id, resource)
    try:
        return _parse(payload, resource, received_at)
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:
        # Behind the right URL token but not shaped as documented: refuse, never crash.
        raise PayloadError(f"Gumroad ping has an unexpected shape: {type(exc).__name__}") from exc


def _check_seller(payload: Mapping[str, Any], seller_id: str, resource: Any) -> None:
    given = payload.get("seller_id")
    if given is None and isinstance(resource, str) and resource in _SUBSCRIPTION_TIMESTAMPS:
        # Subscription payloads carry no seller_id at all (Subscription::PingNotification):
        # rejecting them would drop every cancellation and ending. The URL token decides.
        return
    if given != seller_id:
        raise ForbiddenError("Ping for another seller")


def _parse(
    payload: Mapping[str, Any], resource: Any, received_at: float | None
) -> list[MembershipEvent]:
    if not isinstance(resource, str):
        raise TypeError("resource_name is not a string")
    if resource in _SALE_RESOURCES:
        return [_sale_event(payload, resource, received_at)]
    if resource in _SUBSCRIPTION_TIMESTAMPS:
        return [_subscription_event(payload, resource)]
    return []


def _sale_event(
    payload: Mapping[str, Any], resource: str, received_at: float | None
) -> MembershipEvent:
    sale_id = _required(payload, "sale_id")
    email = _required(payload, "email")  # every real sale has one
    occurred_at = parse_timestamp(payload.get("sale_timestamp"))
    if occurred_at is None:
        raise PayloadError("Gumroad sale has no readable sale_timestamp")
    if resource != "sale" and received_at is not None:
        # sale_timestamp is when the purchase happened, not the refund or dispute: dated
        # by it, a refund of an earlier charge looks older than the renewal after it.
        occurred_at = max(occurred_at, received_at)
    subscription_id = _text(payload.get("subscription_id"))
    refunded = _flag(payload.get("refunded"))
    disputed = _flag(payload.get("disputed")) and not _flag(payload.get("dispute_won"))
    state: EntitlementState | None
    dispute: DisputeState | None = None
    # The event id names the resource and the charge: a recurring charge has a sale_id
    # of its own (so each renewal is a new event), while Gumroad's retries of one ping
    # only add retry_count (so they merge into one). Gumroad sends no id of its own.
    event_id = f"{resource}:{sale_id}"
    if resource == "refund":
        # The refund ping also fires for partial refunds, with refunded=false: those
        # keep access, as Stripe's and Lemon Squeezy's partial refunds do. A separate id
        # keeps a later full refund of the same sale from merging into the partial one.
        state = EntitlementState.ENDED if refunded else None
        event_id = event_id if refunded else f"{event_id}:partial"
    elif resource in ("dispute", "dispute_won"):
        # A dispute says nothing new about the purchase's lifecycle, except a refund.
        state = EntitlementState.ENDED if refunded else None
        dispute = DisputeState.WON if resource == "dispute_won" else DisputeState.OPEN
    else:
        state = EntitlementState.ENDED if refunded else EntitlementState.ACTIVE
        # A sale pinged again after a chargeback: `disputed` stays true once won.
        if disputed:
            dispute = DisputeState.OPEN
        elif _flag(payload.get("dispute_won")):
            dispute = DisputeState.WON
    key = f"sub_{subscription_id}" if subscription_id else f"sale_{sale_id}"
    return MembershipEvent(
        provider=PROVIDER,
        event_id=_bounded(event_id),
        event_type=resource,
        occurred_at=occurred_at,
        email=email,
        customer=_text(payload.get("purchaser_id")),
        entitlement=f"{PROVIDER}:{key}",
        state=state,
        products=_sale_products(payload),
        refs=_refs(
            sale=f"sale_{sale_id}",
            subscription=f"sub_{subscription_id}" if subscription_id else None,
        ),
        display_name=_text(payload.get("full_name")),
        test_mode=_flag(payload.get("test")),  # set when the seller bought their own product
        dispute=dispute,
    )


def _sale_products(payload: Mapping[str, Any]) -> tuple[str, ...]:
    product_id = _text(payload.get("product_id"))
    short_id = _text(payload.get("short_product_id"))
    permalink = _text(payload.get("permalink"))
    found = [
        f"product:{product_id}" if product_id else None,
        f"permalink:{permalink}" if permalink else None,
        f"product:{short_id}" if short_id else None,
        # short_product_id is the product's unique permalink (the /l/XCBbJ URL); a
        # custom permalink replaces it in `permalink`, yet both URLs keep working.
        f"permalink:{short_id}" if short_id else None,
    ]
    return tuple(dict.fromkeys(p for p in found if p))


def _subscription_event(payload: Mapping[str, Any], resource: str) -> MembershipEvent:
    subscription_id = _required(payload, "subscription_id")
    email = _required(payload, "user_email")  # subscription payloads say user_email, not email
    stamp, occurred_at = _subscription_timestamp(payload, resource)
    product_id = _text(payload.get("product_id"))
    products: tuple[str, ...] = (f"product:{product_id}",) if product_id else ()
    state: EntitlementState | None
    if resource == "subscription_ended":
        state = EntitlementState.ENDED
    elif resource == "subscription_restarted":
        state = EntitlementState.ACTIVE
    elif resource == "subscription_updated":
        state, products = _plan_change(payload, products)
    else:
        # cancellation: cancelled_at is the end of the paid period when the buyer
        # cancels, and access lasts until then; subscription_ended is what revokes.
        state = None
    purchases = _purchase_ids(payload.get("purchase_ids"))
    return MembershipEvent(
        provider=PROVIDER,
        event_id=_bounded(f"{resource}:{subscription_id}:{stamp}"),
        event_type=resource,
        occurred_at=occurred_at,
        email=email,
        customer=_text(payload.get("user_id")),
        entitlement=f"{PROVIDER}:sub_{subscription_id}",
        state=state,
        products=products,
        refs=_refs(
            subscription=f"sub_{subscription_id}",
            # The latest charge: GET /v2/sales/:id on it tells whether the subscription
            # is alive now, and a refund of the first charge long ago does not matter.
            sale=f"sale_{purchases[-1]}" if purchases else None,
        ),
    )


def _subscription_timestamp(payload: Mapping[str, Any], resource: str) -> tuple[str, float]:
    for name in _SUBSCRIPTION_TIMESTAMPS[resource]:
        stamp = _text(payload.get(name))
        if stamp is None:
            continue
        occurred_at = parse_timestamp(payload.get(name))
        if occurred_at is None:
            raise PayloadError(f"Gumroad {resource} has an unreadable {name}")
        return stamp, occurred_at
    raise PayloadError(f"Gumroad {resource} has no timestamp")


def _plan_change(
    payload: Mapping[str, Any], products: tuple[str, ...]
) -> tuple[EntitlementState | None, tuple[str, ...]]:
    """State and products of a tier upgrade or downgrade (tiered memberships only)."""
    new_plan = payload.get("new_plan") or {}
    tier = new_plan.get("tier") or {}
    tier_id = _text(tier.get("id"))
    if tier_id is None:
        return None, products
    if _text(payload.get("type")) == "downgrade":
        # A downgrade takes effect at the end of the paid period: effective_as_of is in
        # the future, and an ACTIVE dated then would make every real event before it
        # (a chargeback, an ending) look stale. The renewal sale carries the new tier.
        return None, products
    return EntitlementState.ACTIVE, (*products, f"variant:{tier_id}")


def _purchase_ids(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str | int) else value
    if not isinstance(items, list):
        raise TypeError("purchase_ids is not a list")
    # HTTParty encodes an empty array as a single blank `purchase_ids[]=`.
    return [text for text in (_text(item) for item in items) if text]


def sale_dispute(sale: Mapping[str, Any]) -> DisputeState | None:
    """Where a sale's dispute stands, as ``GET /v2/sales/:id`` returns it (None: no dispute)."""
    # `chargedback` is "charged back and not reversed"; `disputed` stays true after a
    # won dispute, which `dispute_won` then says.
    if _flag(sale.get("chargedback")) or (
        _flag(sale.get("disputed")) and not _flag(sale.get("dispute_won"))
    ):
        return DisputeState.OPEN
    if _flag(sale.get("disputed")):
        return DisputeState.WON
    return None


def sale_state(sale: Mapping[str, Any]) -> EntitlementState:
    """Lifecycle meaning of a sale as ``GET /v2/sales/:id`` returns it (disputes aside)."""
    if _flag(sale.get("refunded")):  # full refunds only; partially_refunded keeps access
        return EntitlementState.ENDED
    # `dead` is "the subscription is no longer alive"; `ended` is a fixed-length one run
    # out. `cancelled` alone is also true while a cancellation is pending, with access
    # lasting to the end of the paid period, so it decides nothing by itself.
    if _flag(sale.get("dead")) or _flag(sale.get("ended")):
        return EntitlementState.ENDED
    return EntitlementState.ACTIVE


def _required(payload: Mapping[str, Any], name: str) -> str:
    value = _text(payload.get(name))
    if value is None:
        raise PayloadError(f"Gumroad ping has no {name}")
    return value


def _text(value: Any) -> str | None:
    """A scalar field as text (JSON bodies carry numbers); None when absent or blank."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected text, got {type(value).__name__}")
    text = str(value)
    return text if text.strip() else None


def _refs(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def _bounded(event_id: str) -> str:
    if len(event_id) <= MAX_EVENT_ID_LENGTH:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
