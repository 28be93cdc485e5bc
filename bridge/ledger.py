"""The entitlement ledger: what each email has bought, merged so stale events never win.

An entitlement holds registers, each merged on its own so that any order of delivery
ends in the same value:
- its lifecycle (pending, active, past_due, ended), from the newest event that names one;
- its products (price, product, variant ids), from the newest event that names them
  (a Checkout Session names none; the subscription's events do);
- its disputes, one register per dispute (a subscription's renewals can each be disputed),
  from the newest event about that dispute.

All follow the same rule: an older event is stale and ignored; equal
timestamps (Stripe's are whole seconds) are not strict: the later stage wins.

Pure functions over values; the Redis storage lives in ``workers/store.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bridge.events import DisputeState, EntitlementState, MembershipEvent

# The register of a dispute stored before disputes had ids.
LEGACY_DISPUTE = "legacy"
# The lifecycle of an entitlement first seen through a dispute: unknown, granting nothing,
# older than any real event (which therefore replaces it).
UNKNOWN_AT = 0.0


@dataclass(frozen=True)
class Dispute:
    """The latest known state of one dispute of one entitlement's payments."""

    id: str
    state: DisputeState
    at: float


@dataclass(frozen=True)
class Entitlement:
    """The latest known state of one subscription or order of one email."""

    key: str
    provider: str
    state: EntitlementState
    occurred_at: float
    event_id: str
    products: tuple[str, ...] = ()
    disputes: tuple[Dispute, ...] = ()  # sorted by id
    # When the products were last named (their own register: not every event names them).
    products_at: float = UNKNOWN_AT

    def to_json(self) -> dict[str, Any]:
        """JSON-serializable form for storage."""
        data: dict[str, Any] = {
            "key": self.key,
            "provider": self.provider,
            "state": self.state.value,
            "occurred_at": self.occurred_at,
            "event_id": self.event_id,
            "products": list(self.products),
            "products_at": self.products_at,
        }
        if self.disputes:
            data["disputes"] = {d.id: {"state": d.state.value, "at": d.at} for d in self.disputes}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entitlement:
        """Rebuild from :meth:`to_json` output (and the older single-state form)."""
        state = str(data["state"])
        occurred_at = float(data["occurred_at"])
        disputes = tuple(
            sorted(
                (
                    Dispute(str(ident), DisputeState(mark["state"]), float(mark["at"]))
                    for ident, mark in (data.get("disputes") or {}).items()
                ),
                key=lambda d: d.id,
            )
        )
        if state == "disputed":  # stored before disputes were kept apart from the lifecycle
            disputes = (Dispute(LEGACY_DISPUTE, DisputeState.OPEN, occurred_at),)
            state = EntitlementState.ACTIVE.value
        return cls(
            key=str(data["key"]),
            provider=str(data["provider"]),
            state=EntitlementState(state),
            occurred_at=occurred_at,
            event_id=str(data["event_id"]),
            products=tuple(data.get("products") or ()),
            disputes=disputes,
            # Stored before products had a clock of their own: the lifecycle's, if any.
            products_at=float(
                data.get("products_at", occurred_at if data.get("products") else UNKNOWN_AT)
            ),
        )

    def dispute(self, ident: str) -> Dispute | None:
        """The register of one dispute, if any event named it."""
        return next((d for d in self.disputes if d.id == ident), None)


def merge(current: Entitlement | None, event: MembershipEvent, key: str) -> Entitlement | None:
    """The entitlement after ``event``, or None when the event changes nothing.

    The lifecycle moves only for an event at least as new as the one it holds (a newer
    event in the same state still moves the watermark, so an older one delivered after
    it stays stale). The products and each dispute's register move the same way, each on
    its own clock, so the result never depends on the order of delivery.
    """
    if not event.changes_entitlement:
        return None
    base = current or Entitlement(
        key=key,
        provider=event.provider,
        state=EntitlementState.PENDING,
        occurred_at=UNKNOWN_AT,
        event_id="",
        products_at=UNKNOWN_AT,
    )
    merged = replace(base, key=key)
    if event.state is not None and _replaces_lifecycle(
        base.state, base.occurred_at, event.state, event.occurred_at
    ):
        merged = replace(
            merged, state=event.state, occurred_at=event.occurred_at, event_id=event.event_id
        )
    if event.products and _replaces_products(
        base.products, base.products_at, event.products, event.occurred_at
    ):
        merged = replace(merged, products=event.products, products_at=event.occurred_at)
    if event.dispute is not None:
        merged = _merge_dispute(merged, event.dispute_id, event.dispute, event.occurred_at)
        if merged.dispute(LEGACY_DISPUTE) is not None:
            # Stored before disputes had ids: any decision about this purchase decides it.
            merged = _merge_dispute(merged, LEGACY_DISPUTE, event.dispute, event.occurred_at)
    if current is not None and merged == current:
        return None  # a replay or a stale event: nothing new
    return merged


def record(
    ledger: Mapping[str, Entitlement], key: str, event: MembershipEvent
) -> tuple[Entitlement | None, tuple[str, ...]]:
    """One event recorded in an email's ledger: the entitlement to store (None: no
    change) and the keys of other records it absorbed, which are to be deleted.

    Another id of the same purchase may have been recorded on its own before the event
    tying them together arrived (a Lemon Squeezy order before its subscription): it is
    folded into this entitlement, each register keeping its newer value.
    """
    current = ledger.get(key)
    folded: list[str] = []
    for ref in event.refs.values():
        other = ledger.get(f"{event.provider}:{ref}")
        if other is not None and other.key != key and other.key not in folded:
            current = newest(current, replace(other, key=key))
            folded.append(other.key)
    merged = merge(current, event, key) or (current if folded else None)
    return merged, tuple(folded)


def newest(current: Entitlement | None, other: Entitlement) -> Entitlement:
    """Two records of one purchase folded into one: each register keeps its newer value."""
    if current is None:
        return other
    folded = current
    if _replaces_lifecycle(current.state, current.occurred_at, other.state, other.occurred_at):
        folded = replace(
            folded, state=other.state, occurred_at=other.occurred_at, event_id=other.event_id
        )
    if other.products and _replaces_products(
        current.products, current.products_at, other.products, other.products_at
    ):
        folded = replace(folded, products=other.products, products_at=other.products_at)
    for dispute in other.disputes:
        folded = _merge_dispute(folded, dispute.id, dispute.state, dispute.at)
    return folded


def _merge_dispute(
    entitlement: Entitlement, ident: str, state: DisputeState, at: float
) -> Entitlement:
    held = entitlement.dispute(ident)
    if held is not None and not _wins(at, state.precedence, held.at, held.state.precedence):
        return entitlement
    others = [d for d in entitlement.disputes if d.id != ident]
    disputes = sorted([*others, Dispute(ident, state, at)], key=lambda d: d.id)
    return replace(entitlement, disputes=tuple(disputes))


def _replaces_lifecycle(
    held: EntitlementState, held_at: float, state: EntitlementState, at: float
) -> bool:
    """Newer wins; at the same time the later stage; the same state again changes nothing."""
    if at == held_at and state is held:
        return False
    return _wins(at, state.precedence, held_at, held.precedence)


def _replaces_products(
    held: tuple[str, ...], held_at: float, products: tuple[str, ...], at: float
) -> bool:
    """Newer wins; two lists of the same time: the greater, so no order of arrival matters."""
    if at != held_at:
        return at > held_at
    return products > held


def _wins(at: float, precedence: int, held_at: float, held_precedence: int) -> bool:
    """Whether an observation at ``at`` replaces the one held (ties: the later stage)."""
    if at != held_at:
        return at > held_at
    return precedence >= held_precedence


def recorded(
    ledger: Mapping[str, Entitlement], merged: Entitlement | None, folded: tuple[str, ...]
) -> dict[str, Entitlement]:
    """The ledger once :func:`record`'s result is stored."""
    result = {key: value for key, value in ledger.items() if key not in folded}
    if merged is not None:
        result[merged.key] = merged
    return result
