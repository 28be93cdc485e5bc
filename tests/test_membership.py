"""From a ledger to the desired Sotion member, and the smallest plan to get there."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bridge.events import DisputeState, EntitlementState
from bridge.ledger import Dispute, Entitlement
from bridge.membership import (
    DesiredMember,
    DisputeAction,
    MemberSnapshot,
    Plan,
    Policy,
    RevokeAction,
    desired_member,
    grants_access,
    is_disputed,
    plan_changes,
)
from bridge.products import parse_catalog

ACTIVE = EntitlementState.ACTIVE
ENDED = EntitlementState.ENDED
PENDING = EntitlementState.PENDING
PAST_DUE = EntitlementState.PAST_DUE
INQUIRY = DisputeState.INQUIRY
OPEN = DisputeState.OPEN
WON = DisputeState.WON
LOST = DisputeState.LOST
DEFAULT = Policy()
# Which access groups each product grants, for the tests that map products to groups.
GROUPS = {"prod_course": ("g_course",), "prod_club": ("g_club", "g_forum")}


def entitlement(
    state: EntitlementState,
    key: str = "stripe:sub_1",
    products: tuple[str, ...] = (),
    *,
    disputes: Iterable[DisputeState] = (),
) -> Entitlement:
    """One ledger entry, with one dispute register per state in ``disputes``."""
    return Entitlement(
        key=key,
        provider="stripe",
        state=state,
        occurred_at=100.0,
        event_id=f"evt_{key}",
        products=products,
        disputes=tuple(Dispute(f"dp_{i}", d, 200.0) for i, d in enumerate(disputes)),
    )


def disputed(*states: DisputeState, key: str = "stripe:pi_1") -> Entitlement:
    """An active purchase with disputes in these states."""
    return entitlement(ACTIVE, key, disputes=states)


# The same mapping as a products file gives it.
CATALOG = parse_catalog(
    {
        "products": [
            {"name": name, "stripe_products": [name], "groups": list(groups)}
            for name, groups in GROUPS.items()
        ]
    }
)


def member(paid: bool, blocked: bool = False, groups: Iterable[str] = ()) -> MemberSnapshot:
    """The member as Sotion has it."""
    return MemberSnapshot(paid=paid, blocked=blocked, groups=frozenset(groups))


# -- desired_member ---------------------------------------------------------------------


def test_member_is_paid_while_any_entitlement_is_active() -> None:
    ledger = [entitlement(ENDED, "stripe:sub_old"), entitlement(ACTIVE, "stripe:pi_new")]

    assert desired_member(ledger, DEFAULT) == DesiredMember(paid=True, blocked=False)


@pytest.mark.parametrize("state", [ENDED, PENDING])
def test_member_is_not_paid_when_no_entitlement_grants_access(state: EntitlementState) -> None:
    desired = desired_member([entitlement(state)], DEFAULT)

    assert desired == DesiredMember(paid=False, blocked=False)


def test_past_due_keeps_access_by_default() -> None:
    assert desired_member([entitlement(PAST_DUE)], DEFAULT).paid is True


def test_past_due_loses_access_when_the_grace_is_turned_off() -> None:
    policy = Policy(past_due_keeps_access=False)

    assert desired_member([entitlement(PAST_DUE)], policy).paid is False


def test_dispute_blocks_the_member_by_default() -> None:
    desired = desired_member([disputed(OPEN)], DEFAULT)

    assert desired == DesiredMember(paid=False, blocked=True)


def test_dispute_blocks_even_while_another_entitlement_is_active() -> None:
    ledger = [disputed(OPEN, key="stripe:pi_1"), entitlement(ACTIVE, "stripe:sub_2")]

    assert desired_member(ledger, DEFAULT) == DesiredMember(paid=True, blocked=True)


def test_dispute_with_the_revoke_action_only_ends_access() -> None:
    policy = Policy(dispute_action=DisputeAction.REVOKE)

    assert desired_member([disputed(OPEN)], policy) == DesiredMember(paid=False, blocked=False)


@pytest.mark.parametrize(
    ("ledger", "policy", "expected"),
    [
        # A cancellation during the dispute is recorded now; the dispute still applies.
        pytest.param(
            [entitlement(ENDED, "stripe:sub_1", disputes=[OPEN])],
            DEFAULT,
            DesiredMember(paid=False, blocked=True),
            id="dispute_of_an_ended_purchase_still_blocks",
        ),
        pytest.param(
            [disputed(LOST)],
            DEFAULT,
            DesiredMember(paid=False, blocked=True),
            id="lost_dispute_keeps_the_member_blocked",
        ),
        pytest.param(
            [disputed(WON)],
            DEFAULT,
            DesiredMember(paid=True, blocked=False),
            id="won_dispute_lifts_the_block_and_restores_access",
        ),
        pytest.param(
            [entitlement(ENDED, disputes=[WON])],
            DEFAULT,
            DesiredMember(paid=False, blocked=False),
            id="won_dispute_of_an_ended_purchase_lifts_the_block_without_granting",
        ),
        pytest.param(
            [disputed(INQUIRY)],
            Policy(inquiries_are_disputes=True, dispute_action=DisputeAction.REVOKE),
            DesiredMember(paid=False, blocked=False),
            id="inquiry_counted_as_a_dispute_with_the_revoke_action_only_ends_access",
        ),
    ],
)
def test_dispute_registers_decide_the_desired_member(
    ledger: list[Entitlement], policy: Policy, expected: DesiredMember
) -> None:
    assert desired_member(ledger, policy) == expected


@pytest.mark.parametrize(
    ("entry", "policy", "counted", "expected"),
    [
        pytest.param(
            disputed(WON, OPEN),
            DEFAULT,
            True,
            DesiredMember(paid=False, blocked=True),
            id="one_won_dispute_does_not_lift_another_that_stands",
        ),
        pytest.param(
            disputed(INQUIRY),
            DEFAULT,
            False,
            DesiredMember(paid=True, blocked=False),
            id="inquiry_is_ignored_by_default",
        ),
        pytest.param(
            disputed(INQUIRY),
            Policy(inquiries_are_disputes=True),
            True,
            DesiredMember(paid=False, blocked=True),
            id="inquiry_blocks_when_inquiries_count_as_disputes",
        ),
    ],
)
def test_counted_disputes_block_the_member(
    entry: Entitlement, policy: Policy, counted: bool, expected: DesiredMember
) -> None:
    assert is_disputed(entry, policy) is counted
    assert desired_member([entry], policy) == expected


@pytest.mark.parametrize(
    ("states", "policy", "expected"),
    [
        pytest.param((), DEFAULT, False, id="no-dispute"),
        pytest.param((OPEN,), DEFAULT, True, id="open"),
        pytest.param((LOST,), DEFAULT, True, id="lost"),
        pytest.param((WON,), DEFAULT, False, id="won"),
        pytest.param((INQUIRY,), DEFAULT, False, id="inquiry"),
        pytest.param((INQUIRY,), Policy(inquiries_are_disputes=True), True, id="inquiry-counted"),
        pytest.param((WON, WON), DEFAULT, False, id="all-won"),
        pytest.param((WON, LOST), DEFAULT, True, id="won-and-lost"),
        pytest.param((INQUIRY, WON), DEFAULT, False, id="inquiry-and-won"),
    ],
)
def test_is_disputed_reads_every_dispute_register(
    states: tuple[DisputeState, ...], policy: Policy, expected: bool
) -> None:
    assert is_disputed(disputed(*states), policy) is expected


def test_disputed_past_due_entitlement_grants_no_access_even_in_its_grace() -> None:
    policy = Policy(past_due_grace_seconds=86400)
    entry = entitlement(PAST_DUE, disputes=[OPEN])

    assert grants_access(entitlement(PAST_DUE), policy, now=150.0) is True
    assert grants_access(entry, policy, now=150.0) is False


def test_dispute_of_an_unlisted_product_is_not_counted() -> None:
    ledger = [
        entitlement(ACTIVE, "stripe:sub_1", ("prod_course",)),
        entitlement(ACTIVE, "stripe:pi_2", ("prod_other",), disputes=[OPEN]),
    ]

    desired = desired_member(ledger, DEFAULT, CATALOG)

    assert desired.blocked is False
    assert desired.paid is True


def test_block_revoke_action_blocks_once_the_last_entitlement_ends() -> None:
    policy = Policy(revoke_action=RevokeAction.BLOCK)
    ledger = [entitlement(ENDED, "stripe:sub_1"), entitlement(ENDED, "stripe:pi_2")]

    assert desired_member(ledger, policy) == DesiredMember(
        paid=False, blocked=True, ended_only=True
    )


def test_block_revoke_action_does_not_block_while_an_entitlement_is_active() -> None:
    policy = Policy(revoke_action=RevokeAction.BLOCK)
    ledger = [entitlement(ENDED, "stripe:sub_1"), entitlement(ACTIVE, "stripe:pi_2")]

    assert desired_member(ledger, policy) == DesiredMember(paid=True, blocked=False)


def test_groups_are_the_union_of_the_active_entitlements_products_groups() -> None:
    ledger = [
        entitlement(ACTIVE, "stripe:pi_1", ("prod_course",)),
        entitlement(ACTIVE, "stripe:sub_2", ("prod_club",)),
        entitlement(ENDED, "stripe:sub_3", ("prod_other",)),
    ]

    desired = desired_member(ledger, DEFAULT, CATALOG)

    assert desired.groups == {"g_course", "g_club", "g_forum"}


def test_ended_entitlements_grant_no_groups() -> None:
    ledger = [
        entitlement(ACTIVE, "stripe:pi_1", ("prod_course",)),
        entitlement(ENDED, "stripe:sub_2", ("prod_club",)),
    ]

    assert desired_member(ledger, DEFAULT, CATALOG).groups == {"g_course"}


# -- plan_changes -----------------------------------------------------------------------


def plan(
    desired: DesiredMember,
    current: MemberSnapshot | None,
    *,
    bridge_blocked: bool = False,
    bridge_paid: bool = True,
    bridge_groups: Iterable[str] = (),
    policy: Policy = DEFAULT,
) -> Plan:
    """``plan_changes`` with test defaults.

    ``plan_changes`` itself has no default for ``bridge_paid`` (its callers must say who
    set the member's paid); here it defaults to True, a member the bridge made paid, and
    the tests about paid by hand pass ``bridge_paid=False``.
    """
    return plan_changes(
        desired,
        current,
        bridge_blocked=bridge_blocked,
        bridge_paid=bridge_paid,
        bridge_groups=frozenset(bridge_groups),
        policy=policy,
    )


def test_plan_changes_must_be_told_who_set_the_members_paid() -> None:
    # A default would silently treat a paid set by hand as the bridge's, and undo it.
    with pytest.raises(TypeError, match="bridge_paid"):
        plan_changes(  # type: ignore[call-arg]
            DesiredMember(paid=False, blocked=False),
            member(paid=True),
            bridge_blocked=False,
            policy=DEFAULT,
        )


def test_no_member_and_nothing_granted_plans_nothing() -> None:
    result = plan(DesiredMember(paid=False, blocked=False), None)

    assert result.empty
    assert result.create is False


def test_no_member_and_access_granted_plans_a_create_with_the_groups() -> None:
    desired = DesiredMember(paid=True, blocked=False, groups=frozenset({"g_course"}))

    result = plan(desired, None)

    assert result.create is True
    assert result.patch == {}
    assert result.add_groups == {"g_course"}
    assert result.bridge_blocked is False
    assert result.bridge_paid is True  # the member is created paid: the bridge's doing


def test_no_member_and_a_dispute_plans_a_blocked_create() -> None:
    result = plan(DesiredMember(paid=False, blocked=True), None)

    assert result.create is True
    assert result.patch == {"status": "blocked"}
    assert result.bridge_blocked is True
    assert result.bridge_paid is False


def test_member_already_matching_plans_nothing() -> None:
    result = plan(DesiredMember(paid=True, blocked=False), member(paid=True))

    assert result.empty


def test_payment_patches_only_paid() -> None:
    result = plan(DesiredMember(paid=True, blocked=False), member(paid=False))

    assert result.patch == {"paid": True}
    assert not result.create
    assert result.bridge_paid is True


def test_dispute_blocks_an_active_member_and_remembers_the_bridge_did_it() -> None:
    result = plan(DesiredMember(paid=True, blocked=True), member(paid=True))

    assert result.patch == {"status": "blocked"}
    assert result.bridge_blocked is True


def test_member_blocked_by_hand_is_not_unblocked_by_a_payment() -> None:
    result = plan(
        DesiredMember(paid=True, blocked=False),
        member(paid=False, blocked=True),
        bridge_blocked=False,
    )

    assert result.patch == {"paid": True}
    assert result.bridge_blocked is False


def test_member_blocked_by_hand_is_unblocked_when_the_policy_allows_it() -> None:
    result = plan(
        DesiredMember(paid=True, blocked=False),
        member(paid=False, blocked=True),
        bridge_blocked=False,
        policy=Policy(unblock_manual_blocks=True),
    )

    assert result.patch == {"paid": True, "status": "active"}
    assert result.bridge_blocked is False


def test_block_made_by_the_bridge_is_lifted_when_the_dispute_clears() -> None:
    result = plan(
        DesiredMember(paid=True, blocked=False),
        member(paid=True, blocked=True),
        bridge_blocked=True,
    )

    assert result.patch == {"status": "active"}
    assert result.bridge_blocked is False


def test_bridge_block_stays_recorded_while_the_dispute_stands() -> None:
    result = plan(
        DesiredMember(paid=False, blocked=True),
        member(paid=False, blocked=True),
        bridge_blocked=True,
    )

    assert result.empty
    assert result.bridge_blocked is True


def test_missing_desired_groups_are_added() -> None:
    desired = DesiredMember(paid=True, blocked=False, groups=frozenset({"g_course", "g_club"}))

    result = plan(desired, member(paid=True, groups={"g_club"}), bridge_groups={"g_club"})

    assert result.add_groups == {"g_course"}
    assert result.remove_groups == frozenset()


def test_only_bridge_added_groups_no_longer_desired_are_removed() -> None:
    desired = DesiredMember(paid=True, blocked=False, groups=frozenset({"g_course"}))
    current = member(paid=True, groups={"g_course", "g_club", "g_by_hand"})

    result = plan(desired, current, bridge_groups={"g_course", "g_club"})

    assert result.remove_groups == {"g_club"}
    assert result.add_groups == frozenset()


def test_groups_added_by_hand_are_never_removed() -> None:
    desired = DesiredMember(paid=False, blocked=False)
    current = member(paid=True, groups={"g_by_hand"})

    result = plan(desired, current, bridge_groups=set())

    assert result.remove_groups == frozenset()
    assert result.patch == {"paid": False}


def test_bridge_group_the_member_already_left_is_not_removed_again() -> None:
    desired = DesiredMember(paid=False, blocked=False)

    result = plan(desired, member(paid=False), bridge_groups={"g_club"})

    assert result.empty


# -- plan_changes: paid, by origin --------------------------------------------------------


@pytest.mark.parametrize(
    ("desired_paid", "member_paid", "bridge_paid", "still_the_bridges"),
    [
        pytest.param(
            False, True, False, False, id="member_paid_by_hand_stays_paid_when_the_purchases_end"
        ),
        # Nothing to set: the bridge did not make this paid=true, so it will not undo it.
        pytest.param(
            True, True, False, False, id="member_paid_by_hand_who_buys_stays_paid_by_hand"
        ),
        pytest.param(
            True, True, True, True, id="paid_set_by_the_bridge_stays_the_bridges_while_access_lasts"
        ),
        # Un-paid by hand while nothing grants access: nothing of the bridge's is left to undo.
        pytest.param(
            False,
            False,
            True,
            False,
            id="bridge_paid_is_forgotten_once_the_member_is_no_longer_paid",
        ),
    ],
)
def test_paid_by_origin_plans_nothing(
    desired_paid: bool, member_paid: bool, bridge_paid: bool, still_the_bridges: bool
) -> None:
    desired = DesiredMember(paid=desired_paid, blocked=False)

    result = plan(desired, member(paid=member_paid), bridge_paid=bridge_paid)

    assert result.empty
    assert result.bridge_paid is still_the_bridges


@pytest.mark.parametrize(
    ("desired_paid", "member_paid", "bridge_paid", "policy"),
    [
        pytest.param(
            False,
            True,
            False,
            Policy(unpay_manual_paid=True),
            id="member_paid_by_hand_is_unpaid_when_the_policy_allows_it",
        ),
        pytest.param(
            False, True, True, DEFAULT, id="paid_set_by_the_bridge_is_unpaid_when_the_purchases_end"
        ),
        pytest.param(
            True,
            False,
            True,
            DEFAULT,
            id="member_unpaid_by_hand_is_paid_again_while_a_purchase_grants_access",
        ),
    ],
)
def test_paid_by_origin_patches_paid(
    desired_paid: bool, member_paid: bool, bridge_paid: bool, policy: Policy
) -> None:
    desired = DesiredMember(paid=desired_paid, blocked=False)

    result = plan(desired, member(paid=member_paid), bridge_paid=bridge_paid, policy=policy)

    assert result.patch == {"paid": desired_paid}
    assert result.bridge_paid is desired_paid


def test_dispute_of_a_member_paid_by_hand_blocks_but_leaves_paid() -> None:
    result = plan(DesiredMember(paid=False, blocked=True), member(paid=True), bridge_paid=False)

    assert result.patch == {"status": "blocked"}
    assert (result.bridge_blocked, result.bridge_paid) == (True, False)


def test_block_on_end_spares_members_the_bridge_never_let_in() -> None:
    policy = Policy(revoke_action=RevokeAction.BLOCK)
    ended = desired_member([entitlement(ENDED, "stripe:sub_1")], policy)
    comp = MemberSnapshot(paid=True, blocked=False)
    # Paid by hand (a comp): the end of a purchase neither blocks nor un-pays them.
    assert plan_changes(ended, comp, bridge_blocked=False, bridge_paid=False, policy=policy).empty
    # Paid by the bridge: blocked and un-paid.
    plan = plan_changes(ended, comp, bridge_blocked=False, bridge_paid=True, policy=policy)
    assert plan.patch == {"paid": False, "status": "blocked"}
    # Already blocked by the bridge: stays blocked on every later sync.
    gone = MemberSnapshot(paid=False, blocked=True)
    assert plan_changes(ended, gone, bridge_blocked=True, bridge_paid=False, policy=policy).empty
    # No member: none is made just to be blocked.
    assert plan_changes(ended, None, bridge_blocked=False, bridge_paid=False, policy=policy).empty


def test_block_on_end_blocks_a_member_the_bridge_let_in_through_groups_only() -> None:
    policy = Policy(revoke_action=RevokeAction.BLOCK)
    ended = desired_member([entitlement(ENDED, "stripe:sub_1")], policy)
    member = MemberSnapshot(paid=False, blocked=False, groups=frozenset({"g_club"}))
    plan = plan_changes(
        ended,
        member,
        bridge_blocked=False,
        bridge_paid=False,
        bridge_groups=frozenset({"g_club"}),
        policy=policy,
    )
    assert plan.patch == {"status": "blocked"} and plan.remove_groups == {"g_club"}
