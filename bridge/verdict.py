"""Why a buyer has access or lacks it, in one sentence (``bridge member``, the admin page).

Pure: it reads the report's values (``bridge/inspect.py``) and the state the ledger calls
for (``bridge/membership.py``), and returns the sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from bridge import admin
from bridge.membership import DesiredMember

if TYPE_CHECKING:
    from bridge.inspect import EntitlementView, SotionMember, SotionView

# How the providers are named in sentences.
PROVIDER_NAMES = {"stripe": "Stripe", "lemonsqueezy": "Lemon Squeezy", "gumroad": "Gumroad"}
# What the event that ended a purchase did, by words in its type.
_ENDINGS = {"refund": "refunded", "dispute": "disputed", "chargeback": "charged back"}
_ENDINGS |= {"cancel": "cancelled", "expire": "expired", "deleted": "ended"}


def verdict(
    entitlements: Sequence[EntitlementView],
    desired: DesiredMember,
    sotion: SotionView,
    events: Sequence[admin.JobInfo],
    *,
    dry_run: bool,
) -> str:
    """Why the buyer has access or not, in one sentence."""
    pending = _on_its_way(events)
    if not entitlements:
        if pending is not None:
            return f"no access yet: no entitlement recorded; {pending}"
        if events:
            return (
                f"no access: no entitlement recorded for this email; {len(events)} event(s) "
                "received changed none (an unlisted product, or nothing paid yet)"
            )
        return (
            "no access: no entitlement recorded for this email — no event received (check "
            "the provider's webhook deliveries and `bridge status`)"
        )
    granting = [e for e in entitlements if e.grants_access and e.listed]
    member = sotion.member
    if grants(desired) and granting:
        grant = f"{_name(granting[0])} {granting[0].state} since {_when(granting[0].since)}"
        if not sotion.read:
            return f"has access per the ledger: {grant}; Sotion {sotion.error}"
        said = _shortfall(desired, member)
        if said is None:
            return f"has access: {grant}"
        return f"should have access ({grant}) but Sotion {said}: {_why(pending, dry_run)}"
    if desired.blocked:
        disputed = [e for e in entitlements if e.disputes]
        cause = (
            f"{_name(disputed[0])} disputed ({disputed[0].disputes[-1].state})"
            if disputed
            else "the last purchase ended and BRIDGE_ON_END blocks"
        )
        line = f"no access (blocked): {cause}"
        if sotion.read and member is not None and member.status != "blocked":
            line += f"; but Sotion says status={member.status}: {_why(pending, dry_run)}"
        return line
    if not any(e.listed for e in entitlements):
        line = "no access: no purchase of a product the products file (BRIDGE_PRODUCTS) lists"
    else:
        latest = next(e for e in entitlements if e.listed)
        line = f"no access: {_name(latest)} {_ending(latest, events)} at {_when(latest.since)}"
    if sotion.read and member is not None and member.paid:
        line += f"; Sotion still says paid=true: {_why(pending, dry_run, unpaid=True)}"
    return line


def _name(entitlement: EntitlementView) -> str:
    provider = PROVIDER_NAMES.get(entitlement.provider, entitlement.provider)
    return f"{provider} {entitlement.purchase}"


def _ending(entitlement: EntitlementView, events: Sequence[admin.JobInfo]) -> str:
    """What happened to a purchase that grants nothing: refunded, ended, past due..."""
    if entitlement.state == "disputed":
        return "disputed"
    if entitlement.state == "past_due":
        return "past due (the grace is over)"
    if entitlement.state == "pending":
        return "not paid yet"
    key = f"{entitlement.provider}:{entitlement.event_id}"
    event_type = next((e.event_type for e in events if e.dedupe_key == key), None) or ""
    for word, ending in _ENDINGS.items():
        if word in event_type.lower():
            return ending
    return entitlement.state


def _on_its_way(events: Sequence[admin.JobInfo]) -> str | None:
    """The clause about the newest job still on its way, else the newest failed one."""
    job = next((job for job in events if job.status in admin.PENDING), None)
    job = job or next((job for job in events if job.status == admin.FAILED), None)
    return _job_clause(job) if job is not None else None


def _job_clause(job: admin.JobInfo) -> str:
    if job.status == admin.RETRYING:
        return f"job {job.id} is retrying (next attempt {_when(job.next_attempt_at)})"
    if job.status == admin.PARKED:
        return (
            f"job {job.id} is parked until {_when(job.next_attempt_at)} waiting for an "
            "event that names the buyer"
        )
    if job.status == admin.FAILED:
        return f"job {job.id} failed: {job.reason} (`bridge jobs replay {job.id}`)"
    return f"job {job.id} is {job.status}"


def _why(pending: str | None, dry_run: bool, *, unpaid: bool = False) -> str:
    """Why Sotion differs from the ledger: a job on its way, the dry run, or nothing."""
    if dry_run:
        return "Dry run is on: writes are not sent (BRIDGE_DRY_RUN)"
    if pending is not None:
        return pending
    if unpaid:
        return "paid not set by the bridge is kept (BRIDGE_UNPAY_MANUAL), or run `bridge reconcile`"
    return "no job is on its way: run `bridge reconcile`"


def grants(desired: DesiredMember) -> bool:
    """Whether the ledger lets the buyer in: paid, or in a group a product grants (a rule
    with ``paid = false``), and not blocked."""
    return (desired.paid or bool(desired.groups)) and not desired.blocked


def _shortfall(desired: DesiredMember, member: SotionMember | None) -> str | None:
    """What Sotion's member lacks of what the ledger grants; None when nothing."""
    if member is None:
        return "has no member"
    if member.status == "blocked" or (desired.paid and not member.paid):
        return _member_state(member)
    missing = sorted(set(desired.groups) - set(member.group_ids))
    if missing:
        return f"has the member outside group(s) {', '.join(missing)}"
    return None


def _member_state(member: SotionMember) -> str:
    if member.status == "blocked":
        return "says status=blocked"
    return f"says paid={'true' if member.paid else 'false'}"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "unknown"
