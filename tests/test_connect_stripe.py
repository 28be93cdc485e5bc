"""`bridge connect stripe` against the Stripe stand-in on a real socket, through the SDK."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import connect
from bridge.embedded import free_port
from bridge.providers import stripe as stripe_provider
from bridge.settings import Settings
from tests import commands
from tests.reconcile.providers import STRIPE_KEY, Bridge, Outcome
from tests.standins.server import StandInServer
from tests.standins.stripe import StripeStandIn
from tests.stripe_events import sign

BASE = "https://bridge.example.com"
URL = f"{BASE}/webhooks/stripe"
EVENTS = list(connect.EVENTS["stripe"])
_SECRET_LINE = re.compile(r"^  STRIPE_WEBHOOK_SECRET=(whsec_\w+)$", re.MULTILINE)


@pytest.fixture
def stripe() -> StripeStandIn:
    return StripeStandIn(STRIPE_KEY)


@pytest.fixture
def server(stripe: StripeStandIn) -> Iterator[StandInServer]:
    with StandInServer(stripe.app) as served:
        yield served


@pytest.fixture
def bridge(server: StandInServer) -> Bridge:
    return Bridge({"STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": server.url})


def writes(stripe: StripeStandIn) -> list[str]:
    """The write calls the stand-in answered, as "METHOD path"."""
    return [f"{c.method} {c.path}" for c in stripe.calls if c.method != "GET"]


def no_key(outcome: Outcome) -> None:
    assert STRIPE_KEY not in outcome.output and STRIPE_KEY[8:20] not in outcome.output


def test_a_new_endpoint_gets_exactly_the_events_and_its_secret_is_printed_once(
    stripe: StripeStandIn, bridge: Bridge
) -> None:
    first = bridge.run("connect", "stripe", "--url", BASE)
    assert first.code == 0, first.output
    [endpoint] = stripe.webhook_endpoints()
    assert endpoint["url"] == URL and endpoint["status"] == "enabled"
    assert sorted(endpoint["enabled_events"]) == EVENTS
    assert f"created endpoint {endpoint['id']} with 14 events" in first.output
    assert _SECRET_LINE.findall(first.output) == [endpoint["_secret"]]
    no_key(first)

    second = bridge.run(
        "connect", "stripe", "--url", BASE, STRIPE_WEBHOOK_SECRET=endpoint["_secret"]
    )
    assert second.code == 0
    assert second.output.splitlines() == [
        f"stripe: {URL}",
        f"  endpoint {endpoint['id']}: enabled, exactly the 14 events",
        "nothing to change",
    ]
    assert stripe.webhook_endpoints() == [endpoint]
    assert writes(stripe) == ["POST /v1/webhook_endpoints"]


def test_the_printed_secret_is_one_the_bridge_accepts_and_verifies_with(
    stripe: StripeStandIn, bridge: Bridge
) -> None:
    outcome = bridge.run("connect", "stripe", "--url", BASE)
    [secret] = _SECRET_LINE.findall(outcome.output)
    settings = Settings.from_env({"STRIPE_WEBHOOK_SECRET": secret})
    body = b'{"id": "evt_1", "object": "event"}'
    stripe_provider.verify(
        body, sign(body, secret), settings.stripe_webhook_secrets, now=time.time()
    )


def test_a_drifted_disabled_endpoint_is_updated_and_others_are_left_alone(
    stripe: StripeStandIn, bridge: Bridge
) -> None:
    ours = stripe.add_webhook_endpoint(URL, ["*"], status="disabled")
    other = stripe.add_webhook_endpoint("https://crm.example.com/stripe", ["invoice.paid"])
    before = stripe.webhook_endpoints()
    outcome = bridge.run("connect", "stripe", "--url", BASE)
    assert outcome.code == 0, outcome.output
    assert f"  updated endpoint {ours}: events +charge.dispute.closed" in outcome.output
    assert outcome.output.count("-*; enable") == 1
    assert "STRIPE_WEBHOOK_SECRET=" not in outcome.output
    assert "note: STRIPE_WEBHOOK_SECRET is not set here" in outcome.output
    endpoints = {e["id"]: e for e in stripe.webhook_endpoints()}
    assert sorted(endpoints[ours]["enabled_events"]) == EVENTS
    assert endpoints[ours]["status"] == "enabled"
    assert endpoints[ours]["_secret"] == before[0]["_secret"]  # an update keeps the secret
    assert endpoints[other] == before[1]
    assert bridge.run("connect", "stripe", "--url", BASE).output.endswith("nothing to change\n")


def test_missing_events_alone_are_added(stripe: StripeStandIn, bridge: Bridge) -> None:
    ours = stripe.add_webhook_endpoint(URL, EVENTS[:-1])
    outcome = bridge.run("connect", "stripe", "--url", BASE)
    assert f"  updated endpoint {ours}: events +{EVENTS[-1]}\n" in outcome.output
    assert sorted(stripe.webhook_endpoints()[0]["enabled_events"]) == EVENTS


def test_the_endpoint_is_found_past_the_first_page(stripe: StripeStandIn, bridge: Bridge) -> None:
    ours = stripe.add_webhook_endpoint(URL, EVENTS)
    for n in range(100):  # newer: listed first, so ours is on the second page
        stripe.add_webhook_endpoint(f"https://n{n}.example.com/hook", ["invoice.paid"])
    outcome = bridge.run("connect", "stripe", "--url", BASE)
    assert f"endpoint {ours}: enabled, exactly the 14 events" in outcome.output
    listed = [c for c in stripe.calls_to("/v1/webhook_endpoints") if c.method == "GET"]
    assert [c.query.get("starting_after") is not None for c in listed] == [False, True]
    assert writes(stripe) == []


def test_dry_run_reads_only_and_prints_the_plan(stripe: StripeStandIn, bridge: Bridge) -> None:
    outcome = bridge.run("connect", "stripe", "--url", BASE, "--dry-run")
    assert outcome.code == 0
    assert outcome.output.splitlines() == [
        f"stripe: {URL}",
        "  would create endpoint with 14 events",
        "dry run: nothing written",
    ]
    assert stripe.webhook_endpoints() == [] and writes(stripe) == []


def test_dry_run_of_a_drifted_endpoint_changes_nothing(
    stripe: StripeStandIn, bridge: Bridge
) -> None:
    ours = stripe.add_webhook_endpoint(URL, ["invoice.paid"], status="disabled")
    before = stripe.webhook_endpoints()
    outcome = bridge.run("connect", "stripe", "--url", BASE, "--dry-run")
    assert outcome.code == 0 and f"would update endpoint {ours}:" in outcome.output
    assert stripe.webhook_endpoints() == before and writes(stripe) == []


def test_a_refused_key_is_one_line_without_the_key(
    stripe: StripeStandIn, server: StandInServer
) -> None:
    wrong = "sk_test_wrongKey4eC39HqLyjWDarjtT1zdp"
    outcome = Bridge({"STRIPE_API_KEY": wrong, "STRIPE_API_BASE": server.url}).run(
        "connect", "stripe", "--url", BASE
    )
    assert outcome.code == 1
    [line] = outcome.output.strip().splitlines()
    assert line.startswith("Error: Stripe: the provider refused the key (check STRIPE_API_KEY)")
    assert wrong[8:] not in outcome.output
    assert stripe.webhook_endpoints() == []


def test_an_unreachable_api_is_one_line() -> None:
    bridge = Bridge(
        {"STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": f"http://127.0.0.1:{free_port()}"}
    )
    outcome = bridge.run("connect", "stripe", "--url", BASE)
    assert (outcome.code, outcome.output.strip()) == (
        1,
        "Error: Stripe: the API is unreachable (check the network, or STRIPE_API_BASE)",
    )


def test_the_command_runs_as_a_process(
    stripe: StripeStandIn, server: StandInServer, tmp_path: Path
) -> None:
    env = commands.environment(STRIPE_API_KEY=STRIPE_KEY, STRIPE_API_BASE=server.url)
    first = commands.bridge("connect", "stripe", "--url", BASE, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [endpoint] = stripe.webhook_endpoints()
    assert _SECRET_LINE.findall(first.stdout) == [endpoint["_secret"]]
    assert STRIPE_KEY not in first.stdout + first.stderr
    again = commands.bridge("connect", "stripe", "--url", BASE, env=env, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.endswith("nothing to change\n")
    assert len(stripe.webhook_endpoints()) == 1
