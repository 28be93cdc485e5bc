"""From a ledger to the desired Sotion member, and the smallest plan to get there."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from bridge.events import EntitlementState
from bridge.ledger import Entitlement
from bridge.membership import (
    DesiredMember,
    DisputeAction,
    MemberSnapshot,
    Plan,
    Policy,
    RevokeAction,
    desired_member,
    plan_changes,
)
from bridge.products import parse_catalog

ACTIVE = EntitlementState.ACTIVE
ENDED = EntitlementState.ENDED
PENDING = EntitlementState.PENDING
PAST_DUE = EntitlementState.PAST_DUE
DISPUTED = EntitlementState.DISPUTED
DEFAULT = Policy()
# Which access groups each product grants, for the tests that map products to groups.
GROUPS = {"prod_course": ("g_course",), "prod_club": ("g_club", "g_forum")}


def entitlement(
    state: EntitlementState, key: str = "stripe:sub_1", products: tuple[str, ...] = ()
) -> Entitlement:
    """One ledger entry."""
    return Entitlement(
        key=key,
        provider="stripe",
        state=state,
        occurred_at=100.0,
        event_id=f"evt_{key}",
        products=products,
    )


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
    desired = desired_member([entitlement(DISPUTED)], DEFAULT)

    assert desired == DesiredMember(paid=False, blocked=True)


def test_dispute_blocks_even_while_another_entitlement_is_active() -> None:
    ledger = [entitlement(DISPUTED, "stripe:pi_1"), entitlement(ACTIVE, "stripe:sub_2")]

    assert desired_member(ledger, DEFAULT) == DesiredMember(paid=True, blocked=True)


def test_dispute_with_the_revoke_action_only_ends_access() -> None:
    policy = Policy(dispute_action=DisputeAction.REVOKE)

    assert desired_member([entitlement(DISPUTED)], policy) == DesiredMember(
        paid=False, blocked=False
    )


def test_block_revoke_action_blocks_once_the_last_entitlement_ends() -> None:
    policy = Policy(revoke_action=RevokeAction.BLOCK)
    ledger = [entitlement(ENDED, "stripe:sub_1"), entitlement(ENDED, "stripe:pi_2")]

    assert desired_member(ledger, policy) == DesiredMember(paid=False, blocked=True)


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
    bridge_groups: Iterable[str] = (),
    policy: Policy = DEFAULT,
) -> Plan:
    """``plan_changes`` with test defaults."""
    return plan_changes(
        desired,
        current,
        bridge_blocked=bridge_blocked,
        bridge_groups=frozenset(bridge_groups),
        policy=policy,
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


def test_no_member_and_a_dispute_plans_a_blocked_create() -> None:
    result = plan(DesiredMember(paid=False, blocked=True), None)

    assert result.create is True
    assert result.patch == {"status": "blocked"}
    assert result.bridge_blocked is True


def test_member_already_matching_plans_nothing() -> None:
    result = plan(DesiredMember(paid=True, blocked=False), member(paid=True))

    assert result.empty


def test_payment_patches_only_paid() -> None:
    result = plan(DesiredMember(paid=True, blocked=False), member(paid=False))

    assert result.patch == {"paid": True}
    assert not result.create


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
