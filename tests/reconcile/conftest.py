"""Fixtures of the reconcile tests: the `bridge` command line and the providers' stand-ins
on real sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bridge.sandbox import SandboxServer
from tests.reconcile.providers import Bridge, Clock, base_env
from tests.standins.server import StandInServer
from tests.standins.stripe import StripeStandIn


@pytest.fixture
def bridge(redis_url: str, redis_conn: redis.Redis, sotion: SandboxServer) -> Bridge:
    """The `bridge` command line, wired to the test Redis (flushed) and the sandbox."""
    return Bridge(base_env(redis_url, sotion.url))


@pytest.fixture
def stripe_clock() -> Clock:
    return Clock()


@pytest.fixture
def stripe(stripe_clock: Clock) -> StripeStandIn:
    """Stripe's objects; events are dated in whole seconds of ``stripe_clock``."""
    return StripeStandIn(clock=stripe_clock)


@pytest.fixture
def stripe_server(stripe: StripeStandIn) -> Iterator[StandInServer]:
    with StandInServer(stripe.app) as server:
        yield server
