"""The entitlement ledger: what each email has bought, merged so stale events never win.

Pure functions over values; the Redis storage lives in ``workers/store.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.events import EntitlementState, MembershipEvent


@dataclass(frozen=True)
class Entitlement:
    """The latest known state of one subscription or order of one email."""

    key: str
    provider: str
    state: EntitlementState
    occurred_at: float
    event_id: str
    products: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-serializable form for storage."""
        return {
            "key": self.key,
            "provider": self.provider,
            "state": self.state.value,
            "occurred_at": self.occurred_at,
            "event_id": self.event_id,
            "products": list(self.products),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entitlement:
        """Rebuild from :meth:`to_json` output."""
        return cls(
            key=str(data["key"]),
            provider=str(data["provider"]),
            state=EntitlementState(data["state"]),
            occurred_at=float(data["occurred_at"]),
            event_id=str(data["event_id"]),
            products=tuple(data.get("products") or ()),
        )


def merge(current: Entitlement | None, event: MembershipEvent, key: str) -> Entitlement | None:
    """The entitlement after ``event``, or None when the event changes nothing.

    An event older than what the ledger holds is stale and ignored. Equal timestamps
    (Stripe's are whole seconds) are not strict: the later lifecycle stage wins, so a
    ``created``/``updated`` pair from the same second ends in the right state. A
    dispute stands until an event says it was won.
    """
    if event.state is None:
        return None
    if (
        current is not None
        and current.state is EntitlementState.DISPUTED
        and event.state is not EntitlementState.DISPUTED
        and not event.clears_dispute
    ):
        return None  # a chargeback stands until it is decided, whatever renewals say
    if current is not None:
        if event.occurred_at < current.occurred_at:
            return None
        if (
            event.occurred_at == current.occurred_at
            and event.state.precedence < current.state.precedence
        ):
            return None
    products = event.products or (current.products if current is not None else ())
    merged = Entitlement(
        key=key,
        provider=event.provider,
        state=event.state,
        occurred_at=event.occurred_at,
        event_id=event.event_id,
        products=products,
    )
    if (
        current is not None
        and (current.state, current.products) == (merged.state, products)
        and event.occurred_at <= current.occurred_at
    ):
        return None  # a replay: nothing new
    # A newer event in the same state still moves the watermark forward, so an older
    # event delivered after it stays stale.
    return merged


def newest(current: Entitlement | None, other: Entitlement) -> Entitlement:
    """The later of two records of one purchase (ties: the later lifecycle stage)."""
    if current is None:
        return other
    if other.occurred_at != current.occurred_at:
        return other if other.occurred_at > current.occurred_at else current
    return other if other.state.precedence > current.state.precedence else current
