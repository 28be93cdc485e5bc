"""`bridge connect lemonsqueezy` against the Lemon Squeezy stand-in on a real socket."""

from __future__ import annotations

import re

import pytest

from bridge import connect
from bridge.embedded import free_port
from bridge.providers import lemonsqueezy as ls_provider
from bridge.settings import Settings
from tests.lemonsqueezy_events import sign
from tests.reconcile.providers import LEMONSQUEEZY_KEY, LEMONSQUEEZY_SECRET, Bridge
from tests.standins.lemonsqueezy import LemonSqueezyStandIn
from tests.standins.server import StandInServer

BASE = "https://bridge.example.com"
URL = f"{BASE}/webhooks/lemonsqueezy"
EVENTS = list(connect.EVENTS["lemonsqueezy"])
_SECRET_LINE = re.compile(r"^  LEMONSQUEEZY_WEBHOOK_SECRET=(\S+)$", re.MULTILINE)


@pytest.fixture
def store(lemonsqueezy: LemonSqueezyStandIn) -> int:
    return lemonsqueezy.add_store("Dan's Shop")


@pytest.fixture
def bridge(ls_server: StandInServer) -> Bridge:
    return Bridge(
        {"LEMONSQUEEZY_API_KEY": LEMONSQUEEZY_KEY, "LEMONSQUEEZY_API_BASE": ls_server.url}
    )


def writes(lemonsqueezy: LemonSqueezyStandIn) -> list[str]:
    return [f"{c.method} {c.path}" for c in lemonsqueezy.calls if c.method != "GET"]


def test_a_new_webhook_gets_a_generated_secret_printed_once_then_nothing_changes(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    first = bridge.run("connect", "lemonsqueezy", "--url", BASE)
    assert first.code == 0, first.output
    [(webhook_id, webhook)] = lemonsqueezy.webhooks().items()
    assert (webhook["store_id"], webhook["url"], sorted(webhook["events"])) == (store, URL, EVENTS)
    [secret] = _SECRET_LINE.findall(first.output)
    assert lemonsqueezy.webhook_secrets[webhook_id] == secret
    assert first.output.startswith(f"lemonsqueezy (store {store}): {URL}\n")
    assert f"  created webhook {webhook_id} with 13 events" in first.output
    assert LEMONSQUEEZY_KEY not in first.output

    second = bridge.run(
        "connect", "lemonsqueezy", "--url", BASE, LEMONSQUEEZY_WEBHOOK_SECRET=secret
    )
    assert second.code == 0
    assert second.output.splitlines() == [
        f"lemonsqueezy (store {store}): {URL}",
        f"  webhook {webhook_id}: enabled, exactly the 13 events",
        "nothing to change",
    ]
    assert writes(lemonsqueezy) == ["POST /v1/webhooks"]
    assert lemonsqueezy.webhook_secrets == {webhook_id: secret}


def test_the_generated_secret_is_one_the_bridge_accepts_and_verifies_with(
    store: int, bridge: Bridge
) -> None:
    [secret] = _SECRET_LINE.findall(bridge.run("connect", "lemonsqueezy", "--url", BASE).output)
    settings = Settings.from_env({"LEMONSQUEEZY_WEBHOOK_SECRET": secret})
    body = b'{"meta": {"event_name": "order_created"}}'
    ls_provider.verify(body, sign(body, secret), settings.lemonsqueezy_webhook_secrets)


def test_a_configured_secret_is_used_and_never_printed(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    outcome = bridge.run(
        "connect", "lemonsqueezy", "--url", BASE, LEMONSQUEEZY_WEBHOOK_SECRET=LEMONSQUEEZY_SECRET
    )
    assert outcome.code == 0
    assert list(lemonsqueezy.webhook_secrets.values()) == [LEMONSQUEEZY_SECRET]
    assert LEMONSQUEEZY_SECRET not in outcome.output and "SECRET=" not in outcome.output


def test_a_drifted_webhook_is_updated_with_the_configured_secret(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    ours = lemonsqueezy.add_webhook(store, URL, ["order_created", "license_key_created"], "old-1")
    other = lemonsqueezy.add_webhook(
        store, "https://crm.example.com/ls", ["order_created"], "x" * 8
    )
    before = lemonsqueezy.webhooks()
    outcome = bridge.run(
        "connect", "lemonsqueezy", "--url", BASE, LEMONSQUEEZY_WEBHOOK_SECRET=LEMONSQUEEZY_SECRET
    )
    assert outcome.code == 0, outcome.output
    assert f"  updated webhook {ours}: events +order_refunded" in outcome.output
    assert "-license_key_created" in outcome.output
    webhooks = lemonsqueezy.webhooks()
    assert sorted(webhooks[ours]["events"]) == EVENTS
    assert lemonsqueezy.webhook_secrets[ours] == LEMONSQUEEZY_SECRET
    assert webhooks[other] == before[other] and lemonsqueezy.webhook_secrets[other] == "x" * 8
    assert writes(lemonsqueezy) == [f"PATCH /v1/webhooks/{ours}"]


def test_without_a_configured_secret_an_update_keeps_the_webhooks_secret(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    ours = lemonsqueezy.add_webhook(store, URL, ["order_created"], "kept-secret-1")
    outcome = bridge.run("connect", "lemonsqueezy", "--url", BASE)
    assert outcome.code == 0
    assert sorted(lemonsqueezy.webhooks()[ours]["events"]) == EVENTS
    assert lemonsqueezy.webhook_secrets[ours] == "kept-secret-1"
    assert "note: the webhook's secret was left as it is" in outcome.output
    assert "SECRET=" not in outcome.output


def test_new_secret_replaces_the_secret_and_prints_it_once(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    ours = lemonsqueezy.add_webhook(store, URL, EVENTS, "lost-secret-1")
    outcome = bridge.run(
        "connect", "lemonsqueezy", "--url", BASE, "--new-secret",
        LEMONSQUEEZY_WEBHOOK_SECRET=LEMONSQUEEZY_SECRET,
    )  # fmt: skip
    assert outcome.code == 0
    assert f"  updated webhook {ours}: secret" in outcome.output
    [secret] = _SECRET_LINE.findall(outcome.output)
    assert lemonsqueezy.webhook_secrets[ours] == secret != LEMONSQUEEZY_SECRET


def test_a_webhook_of_another_store_is_not_ours(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    elsewhere = lemonsqueezy.add_store("Another")
    theirs = lemonsqueezy.add_webhook(elsewhere, URL, EVENTS, "theirs-secret")
    outcome = bridge.run("connect", "lemonsqueezy", "--url", BASE, "--store", str(store))
    assert outcome.code == 0, outcome.output
    hooks = lemonsqueezy.webhooks()
    assert len(hooks) == 2 and hooks[theirs]["store_id"] == elsewhere
    assert [h["store_id"] for i, h in hooks.items() if i != theirs] == [store]


def test_several_stores_ask_for_store(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    second = lemonsqueezy.add_store("Second Shop")
    outcome = bridge.run("connect", "lemonsqueezy", "--url", BASE)
    assert outcome.code == 2
    assert outcome.output.strip() == (
        f"Error: Lemon Squeezy: this key has 2 stores ({store} (Dan's Shop), "
        f"{second} (Second Shop)): pass --store ID"
    )
    assert lemonsqueezy.webhooks() == {}
    unknown = bridge.run("connect", "lemonsqueezy", "--url", BASE, "--store", "999")
    assert unknown.code == 2 and "store 999 is not one of this key's stores" in unknown.output
    chosen = bridge.run("connect", "lemonsqueezy", "--url", BASE, "--store", str(second))
    assert chosen.code == 0
    assert [h["store_id"] for h in lemonsqueezy.webhooks().values()] == [second]


def test_a_key_without_a_store_is_one_line(bridge: Bridge) -> None:
    outcome = bridge.run("connect", "lemonsqueezy", "--url", BASE)
    assert (outcome.code, outcome.output.strip()) == (
        2,
        "Error: Lemon Squeezy: this API key sees no store",
    )


def test_dry_run_reads_only(lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge) -> None:
    outcome = bridge.run("connect", "lemonsqueezy", "--url", BASE, "--dry-run")
    assert outcome.code == 0
    assert outcome.output.splitlines() == [
        f"lemonsqueezy (store {store}): {URL}",
        "  would create webhook with 13 events",
        "dry run: nothing written",
    ]
    assert lemonsqueezy.webhooks() == {} and writes(lemonsqueezy) == []


def test_a_refused_key_is_one_line(
    lemonsqueezy: LemonSqueezyStandIn, ls_server: StandInServer
) -> None:
    wrong = "lsk_live_wrongKey2vX9pL4sN8rT1"
    outcome = Bridge({"LEMONSQUEEZY_API_KEY": wrong, "LEMONSQUEEZY_API_BASE": ls_server.url}).run(
        "connect", "lemonsqueezy", "--url", BASE
    )
    assert (outcome.code, outcome.output.strip()) == (
        1,
        "Error: Lemon Squeezy: the provider refused the key (check LEMONSQUEEZY_API_KEY)",
    )


def test_an_unreachable_api_is_one_line() -> None:
    base = f"http://127.0.0.1:{free_port()}"
    outcome = Bridge({"LEMONSQUEEZY_API_KEY": LEMONSQUEEZY_KEY, "LEMONSQUEEZY_API_BASE": base}).run(
        "connect", "lemonsqueezy", "--url", BASE
    )
    assert outcome.code == 1
    assert outcome.output.strip() == (
        "Error: Lemon Squeezy: the API is unreachable (ConnectionError; check the network, "
        "or LEMONSQUEEZY_API_BASE)"
    )


def test_the_webhook_is_found_past_the_first_page(
    lemonsqueezy: LemonSqueezyStandIn, store: int, bridge: Bridge
) -> None:
    ours = lemonsqueezy.add_webhook(store, URL, EVENTS, "ours-secret-1")
    for n in range(100):  # newer: listed first, so ours is on the second page
        lemonsqueezy.add_webhook(store, f"https://n{n}.example.com/ls", ["order_created"], "s" * 8)
    outcome = bridge.run(
        "connect", "lemonsqueezy", "--url", BASE, LEMONSQUEEZY_WEBHOOK_SECRET=LEMONSQUEEZY_SECRET
    )
    assert f"  webhook {ours}: enabled, exactly the 13 events" in outcome.output
    pages = [c.query["page[number]"] for c in lemonsqueezy.calls if c.path == "/v1/webhooks"]
    assert pages == ["1", "2"] and writes(lemonsqueezy) == []
