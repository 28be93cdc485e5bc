"""``bridge trigger``: signed samples sent to a bridge on a real socket, applied by the
worker to the Sotion sandbox; the bridge's refusals and the command's own errors."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from rq import Queue
from werkzeug.serving import make_server

from bridge import discovery, runner, trigger_wait
from bridge import trigger as core
from bridge.app import create_app
from bridge.cli import main
from bridge.embedded import free_port
from bridge.runner import (
    SANDBOX_GUMROAD_TOKEN,
    SANDBOX_LEMONSQUEEZY_SECRET,
    SANDBOX_STRIPE_SECRET,
)
from bridge.samples import SAMPLES
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests import commands
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET, drain
from workers import runtime as worker_runtime

LS_SECRET = "ls-signing-secret-0123456789"
GUMROAD_TOKEN = "gumroad-token-0123456789abcdef0123456789"
EMAIL = "buyer@example.com"

Start = Callable[..., str]


@pytest.fixture(autouse=True)
def _own_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./.env but the test's own is read."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def env(redis_url: str, settings: Settings) -> dict[str, str]:
    """What the command reads: the same secrets and Redis as the bridge under test."""
    return {
        "REDIS_URL": redis_url,
        "BRIDGE_DATA_DIR": str(settings.data_dir),
        "SOTION_API_URL": settings.sotion_api_url,
        "SOTION_API_KEY": SANDBOX_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "LEMONSQUEEZY_WEBHOOK_SECRET": LS_SECRET,
        "GUMROAD_WEBHOOK_TOKEN": GUMROAD_TOKEN,
    }


@pytest.fixture
def start(settings: Settings, redis_conn: redis.Redis) -> Iterator[Start]:
    """Start a bridge (web on a real socket, worker runtime) on the test settings with every
    provider enabled, plus ``changes``; returns its URL."""
    servers: list[Any] = []

    def start_bridge(**changes: Any) -> str:
        changes.setdefault("lemonsqueezy_webhook_secrets", (LS_SECRET,))
        changes.setdefault("gumroad_webhook_token", GUMROAD_TOKEN)
        new = dataclasses.replace(settings, **changes)
        worker_runtime.configure(new, redis_conn)
        server = make_server("127.0.0.1", 0, create_app(new), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start_bridge
    for server in servers:
        server.shutdown()
    worker_runtime.reset()


def _trigger(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["trigger", *args], env=env)


def _trigger_with_worker(queue: Queue, env: dict[str, str], *args: str) -> Result:
    """``bridge trigger ... --wait`` while a worker drains the queue (this thread)."""
    results: list[Result] = []
    thread = threading.Thread(target=lambda: results.append(_trigger(env, *args, "--wait")))
    thread.start()
    while thread.is_alive():
        if queue.count:
            drain(queue)
        time.sleep(0.02)
    thread.join()
    return results[0]


def _member_paid(sotion_api: SotionClient, email: str) -> bool | None:
    member = sotion_api.find_member_by_email(email)
    return None if member is None else member.paid


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "purchase", "cancellation"),
    [
        ("stripe", "checkout.session.completed", "customer.subscription.deleted"),
        ("lemonsqueezy", "order_created", "subscription_expired"),
        ("gumroad", "sale", "subscription_ended"),
    ],
)
def test_a_purchase_then_its_cancellation_make_the_member_paid_then_unpaid(
    start: Start,
    env: dict[str, str],
    queue: Queue,
    sotion_api: SotionClient,
    provider: str,
    purchase: str,
    cancellation: str,
) -> None:
    url = start()
    bought = _trigger_with_worker(queue, env, provider, purchase, "--email", EMAIL, "--url", url)
    assert bought.exit_code == 0, bought.output
    assert "bridge: 200 queued 1" in bought.output
    assert "worker: applied" in bought.output
    assert _member_paid(sotion_api, EMAIL) is True

    ended = _trigger_with_worker(queue, env, provider, cancellation, "--email", EMAIL, "--url", url)
    assert ended.exit_code == 0, ended.output
    assert "worker: applied" in ended.output
    assert _member_paid(sotion_api, EMAIL) is False


def test_without_waiting_the_event_is_queued_for_the_worker(
    start: Start, env: dict[str, str], queue: Queue, sotion_api: SotionClient
) -> None:
    url = start()
    args = ("--email", EMAIL, "--url", url, "--no-wait")
    result = _trigger(env, "stripe", "checkout.session.completed", *args)
    assert result.exit_code == 0, result.output
    assert "(test mode) for buyer@example.com" in result.output
    assert "worker:" not in result.output
    assert queue.count == 1
    drain(queue)
    assert _member_paid(sotion_api, EMAIL) is True


def test_by_default_it_waits_when_the_bridge_redis_answers(
    start: Start, env: dict[str, str], queue: Queue
) -> None:
    url = start()
    result = _trigger(
        env, "stripe", "invoice.paid", "--email", EMAIL, "--url", url, "--timeout", "0.3"
    )
    assert result.exit_code == 1, result.output
    assert "worker: queued" in result.output  # no worker ran: still queued, and said so


def test_a_subscription_event_for_an_unknown_buyer_is_reported_parked(
    start: Start, env: dict[str, str], queue: Queue
) -> None:
    url = start()
    result = _trigger_with_worker(
        queue, env, "stripe", "customer.subscription.deleted", "--email", EMAIL, "--url", url
    )
    assert result.exit_code == 1, result.output
    assert "worker: parked" in result.output
    assert "cannot tell which email" in result.output


def test_the_same_email_and_product_act_on_one_purchase_and_another_product_on_another(
    start: Start, env: dict[str, str], queue: Queue, sotion_api: SotionClient
) -> None:
    url = start()
    for event, product in (
        ("checkout.session.completed", "price_a"),
        ("checkout.session.completed", "price_b"),
        ("customer.subscription.deleted", "price_a"),
    ):
        result = _trigger_with_worker(
            queue, env, "stripe", event, "--email", EMAIL, "--url", url, "--product", product
        )
        assert result.exit_code == 0, result.output
    assert _member_paid(sotion_api, EMAIL) is True  # price_b's purchase is still active


def test_a_job_that_fails_is_reported_with_its_reason(
    start: Start, env: dict[str, str], queue: Queue
) -> None:
    url = start(sotion_api_key="so_revoked")  # the worker's key: Sotion refuses it
    args = ("--email", EMAIL, "--url", url)
    result = _trigger_with_worker(queue, env, "stripe", "checkout.session.completed", *args)
    assert result.exit_code == 1, result.output
    assert (
        "worker: failed bridge.sotion.errors.AuthError: Invalid API key status=401" in result.output
    )
    assert "hint: `bridge jobs failed` shows it" in result.output


def test_a_job_whose_result_expired_counts_as_applied(queue: Queue) -> None:
    assert trigger_wait.outcome(queue, "stripe-gone") == trigger_wait.Outcome(
        "stripe-gone", "applied", "finished (its result has expired)"
    )


# -- ignored and refused -------------------------------------------------------------------


def test_a_test_event_the_bridge_does_not_accept_is_reported_with_the_way_out(
    start: Start, env: dict[str, str], queue: Queue
) -> None:
    url = start(accept_test_events=False)
    result = _trigger(env, "lemonsqueezy", "order_created", "--email", EMAIL, "--url", url)
    assert result.exit_code == 1
    assert "bridge: 200 the bridge ignored it: it is a test-mode event" in result.output
    assert "BRIDGE_ACCEPT_TEST_EVENTS" in result.output and "--live" in result.output
    assert queue.count == 0

    live = _trigger(
        env, "lemonsqueezy", "order_created", "--email", EMAIL, "--url", url, "--live", "--no-wait"
    )
    assert live.exit_code == 0, live.output
    assert "(live mode)" in live.output
    assert queue.count == 1


def test_an_unlisted_product_is_named_and_the_worker_ignores_it(
    start: Start, env: dict[str, str], queue: Queue, sotion_api: SotionClient, tmp_path: Path
) -> None:
    products = tmp_path / "products.toml"
    products.write_text('[[products]]\nname = "Pro"\nstripe_prices = ["price_pro"]\n')
    url = start(products_file=products)
    env = {**env, "BRIDGE_PRODUCTS": str(products)}
    args = ("--email", EMAIL, "--url", url, "--product", "price_other")
    result = _trigger_with_worker(queue, env, "stripe", "customer.subscription.created", *args)
    assert result.exit_code == 1, result.output
    assert (
        "warning: product price_other, prod_bridge_sample is not in BRIDGE_PRODUCTS: "
        "the worker will ignore it" in result.output
    )
    assert "worker: ignored product price_other" in result.output
    assert sotion_api.find_member_by_email(EMAIL) is None


def test_without_a_product_the_first_one_the_products_file_lists_is_sent(
    start: Start, env: dict[str, str], queue: Queue, sotion_api: SotionClient, tmp_path: Path
) -> None:
    products = tmp_path / "products.toml"
    products.write_text('[[products]]\nname = "Pro"\ngumroad_permalinks = ["pro"]\n')
    url = start(products_file=products)
    env = {**env, "BRIDGE_PRODUCTS": str(products)}
    result = _trigger_with_worker(queue, env, "gumroad", "sale", "--email", EMAIL, "--url", url)
    assert result.exit_code == 0, result.output
    assert "product pro," in result.output and "warning" not in result.output
    assert _member_paid(sotion_api, EMAIL) is True


def test_a_signature_the_bridge_refuses_is_reported(start: Start, env: dict[str, str]) -> None:
    url = start(stripe_webhook_secrets=("whsec_another0123456789abcdefghij",))
    result = _trigger(env, "stripe", "invoice.paid", "--email", EMAIL, "--url", url)
    assert result.exit_code == 1
    assert "bridge: 400 refused (400 " in result.output
    assert "signature does not match" in result.output


def test_a_provider_the_bridge_disabled_is_reported(start: Start, env: dict[str, str]) -> None:
    url = start(lemonsqueezy_webhook_secrets=())
    result = _trigger(env, "lemonsqueezy", "order_created", "--email", EMAIL, "--url", url)
    assert result.exit_code == 1
    assert "bridge: 404 refused" in result.output
    assert "not configured on this bridge" in result.output


# -- where the bridge is and how to sign --------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "event", "setting", "value", "variable"),
    [
        (
            "stripe",
            "checkout.session.completed",
            "stripe_webhook_secrets",
            (SANDBOX_STRIPE_SECRET,),
            "STRIPE_WEBHOOK_SECRET",
        ),
        (
            "lemonsqueezy",
            "order_created",
            "lemonsqueezy_webhook_secrets",
            (SANDBOX_LEMONSQUEEZY_SECRET,),
            "LEMONSQUEEZY_WEBHOOK_SECRET",
        ),
        (
            "gumroad",
            "sale",
            "gumroad_webhook_token",
            SANDBOX_GUMROAD_TOKEN,
            "GUMROAD_WEBHOOK_TOKEN",
        ),
    ],
)
def test_the_running_bridge_and_its_sandbox_secret_are_found_from_the_run_record(
    start: Start,
    env: dict[str, str],
    settings: Settings,
    queue: Queue,
    provider: str,
    event: str,
    setting: str,
    value: object,
    variable: str,
) -> None:
    # What `bridge run --sandbox` sets for every provider whose secret is unset.
    assert runner.sandbox_environment({}, "http://s", "so_k")[variable] in str(value)
    url = start(**{setting: value})
    record = discovery.new_record(
        url, redis_dir=Path(settings.data_dir), sandbox_url="http://127.0.0.1:8090/api/v1"
    )
    discovery.write_record(Path(settings.data_dir), dataclasses.replace(record, pid=os.getpid()))
    env = {k: v for k, v in env.items() if k != variable}
    result = _trigger(env, provider, event, "--email", EMAIL, "--no-wait")
    assert result.exit_code == 0, result.output
    assert f"to {url}/webhooks/{provider}" in result.output
    assert queue.count == 1


def test_the_default_url_is_port_8000_or_port_without_a_running_bridge(settings: Settings) -> None:
    assert core.default_url(settings) == "http://127.0.0.1:8000"
    assert core.default_url(settings, "8123") == "http://127.0.0.1:8123"


def test_a_record_bound_to_every_interface_is_reached_on_localhost(settings: Settings) -> None:
    record = discovery.new_record("http://0.0.0.0:8200", redis_dir=Path(settings.data_dir))
    discovery.write_record(Path(settings.data_dir), dataclasses.replace(record, pid=os.getpid()))
    assert core.default_url(settings) == "http://127.0.0.1:8200"


def test_a_missing_secret_is_one_line_naming_the_variable_and_exit_2(
    env: dict[str, str],
) -> None:
    env = {k: v for k, v in env.items() if k != "LEMONSQUEEZY_WEBHOOK_SECRET"}
    result = _trigger(env, "lemonsqueezy", "order_created", "--email", EMAIL, "--no-wait")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: LEMONSQUEEZY_WEBHOOK_SECRET is not set")


def test_the_gumroad_token_is_never_printed(start: Start, env: dict[str, str]) -> None:
    url = start()
    result = _trigger(env, "gumroad", "sale", "--email", EMAIL, "--url", url, "--no-wait")
    assert result.exit_code == 0, result.output
    assert GUMROAD_TOKEN not in result.output
    assert "/webhooks/gumroad/***" in result.output


def test_wait_with_no_redis_is_a_configuration_error(env: dict[str, str]) -> None:
    env = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = _trigger(env, "stripe", "invoice.paid", "--email", EMAIL, "--wait")
    assert result.exit_code == 2
    assert result.output.startswith("Error: --wait: Redis is unreachable")


# -- usage -------------------------------------------------------------------------------


def test_list_shows_every_provider_and_event_with_its_effect() -> None:
    result = CliRunner().invoke(main, ["trigger", "--list"], env={})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == sum(len(events) for events in SAMPLES.values())
    for provider, events in SAMPLES.items():
        for event, chosen in events.items():
            assert any(
                line.split()[:2] == [provider, event] and line.endswith(chosen.effect)
                for line in lines
            ), event


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["paypal", "sale"], "unknown provider 'paypal': one of stripe, lemonsqueezy, gumroad"),
        (["stripe", "nope"], "unknown stripe event 'nope': one of checkout.session.completed, "),
        (["gumroad"], "EVENT is required: one of sale, subscription_restarted, "),
        ([], "PROVIDER is required"),
        (["stripe", "invoice.paid"], "--email is required"),
        (["lemonsqueezy", "order_created", "--email", EMAIL, "--purchase", "x"], "is a number"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = _trigger(env, *args)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert message in line


# -- as the operator runs it ---------------------------------------------------------------


def test_the_command_run_as_a_process_reports_an_unreachable_bridge_in_one_line(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = commands.environment(STRIPE_WEBHOOK_SECRET=STRIPE_SECRET, REDIS_URL=redis_url)
    result = commands.bridge(
        "trigger", "stripe", "invoice.paid", "--email", EMAIL, "--url", url, env=env, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: the bridge is unreachable at {url} (ConnectionError): start it with "
        "`bridge run`, or give its address with --url"
    ]


def test_the_command_run_as_a_process_names_a_missing_secret(tmp_path: Path) -> None:
    result = commands.bridge(
        "trigger", "gumroad", "sale", "--email", EMAIL, env=commands.environment(), cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = commands.lines(result)
    assert line.startswith("Error: GUMROAD_WEBHOOK_TOKEN is not set")
