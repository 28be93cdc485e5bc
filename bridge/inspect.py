"""Everything the bridge knows about one buyer, and why they have or lack access.

``member_report`` reads the buyer's ledger (``workers/store.py``), the jobs of their
events (the intake's index, ``bridge/admin.py`` for each job's state), the member as
Sotion has it now, and the state the ledger calls for (``bridge/membership.py``), and
says in one sentence (``bridge/verdict.py``) why the buyer has access or not. The values
are frozen dataclasses with no presentation in them: ``bridge member`` and the admin page
render them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from bridge import admin
from bridge.ledger import UNKNOWN_AT, Entitlement
from bridge.membership import Policy, desired_member, grants_access, is_disputed
from bridge.products import Catalog, load_catalog
from bridge.queues import bridge_queue
from bridge.settings import Settings, SettingsError, policy
from bridge.sotion import SotionAPI, SotionError, client_from_settings, normalize_email
from bridge.verdict import grants, verdict

# Sotion is read with a short timeout: the report says it could not be, it does not wait.
SOTION_TIMEOUT = (2.0, 3.0)
# What a purchase id's prefix says it is.
_KINDS = {"sub_": "subscription", "pi_": "payment", "cs_": "checkout", "in_": "invoice"}
_KINDS |= {"ch_": "charge", "order_": "order", "sale_": "sale"}


@dataclass(frozen=True)
class DisputeView:
    """One dispute of a purchase's payments."""

    id: str
    state: str
    at: datetime


@dataclass(frozen=True)
class EntitlementView:
    """One purchase in the buyer's ledger."""

    key: str
    provider: str
    purchase: str  # e.g. "subscription sub_123"
    state: str
    since: datetime | None  # when the event that set the state happened
    event_id: str
    job_id: str | None  # the job of that event, when the index still lists it
    products: tuple[str, ...]
    disputes: tuple[DisputeView, ...]
    grants_access: bool
    listed: bool  # a product the products file lists (True without a file)


@dataclass(frozen=True)
class SotionMember:
    """The member as Sotion has them now."""

    id: str
    paid: bool | None
    status: str
    groups: tuple[str, ...]  # names where Sotion gave them, else ids
    group_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SotionView:
    """What reading Sotion gave: the member, nobody, or why it could not be read."""

    member: SotionMember | None
    error: str | None = None  # one line: Sotion unreachable, the key refused, no key

    @property
    def read(self) -> bool:
        """True when Sotion answered (with a member or with nobody)."""
        return self.error is None


@dataclass(frozen=True)
class Desired:
    """The member the whole ledger calls for."""

    paid: bool
    blocked: bool
    groups: tuple[str, ...]


@dataclass(frozen=True)
class MemberReport:
    """Everything about one buyer."""

    email: str
    entitlements: tuple[EntitlementView, ...]
    events: tuple[admin.JobInfo, ...]  # newest first
    received: tuple[datetime | None, ...]  # when each of ``events`` was received
    sotion: SotionView
    desired: Desired
    has_access: bool  # what the ledger says
    verdict: str
    dry_run: bool

    @property
    def known(self) -> bool:
        """True when anything is known about the email (an entitlement, an event, a member)."""
        return bool(self.entitlements or self.events or self.sotion.member is not None)


def member_report(
    connection: redis.Redis,
    sotion: SotionAPI | None,
    settings: Settings,
    email: str,
    *,
    now: float | None = None,
) -> MemberReport:
    """The report on ``email`` (lowercased). ``sotion`` None: no key configured; Sotion
    failing is said in the report, never raised. Redis errors propagate."""
    from workers.store import Store  # the worker side's storage of the ledger

    email = normalize_email(email)
    moment = time.time() if now is None else now
    the_policy = policy(settings)
    catalog = load_catalog(settings.products_file) if settings.products_file else None
    ledger = Store(connection).entitlements(email)
    queue = bridge_queue(connection)
    indexed = admin.event_jobs(queue, email)
    events = admin.jobs_info(queue, [job_id for _, job_id in indexed])
    by_event = {info.dedupe_key: info.id for info in reversed(events) if info.dedupe_key}
    views = tuple(
        _entitlement(e, the_policy, catalog, moment, by_event.get(f"{e.provider}:{e.event_id}"))
        for e in sorted(ledger.values(), key=lambda e: e.occurred_at, reverse=True)
    )
    wanted = desired_member(ledger.values(), the_policy, catalog, now=moment)
    live = read_member(sotion, email)
    desired = Desired(wanted.paid, wanted.blocked, tuple(sorted(wanted.groups)))
    return MemberReport(
        email=email,
        entitlements=views,
        events=tuple(events),
        received=tuple(_at(score) for score, _ in indexed),
        sotion=live,
        desired=desired,
        has_access=grants(wanted),
        verdict=verdict(views, wanted, live, events, dry_run=settings.dry_run),
        dry_run=settings.dry_run,
    )


def sotion_reader(settings: Settings) -> SotionAPI | None:
    """The Sotion client a report reads with (a short timeout: the report says Sotion could
    not be read, it does not wait); None when no key is configured."""
    try:
        return client_from_settings(settings, timeout=SOTION_TIMEOUT)
    except SettingsError:
        return None


def read_member(sotion: SotionAPI | None, email: str) -> SotionView:
    """The member as Sotion has them now, or the one-line reason it could not be read."""
    if sotion is None:
        return SotionView(None, "not read: SOTION_API_KEY is not set")
    try:
        found = sotion.find_member_by_email(email)
        if found is not None and found.access_groups is None:
            found = sotion.get_member(found.id)  # lists leave the groups out
    except SotionError as exc:
        return SotionView(None, f"could not be read: {_one_line(exc)}")
    if found is None:
        return SotionView(None)
    groups = tuple(sorted(g.name or g.id for g in found.access_groups or ()))
    ids = tuple(sorted(g.id for g in found.access_groups or ()))
    return SotionView(SotionMember(found.id, found.paid, found.status, groups, ids))


def _entitlement(
    entitlement: Entitlement,
    the_policy: Policy,
    catalog: Catalog | None,
    now: float,
    job: str | None,
) -> EntitlementView:
    listed = catalog is None or catalog.grant_for(entitlement) is not None
    return EntitlementView(
        key=entitlement.key,
        provider=entitlement.provider,
        purchase=_purchase(entitlement.key),
        state="disputed" if is_disputed(entitlement, the_policy) else entitlement.state.value,
        since=_at(entitlement.occurred_at) if entitlement.occurred_at != UNKNOWN_AT else None,
        event_id=entitlement.event_id,
        job_id=job,
        products=entitlement.products,
        disputes=tuple(DisputeView(d.id, d.state.value, _at(d.at)) for d in entitlement.disputes),
        grants_access=grants_access(entitlement, the_policy, now),
        listed=listed,
    )


def _purchase(key: str) -> str:
    """``stripe:sub_1`` -> ``subscription sub_1``, ``lemonsqueezy:order_9`` -> ``order 9``
    (Stripe's prefixes are part of its ids; the others' are the bridge's)."""
    provider, _, ref = key.partition(":")
    for prefix, kind in _KINDS.items():
        if ref.startswith(prefix):
            return f"{kind} {ref if provider == 'stripe' else ref.removeprefix(prefix)}"
    return f"purchase {ref or key}"


def _one_line(exc: SotionError) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _at(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)
