"""From a ledger to the Sotion member it should produce, and the smallest change to get there.

Pure: no Redis, no HTTP. The worker loads the ledger and the member, calls
:func:`desired_member` and :func:`plan_changes`, and carries out the plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bridge.events import DisputeState, EntitlementState
from bridge.ledger import Entitlement
from bridge.products import Catalog, Grant


class RevokeAction(StrEnum):
    """What ending the last entitlement does."""

    UNPAID = "unpaid"  # paid=false (the default)
    BLOCK = "block"  # paid=false and status=blocked


class DisputeAction(StrEnum):
    """What a dispute or chargeback does."""

    BLOCK = "block"  # status=blocked (the default)
    REVOKE = "revoke"  # treated like the entitlement ending


@dataclass(frozen=True)
class Policy:
    """The operator's choices (DESIGN §4)."""

    revoke_action: RevokeAction = RevokeAction.UNPAID
    dispute_action: DisputeAction = DisputeAction.BLOCK
    past_due_keeps_access: bool = True
    # Seconds a past_due entitlement keeps access; None: until the provider gives up.
    past_due_grace_seconds: float | None = None
    unblock_manual_blocks: bool = False
    # Un-pay members who were paid before the bridge met them (a comp, an import) when
    # the purchases the bridge tracks for them end.
    unpay_manual_paid: bool = False
    # Inquiries (no funds withdrawn) count as disputes too.
    inquiries_are_disputes: bool = False


@dataclass(frozen=True)
class DesiredMember:
    """What the ledger says the Sotion member should look like."""

    paid: bool
    blocked: bool
    groups: frozenset[str] = frozenset()
    # Blocked only because the last purchase ended (BRIDGE_ON_END=block), not a dispute:
    # that block is for members whose access the bridge granted.
    ended_only: bool = False


@dataclass(frozen=True)
class MemberSnapshot:
    """The parts of a Sotion member the bridge compares against."""

    paid: bool
    blocked: bool
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    """The calls that bring Sotion to the desired state (empty when nothing differs)."""

    create: bool = False
    patch: dict[str, Any] = field(default_factory=dict)
    add_groups: frozenset[str] = frozenset()
    remove_groups: frozenset[str] = frozenset()
    bridge_blocked: bool = False  # after the plan: is a block in place that the bridge made?
    bridge_paid: bool = False  # after the plan: is the member paid because the bridge said so?

    @property
    def empty(self) -> bool:
        """True when Sotion already matches."""
        return not (self.create or self.patch or self.add_groups or self.remove_groups)

    def calls(self) -> list[str]:
        """The Sotion calls the plan makes, named as a job's result names them."""
        named = [f"create:paid={self.bridge_paid}"] if self.create else []
        if self.patch:
            named.append("patch:" + ",".join(f"{k}={v}" for k, v in sorted(self.patch.items())))
        named += [f"add-group:{group_id}" for group_id in sorted(self.add_groups)]
        return named + [f"remove-group:{group_id}" for group_id in sorted(self.remove_groups)]


# Dispute states that always count as a dispute (an inquiry counts only if the policy says).
_DISPUTING = frozenset({DisputeState.OPEN, DisputeState.LOST})


def is_disputed(entitlement: Entitlement, policy: Policy) -> bool:
    """Whether a dispute of this entitlement's payments stands (the dispute action applies)."""
    return any(
        d.state in _DISPUTING or (d.state is DisputeState.INQUIRY and policy.inquiries_are_disputes)
        for d in entitlement.disputes
    )


def grants_access(entitlement: Entitlement, policy: Policy, now: float | None = None) -> bool:
    """Whether this entitlement, in its current state, gives access at ``now``."""
    if is_disputed(entitlement, policy):
        return False
    if entitlement.state is EntitlementState.ACTIVE:
        return True
    if entitlement.state is not EntitlementState.PAST_DUE or not policy.past_due_keeps_access:
        return False
    if policy.past_due_grace_seconds is None or now is None:
        return True
    return now < entitlement.occurred_at + policy.past_due_grace_seconds


def newly_grants(
    before: Entitlement | None, after: Entitlement | None, policy: Policy, now: float
) -> bool:
    """Whether recording an event made the entitlement give access it did not give before
    (a purchase, a subscription back from its end): what it grants is granted again, even
    where the member was changed by hand since the bridge last wrote it."""
    if after is None or not grants_access(after, policy, now):
        return False
    return before is None or not grants_access(before, policy, now)


def reasserted(
    member: MemberSnapshot,
    desired: DesiredMember,
    *,
    bridge_paid: bool,
    bridge_groups: frozenset[str],
) -> MemberSnapshot:
    """The member with what the bridge granted and still grants taken as not there, so a
    new grant writes it again (a ``paid`` or a group the bridge gave and someone took back).

    What the member had before the bridge (a comp, a group added by hand) is left as it is:
    a purchase does not make it the bridge's.
    """
    return MemberSnapshot(
        paid=member.paid and not (desired.paid and bridge_paid),
        blocked=member.blocked,
        groups=member.groups - (desired.groups & bridge_groups),
    )


def desired_member(
    entitlements: Iterable[Entitlement],
    policy: Policy,
    catalog: Catalog | None = None,
    *,
    now: float | None = None,
) -> DesiredMember:
    """The member state the whole ledger calls for (never one event alone).

    With a catalog, only entitlements of listed products count: each grants what its
    rule says, and every member with access also gets the default groups.
    """
    counted: list[tuple[Entitlement, Grant]] = []
    for entitlement in entitlements:
        grant = Grant() if catalog is None else catalog.grant_for(entitlement)
        if grant is not None:
            counted.append((entitlement, grant))
    active = [grant for entitlement, grant in counted if grants_access(entitlement, policy, now)]
    disputed = any(is_disputed(e, policy) for e, _ in counted)
    dispute_block = disputed and policy.dispute_action is DisputeAction.BLOCK
    ended_block = not active and bool(counted) and policy.revoke_action is RevokeAction.BLOCK
    blocked = dispute_block or ended_block
    groups: set[str] = set()
    for grant in active:
        groups.update(grant.groups)
    if active and catalog is not None:
        groups.update(catalog.default_groups)
    return DesiredMember(
        paid=any(grant.paid for grant in active),
        blocked=blocked,
        groups=frozenset(groups),
        ended_only=blocked and not dispute_block,
    )


def plan_changes(
    desired: DesiredMember,
    member: MemberSnapshot | None,
    *,
    bridge_blocked: bool,
    bridge_paid: bool,
    bridge_groups: frozenset[str] = frozenset(),
    policy: Policy,
) -> Plan:
    """The smallest set of changes; never undoes what the bridge did not do.

    ``bridge_blocked`` says whether the member's current block was made by the bridge,
    ``bridge_paid`` whether their ``paid=true`` was; ``bridge_groups`` are the groups the
    bridge added. A block or a ``paid`` made by hand is undone only when the policy allows
    it; groups added by hand are never removed.
    """
    let_in = bridge_paid or bridge_blocked or bool(bridge_groups) or policy.unpay_manual_paid
    if desired.ended_only and not let_in:
        # The end of a purchase blocks whom the bridge let in (paid, or put in a group),
        # not a comp or a stranger.
        desired = DesiredMember(paid=desired.paid, blocked=False, groups=desired.groups)
    if member is None:
        if not (desired.paid or desired.groups) and (desired.ended_only or not desired.blocked):
            # Nothing to grant: no member is made (not even to block them for an end).
            return Plan()
        patch: dict[str, Any] = {"status": "blocked"} if desired.blocked else {}
        return Plan(
            create=True,
            patch=patch,
            add_groups=desired.groups,
            bridge_blocked=desired.blocked,
            bridge_paid=desired.paid,
        )
    patch = {}
    still_bridge_paid = bridge_paid and member.paid
    if desired.paid and not member.paid:
        patch["paid"] = True
        still_bridge_paid = True
    elif not desired.paid and member.paid and (bridge_paid or policy.unpay_manual_paid):
        patch["paid"] = False
        still_bridge_paid = False
    still_bridge_blocked = bridge_blocked and member.blocked
    if desired.blocked and not member.blocked:
        patch["status"] = "blocked"
        still_bridge_blocked = True
    elif (
        not desired.blocked and member.blocked and (bridge_blocked or policy.unblock_manual_blocks)
    ):
        patch["status"] = "active"
        still_bridge_blocked = False
    return Plan(
        patch=patch,
        add_groups=desired.groups - member.groups,
        remove_groups=(bridge_groups - desired.groups) & member.groups,
        bridge_blocked=still_bridge_blocked,
        bridge_paid=still_bridge_paid,
    )
