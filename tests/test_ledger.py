"""The entitlement ledger's merge: stale events never win, ties resolve by lifecycle stage,
and each dispute is a register of its own beside the lifecycle."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.ledger import UNKNOWN_AT, Dispute, Entitlement, merge, newest

KEY = "stripe:sub_1"
ACTIVE = EntitlementState.ACTIVE
ENDED = EntitlementState.ENDED
PENDING = EntitlementState.PENDING
PAST_DUE = EntitlementState.PAST_DUE
INQUIRY = DisputeState.INQUIRY
OPEN = DisputeState.OPEN
WON = DisputeState.WON
LOST = DisputeState.LOST
# The dispute the dispute events are about, unless a test names another.
DISPUTE_ID = "dp_1"


def event(
    state: EntitlementState | None,
    at: float,
    *,
    products: tuple[str, ...] = (),
    dispute: DisputeState | None = None,
    dispute_id: str = DISPUTE_ID,
    event_id: str | None = None,
) -> MembershipEvent:
    """A Stripe membership event about ``KEY`` (about dispute ``dispute_id`` if ``dispute``)."""
    return MembershipEvent(
        provider="stripe",
        event_id=event_id or f"evt_{state}_{dispute}_{dispute_id}_{at}",
        event_type="customer.subscription.updated",
        occurred_at=at,
        email="buyer@example.com",
        entitlement=KEY,
        state=state,
        products=products,
        refs={"dispute": dispute_id} if dispute is not None else {},
        dispute=dispute,
    )


def disputed(dispute: DisputeState, at: float, dispute_id: str = DISPUTE_ID) -> MembershipEvent:
    """A dispute event: it says nothing about the lifecycle."""
    return event(None, at, dispute=dispute, dispute_id=dispute_id)


def held(
    state: EntitlementState,
    at: float,
    products: tuple[str, ...] = (),
    disputes: tuple[Dispute, ...] = (),
    *,
    event_id: str = "evt_held",
    products_at: float = UNKNOWN_AT,
) -> Entitlement:
    """A Stripe record of ``KEY``: by default what the ledger already holds."""
    return Entitlement(
        key=KEY,
        provider="stripe",
        state=state,
        occurred_at=at,
        event_id=event_id,
        products=products,
        disputes=disputes,
        products_at=products_at,
    )


def legacy_disputed() -> Entitlement:
    """A record stored by the old model, whose lifecycle state was ``disputed``."""
    return Entitlement.from_json({**held(ACTIVE, 100).to_json(), "state": "disputed"})


def dispute_event(
    provider: str,
    event_id: str,
    event_type: str,
    refs: dict[str, str],
    products: tuple[str, ...] = (),
) -> MembershipEvent:
    """An open-dispute event about ``KEY`` at 200, built by hand (no dispute id in its refs)."""
    return MembershipEvent(
        provider=provider,
        event_id=event_id,
        event_type=event_type,
        occurred_at=200,
        entitlement=KEY,
        products=products,
        refs=refs,
        dispute=OPEN,
    )


def fold(events: Iterable[MembershipEvent]) -> Entitlement | None:
    """Apply events in delivery order the way the worker does (keep the last merged value)."""
    current: Entitlement | None = None
    for item in events:
        merged = merge(current, item, KEY)
        if merged is not None:
            current = merged
    return current


def dispute_states(entitlement: Entitlement | None) -> dict[str, DisputeState]:
    """Each dispute register's state, by dispute id."""
    assert entitlement is not None
    return {d.id: d.state for d in entitlement.disputes}


# -- the lifecycle register ---------------------------------------------------------------


def test_first_event_creates_the_entitlement() -> None:
    merged = merge(None, event(ACTIVE, 100, products=("price_1",), event_id="evt_a"), KEY)

    assert merged == Entitlement(
        key=KEY,
        provider="stripe",
        state=ACTIVE,
        occurred_at=100,
        event_id="evt_a",
        products=("price_1",),
        products_at=100,
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
        (ACTIVE, PAST_DUE, PAST_DUE),
        (PAST_DUE, ACTIVE, PAST_DUE),
        (PAST_DUE, ENDED, ENDED),
        (ENDED, PAST_DUE, ENDED),
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


def test_event_without_a_state_or_a_dispute_changes_nothing() -> None:
    assert merge(held(ACTIVE, 100), event(None, 200), KEY) is None
    assert merge(None, event(None, 200), KEY) is None


# -- the dispute registers ----------------------------------------------------------------


def test_dispute_opens_a_register_and_leaves_the_lifecycle_alone() -> None:
    merged = merge(held(ACTIVE, 100, ("price_1",)), disputed(OPEN, 200), KEY)

    assert merged is not None
    assert (merged.state, merged.occurred_at, merged.event_id) == (ACTIVE, 100, "evt_held")
    assert merged.products == ("price_1",)
    assert merged.disputes == (Dispute(DISPUTE_ID, OPEN, 200),)


@pytest.mark.parametrize("later", [ACTIVE, ENDED, PAST_DUE])
def test_lifecycle_events_during_a_dispute_are_recorded_and_the_dispute_stays_open(
    later: EntitlementState,
) -> None:
    # The old model dropped them ("a dispute stands"); now a cancellation during a dispute
    # is kept, so the purchase ends right even if the dispute is won later.
    merged = merge(
        held(ACTIVE, 100, disputes=(Dispute(DISPUTE_ID, OPEN, 200),)), event(later, 500), KEY
    )

    assert merged is not None
    assert (merged.state, merged.occurred_at) == (later, 500)
    assert merged.disputes == (Dispute(DISPUTE_ID, OPEN, 200),)


def test_won_dispute_closes_its_register() -> None:
    merged = merge(
        held(ACTIVE, 100, disputes=(Dispute(DISPUTE_ID, OPEN, 100),)), disputed(WON, 200), KEY
    )

    assert merged is not None
    assert merged.disputes == (Dispute(DISPUTE_ID, WON, 200),)
    assert merged.state is ACTIVE


def test_dispute_event_older_than_the_register_is_ignored() -> None:
    current = held(ACTIVE, 100, disputes=(Dispute(DISPUTE_ID, OPEN, 100),))

    assert merge(current, disputed(WON, 50), KEY) is None


def test_dispute_event_is_stale_on_its_own_clock_not_the_lifecycles() -> None:
    # The lifecycle moved on at 500; a dispute opened at 200 is still news.
    merged = merge(held(ENDED, 500), disputed(OPEN, 200), KEY)

    assert merged is not None
    assert merged.state is ENDED
    assert dispute_states(merged) == {DISPUTE_ID: OPEN}


def test_same_dispute_state_again_is_no_change() -> None:
    current = held(ACTIVE, 100, disputes=(Dispute(DISPUTE_ID, OPEN, 200),))

    assert merge(current, disputed(OPEN, 200), KEY) is None


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(["dispute", "cancellation", "win"])),
    ids=lambda order: "-then-".join(order),
)
def test_dispute_cancellation_and_win_end_the_same_in_every_order(order: tuple[str, ...]) -> None:
    events = {
        "dispute": disputed(OPEN, 200),
        "cancellation": event(ENDED, 300, event_id="evt_cancel"),
        "win": disputed(WON, 400),
    }

    final = fold(events[name] for name in order)

    assert final == held(
        ENDED, 300, disputes=(Dispute(DISPUTE_ID, WON, 400),), event_id="evt_cancel"
    )


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations(range(4))),
    ids=lambda order: "".join(map(str, order)),
)
def test_purchase_inquiry_escalation_and_loss_end_the_same_in_every_order(
    order: tuple[int, ...],
) -> None:
    events = [
        event(ACTIVE, 100, products=("price_1",), event_id="evt_buy"),
        disputed(INQUIRY, 200),
        disputed(OPEN, 300),
        disputed(LOST, 400),
    ]

    final = fold(events[i] for i in order)

    assert final is not None
    assert (final.state, final.occurred_at, final.event_id) == (ACTIVE, 100, "evt_buy")
    assert final.products == ("price_1",)
    assert final.disputes == (Dispute(DISPUTE_ID, LOST, 400),)


# Small pools so that timestamps tie and dispute ids repeat often; some events name
# products (a subscription's), others none (a Checkout Session).
_EVENTS = st.one_of(
    st.builds(
        lambda state, at, products: event(state, at, products=products),
        st.sampled_from([PENDING, ACTIVE, PAST_DUE, ENDED]),
        st.integers(1, 4),
        st.sampled_from([(), (), ("price_1",), ("price_2",), ("price_1", "prod_1")]),
    ),
    st.builds(
        lambda dispute, at, ident: disputed(dispute, at, ident),
        st.sampled_from(list(DisputeState)),
        st.integers(1, 4),
        st.sampled_from(["dp_a", "dp_b"]),
    ),
)


@given(
    st.lists(_EVENTS, min_size=1, max_size=6).flatmap(
        lambda xs: st.tuples(st.just(xs), st.permutations(xs))
    )
)
def test_any_delivery_order_ends_in_the_same_registers(
    orders: tuple[list[MembershipEvent], list[MembershipEvent]],
) -> None:
    first, second = (fold(events) for events in orders)

    assert first is not None and second is not None
    assert (first.state, first.occurred_at) == (second.state, second.occurred_at)
    assert (first.products, first.products_at) == (second.products, second.products_at)
    assert first.disputes == second.disputes


def test_each_dispute_id_keeps_its_own_register() -> None:
    # Two renewals of one subscription disputed: winning one leaves the other standing.
    final = fold(
        [
            event(ACTIVE, 100),
            disputed(OPEN, 200, dispute_id="dp_a"),
            disputed(OPEN, 250, dispute_id="dp_b"),
            disputed(WON, 300, dispute_id="dp_a"),
        ]
    )

    assert final is not None
    assert final.disputes == (Dispute("dp_a", WON, 300), Dispute("dp_b", OPEN, 250))
    assert final.dispute("dp_b") == Dispute("dp_b", OPEN, 250)
    assert final.dispute("dp_c") is None


def test_dispute_without_a_dispute_id_is_named_by_its_charge() -> None:
    charge_event = dispute_event(
        "stripe",
        "evt_charge",
        "charge.dispute.created",
        {"charge": "ch_1", "payment_intent": "pi_1"},
    )

    merged = merge(held(ACTIVE, 100), charge_event, KEY)

    assert dispute_states(merged) == {"ch_1": OPEN}


@pytest.mark.parametrize(
    ("first", "second", "final"),
    [
        (INQUIRY, OPEN, OPEN),
        (OPEN, INQUIRY, OPEN),
        (OPEN, WON, WON),
        (WON, OPEN, WON),
        (WON, LOST, LOST),
        (LOST, WON, LOST),
        (INQUIRY, WON, WON),
        (OPEN, LOST, LOST),
    ],
)
def test_equal_timestamps_resolve_to_the_later_dispute_stage(
    first: DisputeState, second: DisputeState, final: DisputeState
) -> None:
    merged = fold([event(ACTIVE, 100), disputed(first, 200), disputed(second, 200)])

    assert dispute_states(merged) == {DISPUTE_ID: final}


def test_dispute_and_lifecycle_in_one_event_move_both_registers() -> None:
    # A Gumroad sale pinged again after a chargeback: ACTIVE with an open dispute.
    merged = merge(None, event(ACTIVE, 100, products=("p",), dispute=OPEN), KEY)

    assert merged is not None
    assert (merged.state, merged.occurred_at, merged.products) == (ACTIVE, 100, ("p",))
    assert dispute_states(merged) == {DISPUTE_ID: OPEN}


def test_stale_lifecycle_in_an_event_does_not_hold_back_its_dispute() -> None:
    merged = merge(held(ENDED, 500), event(ACTIVE, 300, dispute=OPEN), KEY)

    assert merged is not None
    assert (merged.state, merged.occurred_at) == (ENDED, 500)
    assert dispute_states(merged) == {DISPUTE_ID: OPEN}


# -- first sight through a dispute ---------------------------------------------------------


def test_entitlement_first_seen_through_a_dispute_is_pending_at_unknown_time() -> None:
    merged = merge(None, disputed(OPEN, 200), KEY)

    assert merged == held(
        PENDING, UNKNOWN_AT, disputes=(Dispute(DISPUTE_ID, OPEN, 200),), event_id=""
    )
    assert UNKNOWN_AT == 0.0


def test_real_lifecycle_event_replaces_the_unknown_one_even_when_older_than_the_dispute() -> None:
    # The purchase (100) is delivered after its dispute (200): it is not stale.
    final = fold(
        [disputed(OPEN, 200), event(ACTIVE, 100, products=("price_1",), event_id="evt_buy")]
    )

    assert final is not None
    assert (final.state, final.occurred_at, final.event_id) == (ACTIVE, 100, "evt_buy")
    assert final.products == ("price_1",)
    assert final.disputes == (Dispute(DISPUTE_ID, OPEN, 200),)


def test_dispute_only_event_lends_its_products_to_an_entitlement_without_any() -> None:
    dispute = dispute_event(
        "gumroad", "dispute:s1", "dispute", {"sale": "sale_s1"}, products=("product:p1",)
    )

    merged = merge(None, dispute, KEY)

    assert merged is not None
    assert merged.products == ("product:p1",)
    assert merged.state is PENDING


# -- storage form -------------------------------------------------------------------------


def test_entitlement_with_disputes_survives_a_json_round_trip() -> None:
    original = held(
        PAST_DUE,
        150.5,
        ("price_1",),
        disputes=(Dispute("dp_a", WON, 300.0), Dispute("dp_b", INQUIRY, 250.0)),
    )

    data = original.to_json()

    assert data["disputes"] == {
        "dp_a": {"state": "won", "at": 300.0},
        "dp_b": {"state": "inquiry", "at": 250.0},
    }
    assert Entitlement.from_json(data) == original


def test_entitlement_without_disputes_stores_no_dispute_field() -> None:
    data = held(ACTIVE, 100).to_json()

    assert "disputes" not in data
    assert Entitlement.from_json(data) == held(ACTIVE, 100)


def test_disputes_read_from_storage_are_sorted_by_id() -> None:
    data = held(ACTIVE, 100).to_json()
    data["disputes"] = {"dp_z": {"state": "open", "at": 2}, "dp_a": {"state": "lost", "at": 1}}

    rebuilt = Entitlement.from_json(data)

    assert [d.id for d in rebuilt.disputes] == ["dp_a", "dp_z"]


def test_legacy_disputed_record_reads_as_active_with_an_open_legacy_dispute() -> None:
    stored = {
        "key": KEY,
        "provider": "stripe",
        "state": "disputed",
        "occurred_at": 1234.0,
        "event_id": "evt_old_dispute",
        "products": ["price_1"],
    }

    rebuilt = Entitlement.from_json(stored)

    assert rebuilt == held(
        ACTIVE,
        1234.0,
        ("price_1",),
        disputes=(Dispute("legacy", OPEN, 1234.0),),
        event_id="evt_old_dispute",
        products_at=1234.0,
    )


def test_legacy_disputed_record_stays_disputed_after_a_lifecycle_event() -> None:
    legacy = legacy_disputed()

    merged = merge(legacy, event(ENDED, 200), KEY)

    assert merged is not None
    assert merged.state is ENDED
    assert dispute_states(merged) == {"legacy": OPEN}


def test_legacy_disputed_record_is_lifted_by_the_won_dispute() -> None:
    legacy = legacy_disputed()

    merged = merge(legacy, disputed(WON, 200), KEY)

    assert merged is not None
    assert all(d.state is WON for d in merged.disputes)


# -- newest: two records of one purchase folded ------------------------------------------


def test_newest_of_nothing_and_a_record_is_the_record() -> None:
    record = held(ACTIVE, 100, disputes=(Dispute("dp_a", OPEN, 50),))

    assert newest(None, record) == record


def test_newest_keeps_the_newer_lifecycle_and_every_dispute_of_both() -> None:
    order = held(ACTIVE, 100, ("variant_1",), disputes=(Dispute("dp_a", OPEN, 150),))
    subscription = held(ENDED, 300, disputes=(Dispute("dp_b", LOST, 250),), event_id="evt_end")

    folded = newest(order, subscription)

    assert (folded.state, folded.occurred_at, folded.event_id) == (ENDED, 300, "evt_end")
    assert folded.products == ("variant_1",)  # the newer record named none
    assert folded.disputes == (Dispute("dp_a", OPEN, 150), Dispute("dp_b", LOST, 250))
    assert folded.key == KEY


def test_newest_keeps_the_current_lifecycle_when_it_is_newer() -> None:
    current = held(PAST_DUE, 300)
    other = held(ACTIVE, 100, ("p",), event_id="evt_old")

    folded = newest(current, other)

    assert (folded.state, folded.occurred_at, folded.event_id) == (PAST_DUE, 300, "evt_held")
    assert folded.products == ("p",)


def test_newest_resolves_a_lifecycle_tie_to_the_later_stage() -> None:
    folded = newest(held(ENDED, 100), held(ACTIVE, 100))

    assert folded.state is ENDED


def test_newest_folds_one_dispute_register_by_its_own_clock() -> None:
    current = held(ACTIVE, 300, disputes=(Dispute("dp_a", WON, 400),))
    other = held(ACTIVE, 100, disputes=(Dispute("dp_a", OPEN, 200),))

    assert newest(current, other).disputes == (Dispute("dp_a", WON, 400),)
    assert newest(other, current).disputes == (Dispute("dp_a", WON, 400),)


def test_newest_replaces_an_unknown_lifecycle_with_a_real_one() -> None:
    dispute_only = merge(None, disputed(OPEN, 200), KEY)
    assert dispute_only is not None

    folded = newest(dispute_only, held(ACTIVE, 100, ("p",)))

    assert (folded.state, folded.occurred_at, folded.products) == (ACTIVE, 100, ("p",))
    assert folded.disputes == (Dispute(DISPUTE_ID, OPEN, 200),)


def test_products_come_from_the_newest_event_naming_them_whatever_the_order() -> None:
    created = event(ACTIVE, 100, products=("price_1",), event_id="evt_created")
    checkout = event(ACTIVE, 101, event_id="evt_checkout")  # a Checkout Session names none

    in_order = merge(merge(None, created, KEY), checkout, KEY)
    reversed_order = merge(merge(None, checkout, KEY), created, KEY)

    assert in_order is not None and reversed_order is not None
    assert in_order.products == reversed_order.products == ("price_1",)
    assert (in_order.state, in_order.occurred_at) == (reversed_order.state, 101)


def test_products_of_a_plan_change_are_not_undone_by_a_stale_event() -> None:
    changed = merge(held(ACTIVE, 100), event(ACTIVE, 200, products=("price_2",)), KEY)
    assert changed is not None

    assert merge(changed, event(ACTIVE, 150, products=("price_1",)), KEY) is None


def test_stale_lifecycle_event_still_brings_products_newer_than_the_held_ones() -> None:
    created = event(ACTIVE, 100, products=("price_1",))
    checkout = event(ACTIVE, 300)  # the newest lifecycle, naming no products
    moved = event(ACTIVE, 200, products=("price_2",))  # older lifecycle, newer products

    for order in itertools.permutations([created, checkout, moved]):
        final = fold(order)
        assert final is not None
        assert (final.state, final.occurred_at) == (ACTIVE, 300)
        assert (final.products, final.products_at) == (("price_2",), 200)


def test_products_named_at_the_same_time_resolve_to_the_greater_list_in_either_order() -> None:
    first = event(ACTIVE, 100, products=("price_1",), event_id="evt_1")
    second = event(PAST_DUE, 100, products=("price_2",), event_id="evt_2")

    assert fold([first, second]) == fold([second, first])
    final = fold([second, first])
    assert final is not None
    assert final.products == ("price_2",)


def test_event_naming_the_products_held_changes_nothing_when_older() -> None:
    current = merge(None, event(ACTIVE, 200, products=("price_1",)), KEY)
    assert current is not None

    assert merge(current, event(ACTIVE, 150, products=("price_1",)), KEY) is None


def test_newest_folds_the_products_by_their_own_clock() -> None:
    lifecycle_newer = held(ACTIVE, 300, ("price_1",), event_id="evt_checkout", products_at=100)
    products_newer = held(ACTIVE, 200, ("price_2",), event_id="evt_moved", products_at=200)

    for folded in (
        newest(lifecycle_newer, products_newer),
        newest(products_newer, lifecycle_newer),
    ):
        assert (folded.state, folded.occurred_at, folded.event_id) == (ACTIVE, 300, "evt_checkout")
        assert (folded.products, folded.products_at) == (("price_2",), 200)


def test_newest_keeps_the_products_when_the_other_record_names_none() -> None:
    named = held(ACTIVE, 100, ("price_1",))
    unnamed = held(ENDED, 300, event_id="evt_end")

    assert newest(named, unnamed).products == ("price_1",)
    assert newest(unnamed, named).products == ("price_1",)


def test_entitlement_stored_before_products_had_a_clock_reads_them_as_of_its_lifecycle() -> None:
    stored = held(ACTIVE, 150, ("price_1",)).to_json()
    del stored["products_at"]

    rebuilt = Entitlement.from_json(stored)

    assert rebuilt.products_at == 150
    assert merge(rebuilt, event(ACTIVE, 120, products=("price_2",)), KEY) is None
    moved = merge(rebuilt, event(ACTIVE, 180, products=("price_2",)), KEY)
    assert moved is not None and moved.products == ("price_2",)


def test_products_clock_survives_a_json_round_trip() -> None:
    original = merge(held(ACTIVE, 300), event(ACTIVE, 200, products=("price_2",)), KEY)
    assert original is not None

    assert original.to_json()["products_at"] == 200
    assert Entitlement.from_json(original.to_json()) == original
