"""Checking an unsigned Gumroad ping against what Gumroad's API says (pure: no I/O).

Without an access token the ping URL is a bearer credential: whoever knows it can post
any sale. With one, every event the worker applies is first compared with the sale
(``GET /v2/sales/:id``) and, for subscription pings, the subscriber
(``GET /v2/subscribers/:id``): the email, the product and the seller must be the ones
the ping claims, and what the ping says happened must have happened at Gumroad. Then the
event's state is the API's, not the ping's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bridge.events import DisputeState, EntitlementState, MembershipEvent, normalize_email
from bridge.providers.gumroad import sale_dispute, sale_state
from bridge.redact import mask_email

# A subscriber's `status` values that mean the subscription is over.
_ENDED_STATUSES = frozenset({"cancelled", "failed_payment", "fixed_subscription_period_ended"})


class GumroadMismatchError(Exception):
    """The ping claims something Gumroad's API does not confirm; retrying will not help."""

    retryable = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"Gumroad ping refused ({code}): {message}")
        self.code = code  # a short reason, for the bridge_gumroad_refused counter


def confirm(
    event: MembershipEvent,
    sale: Mapping[str, Any],
    subscriber: Mapping[str, Any] | None = None,
    *,
    seller_id: str | None = None,
) -> MembershipEvent:
    """The event with Gumroad's state, or GumroadMismatchError saying what does not match."""
    _check_identity(event, sale, subscriber, seller_id)
    _check_claim(event, sale, subscriber)
    state: EntitlementState | None = sale_state(sale)
    if subscriber is not None and _ended(subscriber):
        state = EntitlementState.ENDED
    if event.state is None:
        state = None  # a dispute ping says nothing about the lifecycle
    dispute = sale_dispute(sale)
    if event.dispute is None and dispute is None:
        return dataclasses.replace(event, state=state)
    return dataclasses.replace(event, state=state, dispute=dispute or event.dispute)


def _check_identity(
    event: MembershipEvent,
    sale: Mapping[str, Any],
    subscriber: Mapping[str, Any] | None,
    seller_id: str | None,
) -> None:
    known = {
        normalize_email(str(value))
        for source in (sale, subscriber or {})
        for value in (source.get("email"), source.get("purchase_email"), source.get("user_email"))
        if isinstance(value, str) and value.strip()
    }
    if event.email is not None and known and event.email not in known:
        raise GumroadMismatchError(
            "email",
            f"the ping names {mask_email(event.email)}, Gumroad's sale "
            f"{mask_email(sorted(known)[0])}",
        )
    claimed = {p.removeprefix("product:") for p in event.products if p.startswith("product:")}
    for source in (sale, subscriber or {}):
        product = source.get("product_id")
        if claimed and isinstance(product, str) and product and product not in claimed:
            raise GumroadMismatchError(
                "product", f"the ping names another product than Gumroad's ({product})"
            )
    seller = sale.get("seller_id")
    if seller_id and isinstance(seller, str) and seller and seller != seller_id:
        raise GumroadMismatchError("seller", "Gumroad's sale belongs to another seller")


def _check_claim(
    event: MembershipEvent, sale: Mapping[str, Any], subscriber: Mapping[str, Any] | None
) -> None:
    kind = event.event_type
    if kind == "refund" and event.state is EntitlementState.ENDED:
        if sale_state(sale) is not EntitlementState.ENDED:
            raise GumroadMismatchError("refund", "Gumroad does not report the sale refunded")
    elif kind == "dispute":
        if sale_dispute(sale) is not DisputeState.OPEN:
            raise GumroadMismatchError("dispute", "Gumroad does not report the sale disputed")
    elif kind == "dispute_won":
        if sale_dispute(sale) is not DisputeState.WON:
            raise GumroadMismatchError("dispute_won", "Gumroad does not report the dispute won")
    elif kind == "subscription_ended":
        if not (
            (subscriber is not None and _ended(subscriber))
            or sale_state(sale) is EntitlementState.ENDED
        ):
            raise GumroadMismatchError("ended", "Gumroad does not report the subscription ended")
    elif kind == "subscription_restarted" and subscriber is not None and _ended(subscriber):
        raise GumroadMismatchError("restarted", "Gumroad reports the subscription ended")
    elif kind == "cancellation" and subscriber is not None:
        cancelled = subscriber.get("cancelled_at") or subscriber.get("status") in (
            "pending_cancellation",
            *_ENDED_STATUSES,
        )
        if not cancelled:
            raise GumroadMismatchError("cancelled", "Gumroad does not report a cancellation")


def _ended(subscriber: Mapping[str, Any]) -> bool:
    return bool(subscriber.get("ended_at")) or subscriber.get("status") in _ENDED_STATUSES
