"""`bridge connect gumroad` against the Gumroad stand-in on a real socket."""

from __future__ import annotations

import pytest
from flask import request

from bridge.embedded import free_port
from tests.reconcile.providers import Bridge, Outage, Outcome
from tests.standins.gumroad import RESOURCE_NAMES, SELLER_ID, TOKEN, GumroadStandIn
from tests.standins.server import StandInServer

BASE = "https://bridge.example.com"
WEBHOOK_TOKEN = "gw_Zq4pXv8sLm2rTn6yWb1cKd5fHj9gNe3u"
URL = f"{BASE}/webhooks/gumroad/{WEBHOOK_TOKEN}"
SHOWN = f"{BASE}/webhooks/gumroad/***"
ALL = sorted(RESOURCE_NAMES)


@pytest.fixture
def bridge(gumroad_server: StandInServer) -> Bridge:
    return Bridge(
        {
            "GUMROAD_ACCESS_TOKEN": TOKEN,
            "GUMROAD_API_BASE": gumroad_server.url,
            "GUMROAD_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        }
    )


def puts(gumroad: GumroadStandIn) -> int:
    return sum(1 for c in gumroad.calls_to("/v2/resource_subscriptions") if c.method == "PUT")


def no_secret(outcome: Outcome) -> None:
    assert WEBHOOK_TOKEN not in outcome.output and TOKEN not in outcome.output


def test_all_eight_resources_are_subscribed_then_nothing_changes(
    gumroad: GumroadStandIn, bridge: Bridge
) -> None:
    first = bridge.run("connect", "gumroad", "--url", BASE)
    assert first.code == 0, first.output
    assert sorted(gumroad.subscribed()) == [(resource, URL) for resource in ALL]
    lines = first.output.splitlines()
    assert lines[0] == f"gumroad: {SHOWN}" and lines[-1] == "done"
    assert [line.split(":")[0].strip() for line in lines[1:-1]] == ALL
    assert all(": subscribed (" in line for line in lines[1:-1])
    no_secret(first)

    second = bridge.run("connect", "gumroad", "--url", BASE)
    assert second.code == 0
    assert second.output.splitlines()[-1] == "nothing to change"
    assert second.output.count("already subscribed") == 8
    assert len(gumroad.subscribed()) == 8 and puts(gumroad) == 8
    no_secret(second)


def test_only_the_missing_resources_are_added(gumroad: GumroadStandIn, bridge: Bridge) -> None:
    for resource in ("sale", "refund", "dispute"):
        gumroad.subscribe_resource(resource, URL)
    gumroad.subscribe_resource("sale", "https://zapier.example.com/hooks/1")
    gumroad.subscribe_resource("cancellation", URL, seller_id="another-seller")
    outcome = bridge.run("connect", "gumroad", "--url", BASE)
    assert outcome.code == 0
    assert puts(gumroad) == 5
    ours = sorted(r for r, url in gumroad.subscribed() if url == URL)
    assert ours == ALL
    assert ("sale", "https://zapier.example.com/hooks/1") in gumroad.subscribed()
    assert outcome.output.count("already subscribed") == 3


def test_a_subscription_with_an_old_token_is_noted_masked(
    gumroad: GumroadStandIn, bridge: Bridge
) -> None:
    old = "gw_an0ldT0kenThatWasRotatedAway12345"
    gumroad.subscribe_resource("refund", f"{BASE}/webhooks/gumroad/{old}")
    outcome = bridge.run("connect", "gumroad", "--url", BASE)
    assert outcome.code == 0
    assert "note: refund: also subscribed with another token" in outcome.output
    assert old not in outcome.output
    no_secret(outcome)


def test_dry_run_reads_only(gumroad: GumroadStandIn, bridge: Bridge) -> None:
    gumroad.subscribe_resource("sale", URL)
    outcome = bridge.run("connect", "gumroad", "--url", BASE, "--dry-run")
    assert outcome.code == 0
    assert outcome.output.count("would subscribe") == 7
    assert outcome.output.splitlines()[-1] == "dry run: nothing written"
    assert gumroad.subscribed() == [("sale", URL)] and puts(gumroad) == 0
    no_secret(outcome)


def test_a_refused_token_is_one_line(
    gumroad: GumroadStandIn, gumroad_server: StandInServer
) -> None:
    wrong = "gr_wrong_token_0000"
    outcome = Bridge(
        {
            "GUMROAD_ACCESS_TOKEN": wrong,
            "GUMROAD_API_BASE": gumroad_server.url,
            "GUMROAD_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        }
    ).run("connect", "gumroad", "--url", BASE)
    assert (outcome.code, outcome.output.strip()) == (
        1,
        "Error: Gumroad: the provider refused the key (check GUMROAD_ACCESS_TOKEN)",
    )
    assert wrong not in outcome.output and gumroad.subscribed() == []


def test_a_token_without_view_sales_is_refused(
    gumroad: GumroadStandIn, gumroad_server: StandInServer
) -> None:
    narrow = "gr_narrow_token_1111"
    gumroad.add_token(narrow, SELLER_ID, scopes=("edit_products",))
    outcome = Bridge(
        {
            "GUMROAD_ACCESS_TOKEN": narrow,
            "GUMROAD_API_BASE": gumroad_server.url,
            "GUMROAD_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        }
    ).run("connect", "gumroad", "--url", BASE)
    assert outcome.code == 1
    assert "lacks the view_sales scope" in outcome.output and narrow not in outcome.output


def test_a_refused_post_url_is_one_line_without_the_token(
    gumroad: GumroadStandIn, bridge: Bridge
) -> None:
    outcome = bridge.run("connect", "gumroad", "--url", "https://10.0.0.8")
    assert outcome.code == 1
    assert outcome.output.strip() == (
        "Error: Gumroad: adding cancellation: Invalid post URL "
        "'https://10.0.0.8/webhooks/gumroad/***'"
    )
    assert gumroad.subscribed() == []


def test_an_unreachable_api_is_one_line() -> None:
    outcome = Bridge(
        {
            "GUMROAD_ACCESS_TOKEN": TOKEN,
            "GUMROAD_API_BASE": f"http://127.0.0.1:{free_port()}",
            "GUMROAD_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        }
    ).run("connect", "gumroad", "--url", BASE)
    assert (outcome.code, outcome.output.strip()) == (
        1,
        "Error: Gumroad: the API is unreachable (ConnectionError; check the network, "
        "or GUMROAD_API_BASE)",
    )


def test_a_failure_midway_says_how_far_it_got_and_a_rerun_finishes(
    gumroad: GumroadStandIn, bridge: Bridge
) -> None:
    sent = {"puts": 0}

    def third_put(path: str, query: dict[str, str]) -> bool:
        if request.method == "PUT":
            sent["puts"] += 1
            return sent["puts"] == 3
        return False

    with Outage(gumroad.app, third_put).during():
        failed = bridge.run("connect", "gumroad", "--url", BASE)
    assert failed.code == 1
    assert failed.output.strip() == (
        "Error: Gumroad: adding dispute_won: status=500 (2 added before it: run again to finish)"
    )
    assert len(gumroad.subscribed()) == 2
    again = bridge.run("connect", "gumroad", "--url", BASE)
    assert again.code == 0 and again.output.count("already subscribed") == 2
    assert sorted(gumroad.subscribed()) == [(resource, URL) for resource in ALL]
