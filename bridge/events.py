"""The normalized MembershipEvent: the seam between the web side and the workers."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class EntitlementState(StrEnum):
    """What an event says about one entitlement (a subscription or a one-time order)."""

    PENDING = "pending"  # started but not paid yet: no access
    ACTIVE = "active"  # paid and current: grants access
    PAST_DUE = "past_due"  # renewal failed, provider retrying: access per grace policy
    ENDED = "ended"  # cancelled, expired, refunded: no access

    @property
    def precedence(self) -> int:
        """Tie-breaker for events with equal timestamps: the later stage of a lifecycle wins."""
        return _PRECEDENCE[self]


_PRECEDENCE = {
    EntitlementState.PENDING: 0,
    EntitlementState.ACTIVE: 1,
    EntitlementState.PAST_DUE: 2,
    EntitlementState.ENDED: 3,
}


class DisputeState(StrEnum):
    """Where one dispute of a payment stands (Stripe's statuses, Gumroad's pings)."""

    INQUIRY = "inquiry"  # an inquiry or retrieval: no funds withdrawn, not a chargeback
    OPEN = "open"  # a formal dispute (chargeback): funds withdrawn, not decided yet
    WON = "won"  # decided for the seller, or an inquiry closed without a chargeback
    LOST = "lost"  # decided for the buyer: the chargeback stands

    @property
    def precedence(self) -> int:
        """Tie-breaker for equal timestamps: the later stage wins (lost over won)."""
        return _DISPUTE_PRECEDENCE[self]


_DISPUTE_PRECEDENCE = {
    DisputeState.INQUIRY: 0,
    DisputeState.OPEN: 1,
    DisputeState.WON: 2,
    DisputeState.LOST: 3,
}


@dataclass(frozen=True)
class MembershipEvent:
    """One provider event, normalized.

    ``state`` is the entitlement's lifecycle (None: the event says nothing about it);
    ``dispute`` is where a dispute of one of its payments stands, kept apart from the
    lifecycle so a chargeback and a cancellation arriving in any order end the same. With
    both None the event changes no entitlement but teaches the ledger something (e.g.
    which email a customer id belongs to). ``entitlement`` None means the entitlement
    must be resolved from ``refs`` (e.g. a dispute names only a charge).
    """

    provider: str
    event_id: str
    event_type: str
    occurred_at: float
    email: str | None = None
    customer: str | None = None
    entitlement: str | None = None
    state: EntitlementState | None = None
    products: tuple[str, ...] = ()
    refs: Mapping[str, str] = field(default_factory=dict)
    display_name: str | None = None
    test_mode: bool = False
    dispute: DisputeState | None = None

    def __post_init__(self) -> None:
        if self.email is not None:
            object.__setattr__(self, "email", normalize_email(self.email))
        if not isinstance(self.display_name, str | None):
            object.__setattr__(self, "display_name", None)  # e.g. `"name": false`

    @property
    def dispute_id(self) -> str:
        """Which dispute ``dispute`` is about: the dispute's id, else the disputed payment."""
        for name in ("dispute", "charge", "sale", "payment_intent", "order"):
            ref = self.refs.get(name)
            if ref:
                return ref
        return self.event_id

    @property
    def changes_entitlement(self) -> bool:
        """True when the event says something about an entitlement's lifecycle or disputes."""
        return self.state is not None or self.dispute is not None

    @property
    def dedupe_key(self) -> str:
        """Stable key of this event for duplicate detection."""
        return f"{self.provider}:{self.event_id}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict (RQ's JSON serializer carries it to the worker)."""
        return {
            "provider": self.provider,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": self.occurred_at,
            "email": self.email,
            "customer": self.customer,
            "entitlement": self.entitlement,
            "state": self.state.value if self.state is not None else None,
            "products": list(self.products),
            "refs": dict(self.refs),
            "display_name": self.display_name,
            "test_mode": self.test_mode,
            "dispute": self.dispute.value if self.dispute is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MembershipEvent:
        """Rebuild an event from :meth:`to_json` output."""
        state = data.get("state")
        dispute = data.get("dispute")
        if state == "disputed":  # queued before disputes were kept apart from the lifecycle
            state, dispute = None, DisputeState.OPEN.value
        elif data.get("clears_dispute"):
            dispute = DisputeState.WON.value
        return cls(
            provider=str(data["provider"]),
            event_id=str(data["event_id"]),
            event_type=str(data["event_type"]),
            occurred_at=float(data["occurred_at"]),
            email=data.get("email"),
            customer=data.get("customer"),
            entitlement=data.get("entitlement"),
            state=EntitlementState(state) if state is not None else None,
            products=tuple(data.get("products") or ()),
            refs=dict(data.get("refs") or {}),
            display_name=data.get("display_name"),
            test_mode=bool(data.get("test_mode", False)),
            dispute=DisputeState(dispute) if dispute is not None else None,
        )


def parse_timestamp(value: object) -> float | None:
    """Unix seconds from an ISO 8601 string (``Z`` or offset) or a number; None if unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        # NaN and infinities cannot be ordered against the ledger.
        return number if math.isfinite(number) else None
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def normalize_email(email: str) -> str:
    """Emails are compared trimmed and lowercased, as Sotion stores them."""
    return email.strip().lower()


# The longest email address SMTP allows (RFC 5321: a 254-character path).
MAX_EMAIL_LENGTH = 254
# Provider ids are short; anything longer is not one (and would become a huge Redis key).
MAX_ID_LENGTH = 255
# A timestamp further ahead than this is a wrong clock or a forgery: see :func:`clamped`.
MAX_FUTURE_SECONDS = 300
_ADDRESS = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")


def unusable_reason(event: MembershipEvent) -> str | None:
    """Why the event cannot be stored or applied (an email or id no buyer can have)."""
    if event.email is not None and (
        len(event.email) > MAX_EMAIL_LENGTH or not _ADDRESS.fullmatch(event.email)
    ):
        return "the email is not an address"
    ids = [event.event_id, event.customer, event.entitlement, *event.refs.values()]
    if any(value is not None and len(value) > MAX_ID_LENGTH for value in [*ids, *event.products]):
        return "an id is longer than any provider's"
    texts = [*ids, *event.products, event.email, event.display_name, event.event_type]
    if not all(_encodable(text) for text in texts):
        return "a field is not valid Unicode (a lone surrogate escape)"
    return None


def _encodable(text: str | None) -> bool:
    """Whether ``text`` can be stored: JSON allows ``\\ud800``, UTF-8 (and Redis) do not."""
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clamped(event: MembershipEvent, now: float) -> MembershipEvent:
    """The event dated no later than its arrival when it claims to come from the future.

    A timestamp far ahead would make every later event look stale, freezing the
    purchase in whatever state that event set (a permanent block, say).
    """
    if event.occurred_at <= now + MAX_FUTURE_SECONDS:
        return event
    return replace(event, occurred_at=now)
