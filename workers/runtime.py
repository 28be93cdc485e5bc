"""The worker process's objects, built once from Settings (jobs only look them up)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from bridge.queues import connect
from bridge.settings import Settings, SettingsError
from bridge.sotion import SotionAPI, client_from_settings
from bridge.stripe_api import StripeAPI
from workers.budget import SharedBudget
from workers.resolve import Resolver
from workers.store import Store
from workers.sync import Applier

# A 429 is waited out inline once if the wait is short; longer waits reschedule the job.
INLINE_RATE_LIMIT_WAIT_SECONDS = 30.0


@dataclass
class Runtime:
    """Everything a job needs."""

    settings: Settings
    redis: redis.Redis
    store: Store
    sotion: SotionAPI
    applier: Applier


_current: Runtime | None = None


def build(settings: Settings, connection: redis.Redis | None = None) -> Runtime:
    """Build the runtime; SettingsError names what is missing."""
    if settings.sotion_api_key is None:
        raise SettingsError("SOTION_API_KEY is required to run workers")
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
    stripe_api = (
        StripeAPI(settings.stripe_api_key, api_base=settings.stripe_api_base)
        if settings.stripe_api_key
        else None
    )
    resolver = Resolver(store, stripe_api=stripe_api)
    applier = Applier(store, sotion, resolver)
    return Runtime(settings, connection, store, sotion, applier)


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
