"""`bridge connect`: the events, URLs and plans (pure), and the errors every provider's
command gives before it calls any API."""

from __future__ import annotations

import pytest

from bridge import connect
from bridge.connect import ConnectConfigError, Endpoint, Plan
from bridge.sources.stripe import EVENT_TYPES
from tests.reconcile.providers import Bridge
from tests.standins.gumroad import RESOURCE_NAMES
from tests.standins.lemonsqueezy import WEBHOOK_EVENTS

URL = "https://bridge.example.com/webhooks/stripe"
GUMROAD_WEBHOOK_TOKEN = "gw_" + "k3" * 20
# Each command's key variable, with a value shaped like a real one.
KEYS = {
    "stripe": {"STRIPE_API_KEY": "sk_test_connect4eC39HqLyjWDarjtT1zdp7"},
    "lemonsqueezy": {"LEMONSQUEEZY_API_KEY": "lsk_live_connect9pL4sN8rT1wZ6y"},
    "gumroad": {
        "GUMROAD_ACCESS_TOKEN": "gr_connect_token_51c9",
        "GUMROAD_WEBHOOK_TOKEN": GUMROAD_WEBHOOK_TOKEN,
    },
}


def test_stripe_events_are_the_ones_its_parser_and_reconcile_read() -> None:
    assert connect.EVENTS["stripe"] == tuple(sorted(EVENT_TYPES))
    assert len(connect.EVENTS["stripe"]) == 14


def test_lemonsqueezy_events_are_13_webhook_events_lemonsqueezy_offers() -> None:
    events = connect.EVENTS["lemonsqueezy"]
    assert len(events) == 13 and set(events) <= WEBHOOK_EVENTS
    assert "license_key_created" not in events


def test_gumroad_resources_are_all_eight_gumroad_has() -> None:
    assert connect.EVENTS["gumroad"] == tuple(sorted(RESOURCE_NAMES))


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("https://bridge.example.com", "https://bridge.example.com"),
        ("https://Bridge.Example.com:443/", "https://bridge.example.com"),
        ("https://example.com/pay/bridge/", "https://example.com/pay/bridge"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ],
)
def test_base_url_is_https_or_local_http(given: str, base: str) -> None:
    assert connect.base_url(given) == base


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("http://bridge.example.com", "must use https"),
        ("ftp://bridge.example.com", "public URL"),
        ("bridge.example.com", "public URL"),
        ("https://bridge.example.com/?x=1", "no query"),
        ("https://user:pw@bridge.example.com", "credentials"),
        ("https://bridge.example.com/webhooks/stripe", "not a webhook path"),
        ("https://bridge.example.com:99999", "not a URL"),
    ],
)
def test_a_base_url_that_is_not_the_bridges_public_one_is_refused(given: str, says: str) -> None:
    with pytest.raises(ConnectConfigError, match=says) as caught:
        connect.base_url(given)
    assert caught.value.exit_code == 2


def test_webhook_urls_are_the_bridges_routes() -> None:
    base = "https://b.example.com"
    assert connect.webhook_url("stripe", base) == f"{base}/webhooks/stripe"
    assert connect.webhook_url("lemonsqueezy", base) == f"{base}/webhooks/lemonsqueezy"
    url = connect.webhook_url("gumroad", base, GUMROAD_WEBHOOK_TOKEN)
    assert url == f"{base}/webhooks/gumroad/{GUMROAD_WEBHOOK_TOKEN}"
    assert connect.shown(url) == f"{base}/webhooks/gumroad/***"
    with pytest.raises(ConnectConfigError, match="GUMROAD_WEBHOOK_TOKEN"):
        connect.webhook_url("gumroad", base, None)


def test_no_endpoint_of_the_url_is_a_create_with_exactly_the_events() -> None:
    other = Endpoint("we_1", "https://elsewhere.example.com/hook", ("*",))
    plan = connect.plan_endpoint([other], URL, ["b.x", "a.y", "b.x"])
    assert plan == Plan("create", URL, ("a.y", "b.x"))


def test_an_endpoint_as_wanted_is_left_alone() -> None:
    found = Endpoint("we_1", URL, ("b.x", "a.y"))
    assert connect.plan_endpoint([found], URL, ["a.y", "b.x"]) == Plan(
        "nothing", URL, ("a.y", "b.x"), "we_1"
    )


def test_drifted_events_a_disabled_endpoint_and_another_spelling_are_updated() -> None:
    found = Endpoint("we_1", "https://Bridge.example.com/webhooks/stripe/", ("*", "a.y"), False)
    plan = connect.plan_endpoint([found], URL, ["a.y", "b.x"])
    assert plan.action == "update" and plan.endpoint_id == "we_1"
    assert plan.changes == ("events +b.x -*", "url", "enable")


def test_gumroad_plans_one_subscription_per_resource_missing() -> None:
    url = f"https://b.example.com/webhooks/gumroad/{GUMROAD_WEBHOOK_TOKEN}"
    old = "https://b.example.com/webhooks/gumroad/an-old-token-0123456789abcdef0123"
    existing = {"sale": [Endpoint("s1", url, ("sale",))], "refund": [Endpoint("r1", old, ())]}
    plans = connect.plan_resources(existing, url)
    assert [p.events[0] for p in plans] == sorted(RESOURCE_NAMES)
    assert {p.events[0] for p in plans if p.action == "nothing"} == {"sale"}
    assert connect.stale_gumroad(existing, url) == ("refund",)


@pytest.mark.parametrize("provider", connect.PROVIDERS)
def test_plain_http_to_a_public_host_is_refused_in_one_line(provider: str) -> None:
    outcome = Bridge(KEYS[provider]).run("connect", provider, "--url", "http://bridge.example.com")
    assert outcome.code == 2
    assert outcome.output.strip().splitlines() == [
        "Error: --url must use https (plain http only for 127.0.0.1 or localhost): providers "
        "send payment data to it"
    ]


@pytest.mark.parametrize("provider", connect.PROVIDERS)
def test_a_missing_key_names_the_variable(provider: str) -> None:
    env = {"GUMROAD_WEBHOOK_TOKEN": GUMROAD_WEBHOOK_TOKEN} if provider == "gumroad" else {}
    outcome = Bridge(env).run("connect", provider, "--url", "https://bridge.example.com")
    assert outcome.code == 2
    assert outcome.output.strip() == (
        f"Error: set {connect.API_KEYS[provider]} to register the {provider} webhook"
    )


def test_gumroad_needs_its_webhook_token_before_any_call() -> None:
    env = {"GUMROAD_ACCESS_TOKEN": KEYS["gumroad"]["GUMROAD_ACCESS_TOKEN"]}
    outcome = Bridge(env).run("connect", "gumroad", "--url", "https://bridge.example.com")
    assert outcome.code == 2
    assert outcome.output.startswith("Error: set GUMROAD_WEBHOOK_TOKEN first")
    assert len(outcome.output.strip().splitlines()) == 1


def test_gumroad_refuses_a_localhost_url_as_gumroad_would() -> None:
    outcome = Bridge(KEYS["gumroad"]).run("connect", "gumroad", "--url", "http://localhost:8000")
    assert outcome.code == 2
    assert "public" in outcome.output and GUMROAD_WEBHOOK_TOKEN not in outcome.output


def test_a_bad_setting_ends_the_command_with_exit_2_naming_it() -> None:
    env = {**KEYS["stripe"], "STRIPE_WEBHOOK_SECRET": "not-a-secret"}
    outcome = Bridge(env).run("connect", "stripe", "--url", "https://bridge.example.com")
    assert outcome.code == 2
    assert outcome.output.startswith("Error: STRIPE_WEBHOOK_SECRET must be")


def test_a_store_that_is_not_a_number_is_refused() -> None:
    outcome = Bridge(KEYS["lemonsqueezy"]).run(
        "connect", "lemonsqueezy", "--url", "https://bridge.example.com", "--store", "../1"
    )
    assert (outcome.code, outcome.output.strip()) == (
        2,
        "Error: --store must be a store's numeric id",
    )


@pytest.mark.parametrize("provider", connect.PROVIDERS)
def test_help_states_the_exit_codes(provider: str) -> None:
    outcome = Bridge({}).run("connect", provider, "--help")
    assert outcome.code == 0
    assert "Exit codes:" in outcome.output and "--dry-run" in outcome.output
    assert "  2  a bad --url" in outcome.output
