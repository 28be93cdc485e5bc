"""Shared fixtures: a private real Redis, the Sotion sandbox on a real socket, the app."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from bridge.app import create_app
from bridge.embedded import EmbeddedRedis
from bridge.queues import bridge_queue
from bridge.sandbox import SandboxConfig, SandboxServer
from bridge.settings import Settings
from bridge.sotion import LegacySotionClient, SotionClient
from tests.standins.gumroad import GumroadStandIn
from tests.standins.lemonsqueezy import LemonSqueezyStandIn
from tests.standins.server import StandInServer
from workers import runtime as worker_runtime
from workers.worker import PromptPubSub

# A developer's own .env in the checkout never reaches the tests (the tests of .env
# loading name their files themselves).
os.environ.setdefault("BRIDGE_ENV_FILE", os.devnull)

SANDBOX_KEY = "so_test_key"
LEGACY_KEY = "d600c2d2-e07e-46b9-b79a-f0376aaa303d"
LEGACY_SITE = "E1CP6DYM2JF6H"
STRIPE_SECRET = "whsec_testsecret0123456789abcdef"

SandboxFactory = Callable[..., SandboxServer]


# -- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``REDIS_URL`` if given (it is flushed!), else a private redis-server for the run."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    with server:
        yield server.url


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A connection to the test Redis, flushed before and after the test."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def queue(redis_conn: redis.Redis) -> Queue:
    """The bridge's RQ queue on the test Redis."""
    return bridge_queue(redis_conn)


def drain(queue: Queue, max_jobs: int | None = None) -> None:
    """Run every queued job (or ``max_jobs``) in this process (retries with a 0 s interval
    included)."""
    worker = PromptPubSub([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.work(burst=True, max_jobs=max_jobs)


@contextmanager
def registered_worker(queue: Queue, name: str) -> Iterator[SimpleWorker]:
    """An idle RQ worker registered on ``queue``, as a running one is, until the end."""
    registered = SimpleWorker(
        [queue], connection=queue.connection, serializer=JSONSerializer, name=name
    )
    registered.register_birth()
    registered.set_state(WorkerStatus.IDLE)
    try:
        yield registered
    finally:
        registered.register_death()


# -- Sotion sandbox ----------------------------------------------------------------------


@pytest.fixture
def sandbox_factory() -> Iterator[SandboxFactory]:
    """Start sandboxes with custom settings; all are stopped after the test."""
    started: list[SandboxServer] = []

    def start(**options: Any) -> SandboxServer:
        options.setdefault("api_key", SANDBOX_KEY)
        options.setdefault("legacy_key", LEGACY_KEY)
        options.setdefault("legacy_site_id", LEGACY_SITE)
        server = SandboxServer(SandboxConfig(**options), port=0)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sotion(sandbox_factory: SandboxFactory) -> SandboxServer:
    """A Sotion sandbox with default settings, listening on 127.0.0.1."""
    return sandbox_factory()


@pytest.fixture
def sotion_api(sotion: SandboxServer) -> Iterator[SotionClient]:
    """A v1 client for the ``sotion`` sandbox."""
    api = SotionClient.connect(sotion.url, SANDBOX_KEY, timeout=(2.0, 5.0))
    yield api
    api.close()


@pytest.fixture
def legacy_client(sotion: SandboxServer) -> Iterator[LegacySotionClient]:
    """A legacy-API client for the ``sotion`` sandbox."""
    template = f"{sotion.root_url}/legacy/{{key}}/sites/{{site_id}}"
    api = LegacySotionClient.connect(LEGACY_KEY, LEGACY_SITE, url_template=template)
    yield api
    api.close()


# -- the bridge --------------------------------------------------------------------------


@pytest.fixture
def settings(redis_url: str, sotion: SandboxServer, tmp_path: Path) -> Settings:
    """Settings for a bridge wired to the test Redis and the sandbox; retries immediate."""
    return Settings(
        redis_url=redis_url,
        data_dir=tmp_path / "data",
        sotion_api_key=SANDBOX_KEY,
        sotion_api_url=sotion.url,
        sotion_timeout=(2.0, 2.0),
        stripe_webhook_secrets=(STRIPE_SECRET,),
        accept_test_events=True,
        retry_attempts=3,
        retry_base_seconds=0,
    )


@pytest.fixture
def app(settings: Settings, redis_conn: redis.Redis) -> Flask:
    """The bridge app on the test settings."""
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the bridge app."""
    return app.test_client()


@pytest.fixture
def runtime(settings: Settings, redis_conn: redis.Redis) -> Iterator[worker_runtime.Runtime]:
    """The worker runtime (what jobs use) on the test settings."""
    built = worker_runtime.configure(settings, redis_conn)
    yield built
    worker_runtime.reset()


# -- the providers' APIs (stand-ins on real sockets) -----------------------------------


@pytest.fixture
def lemonsqueezy() -> LemonSqueezyStandIn:
    """Lemon Squeezy's API, answering the reconcile tests' key."""
    from tests.reconcile.providers import LEMONSQUEEZY_KEY  # it imports this module

    return LemonSqueezyStandIn(LEMONSQUEEZY_KEY)


@pytest.fixture
def ls_server(lemonsqueezy: LemonSqueezyStandIn) -> Iterator[StandInServer]:
    with StandInServer(lemonsqueezy.app) as server:
        yield server


@pytest.fixture
def gumroad() -> GumroadStandIn:
    """Gumroad's API, answering its stand-in's token."""
    return GumroadStandIn()


@pytest.fixture
def gumroad_server(gumroad: GumroadStandIn) -> Iterator[StandInServer]:
    with StandInServer(gumroad.app) as server:
        yield server


@pytest.fixture
def env(redis_url: str, sotion: SandboxServer) -> dict[str, str]:
    """The environment the ``bridge`` commands read, wired as ``settings`` is."""
    return {
        "REDIS_URL": redis_url,
        "SOTION_API_URL": sotion.url,
        "SOTION_API_KEY": SANDBOX_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Captured output with a lone surrogate (the hostile-input tests log some) made
    reportable: pytest-xdist sends reports between processes as UTF-8."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    report.sections = [
        (name, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for name, text in report.sections
    ]
