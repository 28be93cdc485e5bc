"""The entitlement ledger's merge: stale events never win, ties resolve by lifecycle stage."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bridge.events import EntitlementState, MembershipEvent
from bridge.ledger import Entitlement, merge

KEY = "stripe:sub_1"
ACTIVE = EntitlementState.ACTIVE
ENDED = EntitlementState.ENDED
PENDING = EntitlementState.PENDING
PAST_DUE = EntitlementState.PAST_DUE
DISPUTED = EntitlementState.DISPUTED


def event(
    state: EntitlementState | None,
    at: float,
    *,
    products: tuple[str, ...] = (),
    clears_dispute: bool = False,
    event_id: str | None = None,
) -> MembershipEvent:
    """A Stripe membership event about ``KEY``."""
    return MembershipEvent(
        provider="stripe",
        event_id=event_id or f"evt_{state}_{at}",
        event_type="customer.subscription.updated",
        occurred_at=at,
        email="buyer@example.com",
        entitlement=KEY,
        state=state,
        products=products,
        clears_dispute=clears_dispute,
    )


def held(state: EntitlementState, at: float, products: tuple[str, ...] = ()) -> Entitlement:
    """What the ledger already holds for ``KEY``."""
    return Entitlement(
        key=KEY,
        provider="stripe",
        state=state,
        occurred_at=at,
        event_id="evt_held",
        products=products,
    )


def fold(events: Iterable[MembershipEvent]) -> Entitlement | None:
    """Apply events in delivery order the way the worker does (keep the last merged value)."""
    current: Entitlement | None = None
    for item in events:
        merged = merge(current, item, KEY)
        if merged is not None:
            current = merged
    return current


def test_first_event_creates_the_entitlement() -> None:
    merged = merge(None, event(ACTIVE, 100, products=("price_1",), event_id="evt_a"), KEY)

    assert merged == Entitlement(
        key=KEY,
        provider="stripe",
        state=ACTIVE,
        occurred_at=100,
        event_id="evt_a",
        products=("price_1",),
    )


def test_older_event_is_ignored() -> None:
    assert merge(held(ACTIVE, 100), event(ENDED, 99), KEY) is None


def test_newer_event_wins() -> None:
    merged = merge(held(ACTIVE, 100), event(ENDED, 101, event_id="evt_end"), KEY)

    assert merged is not None
    assert (merged.state, merged.occurred_at, merged.event_id) == (ENDED, 101, "evt_end")


@pytest.mark.parametrize(
    ("first", "second", "final"),
    [
        (ACTIVE, ENDED, ENDED),
        (ENDED, ACTIVE, ENDED),
        (PENDING, ACTIVE, ACTIVE),
        (ACTIVE, PENDING, ACTIVE),
        (ACTIVE, DISPUTED, DISPUTED),
    ],
)
def test_equal_timestamps_resolve_to_the_later_lifecycle_stage(
    first: EntitlementState, second: EntitlementState, final: EntitlementState
) -> None:
    merged = fold([event(first, 100), event(second, 100)])

    assert merged is not None
    assert merged.state is final


def test_same_state_again_is_no_change() -> None:
    assert merge(held(ACTIVE, 100), event(ACTIVE, 100, event_id="evt_replay"), KEY) is None


def test_stale_event_older_than_a_same_state_newer_event_does_not_regress_the_entitlement() -> None:
    # Resumed (active) at 200 arrives before the pause (ended) at 150: the pause is stale.
    final = fold([event(ACTIVE, 100), event(ACTIVE, 200), event(ENDED, 150)])

    assert final is not None
    assert final.state is ACTIVE


def test_products_are_carried_over_when_the_event_names_none() -> None:
    merged = merge(held(ACTIVE, 100, ("price_1", "prod_1")), event(PAST_DUE, 150), KEY)

    assert merged is not None
    assert merged.state is PAST_DUE
    assert merged.products == ("price_1", "prod_1")


def test_products_of_the_event_replace_the_held_ones() -> None:
    merged = merge(held(ACTIVE, 100, ("price_1",)), event(ACTIVE, 150, products=("price_2",)), KEY)

    assert merged is not None
    assert merged.products == ("price_2",)


@pytest.mark.parametrize("later", [ACTIVE, ENDED, PAST_DUE, PENDING])
def test_dispute_stands_against_later_events_that_do_not_clear_it(
    later: EntitlementState,
) -> None:
    assert merge(held(DISPUTED, 100), event(later, 500), KEY) is None


def test_dispute_is_lifted_by_an_event_that_clears_it() -> None:
    merged = merge(held(DISPUTED, 100), event(ACTIVE, 200, clears_dispute=True), KEY)

    assert merged is not None
    assert merged.state is ACTIVE


def test_clearing_event_older_than_the_dispute_is_ignored() -> None:
    assert merge(held(DISPUTED, 100), event(ACTIVE, 50, clears_dispute=True), KEY) is None


def test_event_without_a_state_changes_nothing() -> None:
    assert merge(held(ACTIVE, 100), event(None, 200), KEY) is None
    assert merge(None, event(None, 200), KEY) is None
