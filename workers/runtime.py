"""The worker process's objects, built once from Settings (jobs only look them up)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from bridge.gumroad_api import GumroadAPI
from bridge.intake import Intake
from bridge.lemonsqueezy_api import LemonSqueezyAPI
from bridge.products import Catalog, load_catalog
from bridge.queues import bridge_queue, connect, enqueue_resync
from bridge.redact import register_secrets
from bridge.settings import Settings, SettingsError, policy, retry_policy
from bridge.sotion import SotionAPI, SotionError, client_from_settings
from bridge.sources import Source
from bridge.sources.gumroad import GumroadSource
from bridge.sources.lemonsqueezy import LemonSqueezySource
from bridge.sources.stripe import StripeSource
from bridge.startup import StartupError
from bridge.stripe_api import StripeAPI
from workers.budget import SharedBudget
from workers.groups import resolve_groups
from workers.parking import Parking
from workers.reconcile import Reconciler
from workers.resolve import Resolver
from workers.store import Store
from workers.sync import Applier

# A 429 is waited out inline once if the wait is short; longer waits reschedule the job.
INLINE_RATE_LIMIT_WAIT_SECONDS = 30.0
# A reconcile waits out a spent rate budget or a 429 up to this long, this many times a call.
RECONCILE_RATE_LIMIT_WAIT_SECONDS = 300.0
RECONCILE_RATE_LIMIT_WAITS = 20


@dataclass
class Runtime:
    """Everything a job needs."""

    settings: Settings
    redis: redis.Redis
    store: Store
    sotion: SotionAPI
    applier: Applier
    catalog: Catalog | None
    parking: Parking
    reconciler: Reconciler


_current: Runtime | None = None


def build(settings: Settings, connection: redis.Redis | None = None) -> Runtime:
    """Build the runtime; SettingsError names what is missing or wrong.

    With a products file, its group names are resolved against Sotion here, so a name
    that does not exist stops the worker at start-up instead of failing every job (and
    Sotion failing to list them is a StartupError).
    """
    if settings.sotion_api_key is None:
        raise SettingsError("SOTION_API_KEY is required to run workers")
    register_secrets(settings.secret_values())
    connection = connection if connection is not None else connect(settings)
    store = Store(connection)
    budget = SharedBudget(connection)
    sotion = client_from_settings(
        settings,
        before_request=budget.acquire,
        on_rate_limit=budget.record,
        rate_limit_waits=1,
        max_rate_limit_wait=INLINE_RATE_LIMIT_WAIT_SECONDS,
    )
    catalog = None
    if settings.products_file is not None:
        catalog = load_catalog(settings.products_file)
        try:
            catalog = resolve_groups(catalog, sotion)
        except SotionError as exc:
            raise StartupError(
                f"BRIDGE_PRODUCTS: the access groups could not be read from Sotion: {exc}"
            ) from exc
    stripe_api = (
        StripeAPI(settings.stripe_api_key, api_base=settings.stripe_api_base)
        if settings.stripe_api_key
        else None
    )
    lemonsqueezy_api = (
        LemonSqueezyAPI(settings.lemonsqueezy_api_key, api_base=settings.lemonsqueezy_api_base)
        if settings.lemonsqueezy_api_key
        else None
    )
    gumroad_api = (
        GumroadAPI(settings.gumroad_access_token, api_base=settings.gumroad_api_base)
        if settings.gumroad_access_token
        else None
    )
    resolver = Resolver(
        store,
        stripe_api=stripe_api,
        lemonsqueezy_api=lemonsqueezy_api,
        gumroad_api=gumroad_api,
        gumroad_seller_id=settings.gumroad_seller_id,
        needs_products=catalog is not None,
    )
    queue = bridge_queue(connection)

    def schedule_resync(email: str, at: float) -> None:
        retry = retry_policy(settings).rq_retry()
        enqueue_resync(queue, email, at=at, retry=retry, reason="after a past_due grace")

    applier = Applier(
        store,
        sotion,
        resolver,
        policy=policy(settings),
        catalog=catalog,
        schedule_resync=schedule_resync,
        dry_run=settings.dry_run,
    )
    parking = Parking(
        queue,
        store,
        park_seconds=settings.park_hours * 3600,
        retry_policy=retry_policy(settings),
    )
    sources: dict[str, Source] = {}
    if stripe_api is not None:
        sources["stripe"] = StripeSource(stripe_api)
    if lemonsqueezy_api is not None:
        sources["lemonsqueezy"] = LemonSqueezySource(lemonsqueezy_api)
    if gumroad_api is not None:
        sources["gumroad"] = GumroadSource(gumroad_api, seller_id=settings.gumroad_seller_id)
    # A backfill or reconcile waits out Sotion's rate limit however long it takes (a job
    # gives up after 30 s and is retried later; a run of 10,000 members cannot).
    patient = client_from_settings(
        settings,
        before_request=SharedBudget(connection, max_wait=RECONCILE_RATE_LIMIT_WAIT_SECONDS).acquire,
        on_rate_limit=budget.record,
        rate_limit_waits=RECONCILE_RATE_LIMIT_WAITS,
        max_rate_limit_wait=RECONCILE_RATE_LIMIT_WAIT_SECONDS,
    )
    reconciler = Reconciler(
        store,
        Applier(
            store,
            patient,
            resolver,
            policy=policy(settings),
            catalog=catalog,
            schedule_resync=schedule_resync,
            dry_run=settings.dry_run,
        ),
        patient,
        Intake(queue, retry_policy(settings)),
        sources,
        accept_test_events=settings.accept_test_events,
        always_dry=settings.dry_run,
    )
    return Runtime(settings, connection, store, sotion, applier, catalog, parking, reconciler)


def configure(settings: Settings, connection: redis.Redis | None = None) -> Runtime:
    """Build the runtime and make it the one jobs use."""
    global _current
    _current = build(settings, connection)
    return _current


def current() -> Runtime:
    """The configured runtime, built from the environment on first use."""
    if _current is None:
        return configure(Settings.from_env())
    return _current


def reset() -> None:
    """Forget the runtime (tests)."""
    global _current
    _current = None
