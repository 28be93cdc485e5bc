"""`bridge backfill` and `bridge reconcile` end to end (issue 9).

The real commands run in-process (click's CliRunner), configured by environment variables
only, against the providers' stand-ins (tests/standins) on real sockets, a real Redis and
the Sotion sandbox. What is checked is what an operator would see: the members in Sotion,
the calls made to Sotion and to the providers, exit codes and the printed tables.

The API clients are paced as in production (Lemon Squeezy 300 calls a minute, Gumroad 60),
so the data is sized to keep every listing to a few seconds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from bridge.app import create_app
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from bridge.sources.pacing import MAX_RATE_LIMITED_TRIES
from tests import lemonsqueezy_events as webhooks
from tests.conftest import SANDBOX_KEY, drain
from tests.reconcile.providers import (
    LEMONSQUEEZY_KEY,
    LEMONSQUEEZY_SECRET,
    Bridge,
    Clock,
    Outage,
    find,
    gumroad_env,
    lemonsqueezy_env,
    list_calls,
    stripe_env,
)
from tests.reliability.processes import Fleet, environment, wait_until
from tests.standins.gumroad import GumroadStandIn
from tests.standins.lemonsqueezy import LemonSqueezyStandIn
from tests.standins.server import StandInServer
from tests.standins.stripe import ONE_TIME, StripeStandIn
from tests.test_stripe_flow import RequestLog, record_requests
from workers import runtime as worker_runtime
from workers.schedule import NEXT_KEY
from workers.store import Store

CURSOR = "bridge:backfill:cursor:lemonsqueezy"
# DESIGN §4, Lemon Squeezy: which subscription states (status, pause mode) leave access.
SUBSCRIPTION_PAID = {
    ("on_trial", None): True,
    ("active", None): True,
    ("cancelled", None): True,  # until ends_at: subscription_expired ends it
    ("past_due", None): True,  # the grace (no BRIDGE_PAST_DUE_GRACE_DAYS: until it ends)
    ("paused", "free"): True,
    ("paused", "void"): False,
    ("unpaid", None): False,
    ("expired", None): False,
}
# ... and which one-time order statuses (partial_refund: see its own test below).
ORDER_PAID = {
    "paid": True,
    "pending": False,
    "failed": False,
    "refunded": False,
    "fraudulent": False,
}


# -- helpers -----------------------------------------------------------------------------


def members_by_email(sotion_api: SotionClient) -> dict[str, Member]:
    return {member.email: member for member in sotion_api.iter_members()}


Calls = list[tuple[str, str, Any]]


def made(log: RequestLog | Calls) -> Calls:
    """The Sotion calls recorded so far (a copy: the test's own reads come after)."""
    return list(log.calls if isinstance(log, RequestLog) else log)


def writes(log: RequestLog | Calls) -> Calls:
    """Every Sotion call that is not a read."""
    return [(verb, path, body) for verb, path, body in made(log) if verb != "GET"]


def patches(log: RequestLog | Calls) -> dict[str, list[Any]]:
    """PATCH bodies by member path."""
    found: dict[str, list[Any]] = {}
    for verb, path, body in made(log):
        if verb == "PATCH":
            found.setdefault(path, []).append(body)
    return found


def member_path(member: Member) -> str:
    return f"/api/v1/members/{member.id}"


def state(sotion_api: SotionClient) -> dict[str, tuple[bool | None, str]]:
    """Every member's (paid, status)."""
    return {m.email: (m.paid, m.status) for m in sotion_api.iter_members()}


def bridge_keys(connection: redis.Redis, *patterns: str) -> list[bytes]:
    return sorted(key for pattern in patterns for key in connection.scan_iter(pattern))


# -- 1. a backfill of every Lemon Squeezy state into a site that has members ---------------


def test_lemonsqueezy_backfill_of_every_status_into_a_site_that_has_members(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    expected: dict[str, bool] = {}
    for (status, mode), paid in SUBSCRIPTION_PAID.items():
        for i in range(130):
            email = f"{status}-{mode or 'none'}-{i:03d}@subscribers.example"
            lemonsqueezy.add_subscription(email, status=status, pause_mode=mode)
            expected[email] = paid
    for status, paid in ORDER_PAID.items():
        for i in range(10 if paid else 4):
            email = f"{status}-{i:02d}@orders.example"
            lemonsqueezy.add_order(email, status=status)
            expected[email] = paid
    # The site's members before the bridge: an unpaid buyer (typed in another case at the
    # checkout), one paid by hand, one blocked by hand, a lapsed one, two with no purchase.
    returning = sotion_api.create_member("returning@site.example", paid=False)
    returning_sub = lemonsqueezy.add_subscription("Returning@Site.Example")
    comp = sotion_api.create_member("comp@site.example", paid=True)
    comp_sub = lemonsqueezy.add_subscription("comp@site.example")
    blocked = sotion_api.create_member("blocked@site.example", paid=False)
    sotion_api.update_member(blocked.id, status="blocked")
    lemonsqueezy.add_subscription("blocked@site.example")
    sotion_api.create_member("lapsed@site.example", paid=False)
    lemonsqueezy.add_subscription("lapsed@site.example", status="expired")
    sotion_api.create_member("friend@site.example", paid=True)
    sotion_api.create_member("visitor@site.example", paid=False)
    existing = 6
    subscriptions = len(SUBSCRIPTION_PAID) * 130 + 4
    orders = subscriptions + sum(10 if paid else 4 for paid in ORDER_PAID.values())
    new = {email for email, paid in expected.items() if paid}
    assert subscriptions >= 1000 and len(new) > 500
    requests = record_requests(sotion)

    out = bridge.run("backfill", "lemonsqueezy", **lemonsqueezy_env(ls_server))

    assert out.code == 0, out.output
    calls = made(requests)
    members = members_by_email(sotion_api)
    for email, paid in expected.items():
        if paid:
            assert members[email].paid and not members[email].blocked, email
        else:
            assert email not in members, f"{email}: a buyer without access became a member"
    assert len(members) == existing + len(new)
    assert members["returning@site.example"].paid
    assert members["comp@site.example"].paid
    assert members["blocked@site.example"].paid and members["blocked@site.example"].blocked
    assert not members["lapsed@site.example"].paid
    assert members["friend@site.example"].paid and not members["visitor@site.example"].paid
    # Sotion: one listing of the site, the new members in bulk (500 a call), one patch per
    # existing member that differs, and nothing else.
    lists = [p for v, p, _ in calls if v == "GET" and p == "/api/v1/members"]
    bulk = [body for verb, path, body in writes(calls) if path == "/api/v1/members/bulk"]
    assert len(lists) == math.ceil(existing / 100)
    assert len(bulk) == math.ceil(len(new) / 500)
    created = [m for body in bulk for m in body["members"]]
    assert all(len(body["members"]) <= 500 for body in bulk)
    assert sorted(m["email"] for m in created) == sorted(new)
    assert all(m["paid"] is True for m in created)
    assert patches(calls) == {
        member_path(returning): [{"paid": True}],
        member_path(blocked): [{"paid": True}],  # paid, still blocked: never unblocked
    }
    assert len(writes(calls)) == len(bulk) + 2
    assert len(calls) <= math.ceil(existing / 100) + math.ceil(len(new) / 500) + 2
    # What it printed: the listing, then the Sotion side.
    assert out.count("lemonsqueezy", "objects read") == subscriptions + orders
    pages = math.ceil(subscriptions / 100) + math.ceil(orders / 100)
    assert out.count("lemonsqueezy", "API calls") == pages
    summary = out.summary()
    assert summary["members"] == len(expected) + 4  # every email with a purchase
    assert summary["changed"] == len(new) + 2 and summary["failed"] == 0
    assert summary["calls"] == {
        "bulk create": len(bulk),
        "list members": len(lists),
        "patch": 2,
    }
    # Lemon Squeezy: every page once, 100 a page.
    assert list_calls(lemonsqueezy.calls, "/v1/subscriptions") == [
        (n, 200) for n in range(1, math.ceil(subscriptions / 100) + 1)
    ]
    assert list_calls(lemonsqueezy.calls, "/v1/orders") == [
        (n, 200) for n in range(1, math.ceil(orders / 100) + 1)
    ]
    assert {c.query["page[size]"] for c in lemonsqueezy.calls} == {"100"}

    # Later both subscriptions end: the one the bridge paid is un-paid, the one paid by
    # hand stays paid (the bridge never undoes what it did not do).
    lemonsqueezy.expire(returning_sub)
    lemonsqueezy.expire(comp_sub)
    later = record_requests(sotion)
    again = bridge.run("reconcile", "--provider", "lemonsqueezy", **lemonsqueezy_env(ls_server))
    assert again.code == 0, again.output
    assert writes(later) == [("PATCH", member_path(returning), {"paid": False})]
    assert not sotion_api.get_member(returning.id).paid
    assert sotion_api.get_member(comp.id).paid


def test_a_partially_refunded_lemonsqueezy_order_keeps_access_after_a_backfill(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion_api: SotionClient,
) -> None:
    lemonsqueezy.add_order("whole@orders.example")
    lemonsqueezy.add_order("partial@orders.example", status="partial_refund")

    out = bridge.run("backfill", "lemonsqueezy", **lemonsqueezy_env(ls_server))

    assert out.code == 0, out.output
    assert find(sotion_api, "whole@orders.example").paid
    member = sotion_api.find_member_by_email("partial@orders.example")
    assert member is not None and member.paid


# -- 2. a dry run ------------------------------------------------------------------------


def test_a_dry_run_prints_what_it_would_change_and_writes_nothing(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    sotion_api.create_member("a@returning.example", paid=False)
    lemonsqueezy.add_subscription("a@returning.example")
    lemonsqueezy.add_subscription("a@trial.example", status="on_trial")
    lemonsqueezy.add_order("a@single.example")
    lemonsqueezy.add_subscription("a@gone.example", status="expired")
    env = lemonsqueezy_env(ls_server)
    outage = Outage(lemonsqueezy.app, lambda path, _query: path == "/v1/orders")
    before = state(sotion_api)
    requests = record_requests(sotion)
    plan = {
        "a***@returning.example": "patch:paid=True",
        "a***@trial.example": "create:paid=True",
        "a***@single.example": "create:paid=True",
    }

    dry = bridge.run("backfill", "--dry-run", **env)
    with outage.during():  # a dry run stopped half-way keeps no cursor either
        stopped = bridge.run("backfill", "--dry-run", **env)

    assert dry.code == 0, dry.output
    assert "backfill (dry run: nothing written)" in dry.output
    assert dry.changes() == plan
    assert dry.summary()["changed"] == 3
    assert "would change" in dry.output
    assert stopped.code == 1 and "run it again" in stopped.output
    assert writes(requests) == []
    assert state(sotion_api) == before
    written = ("bridge:ledger:*", "bridge:member:*", "bridge:owner:*", "bridge:dedupe:*")
    assert bridge_keys(redis_conn, *written, "bridge:reconcile:last:*", CURSOR) == []
    # The same interrupted listing, for real, keeps its cursor (so the check above can fail).
    with outage.during():
        assert bridge.run("backfill", **env).code == 1
    assert json.loads(redis_conn.get(CURSOR) or b"null") == {"phase": "orders", "page": 1}

    done = bridge.run("backfill", **env)

    assert done.code == 0, done.output
    assert done.changes() == plan  # the dry run said exactly what the backfill did
    assert find(sotion_api, "a@returning.example").paid
    assert sotion_api.find_member_by_email("a@gone.example") is None


# -- 3. a second backfill ----------------------------------------------------------------


def test_running_the_backfill_again_makes_no_sotion_write(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    for (status, mode), _paid in SUBSCRIPTION_PAID.items():
        for i in range(3):
            email = f"{status}-{mode or 'none'}-{i}@again.example"
            lemonsqueezy.add_subscription(email, status=status, pause_mode=mode)
    for status in ORDER_PAID:
        lemonsqueezy.add_order(f"{status}@again.example", status=status)
    sotion_api.create_member("comp@again.example", paid=True)
    lemonsqueezy.add_subscription("comp@again.example", status="expired")
    blocked = sotion_api.create_member("blocked@again.example", paid=False)
    sotion_api.update_member(blocked.id, status="blocked")
    lemonsqueezy.add_subscription("blocked@again.example")
    env = lemonsqueezy_env(ls_server)
    first = bridge.run("backfill", "lemonsqueezy", **env)
    assert first.code == 0, first.output
    assert first.summary()["changed"] > 10
    before = state(sotion_api)
    requests = record_requests(sotion)

    again = bridge.run("backfill", "lemonsqueezy", **env)

    assert again.code == 0, again.output
    assert writes(requests) == []
    assert again.changes() == {}
    assert again.summary()["changed"] == 0
    assert again.summary()["calls"] == {"list members": 1}
    assert again.count("lemonsqueezy", "ledger changes") == 0
    assert state(sotion_api) == before


# -- 4. an interrupted backfill ----------------------------------------------------------


def test_an_interrupted_backfill_resumes_from_its_cursor(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    emails = [f"b{i:03d}@resume.example" for i in range(250)]
    for email in emails:
        lemonsqueezy.add_subscription(email)
    outage = Outage(
        lemonsqueezy.app,
        lambda path, query: path == "/v1/subscriptions" and query.get("page[number]") == "2",
    )
    env = lemonsqueezy_env(ls_server)

    with outage.during():
        stopped = bridge.run("backfill", "lemonsqueezy", **env)

    assert stopped.code == 1
    assert "backfill stopped" in stopped.output
    assert "status=500" in stopped.output and "run it again to continue" in stopped.output
    assert LEMONSQUEEZY_KEY not in stopped.output
    assert list_calls(lemonsqueezy.calls, "/v1/subscriptions") == [(1, 200), (2, 500)]
    assert json.loads(redis_conn.get(CURSOR) or b"null") == {"phase": "subscriptions", "page": 2}
    # The first page is in the ledger; Sotion is written only once a listing is complete.
    assert len(Store(redis_conn).ledger_emails()) == 100
    assert list(sotion_api.iter_members()) == []
    mark = len(lemonsqueezy.calls)

    resumed = bridge.run("backfill", "lemonsqueezy", **env)

    assert resumed.code == 0, resumed.output
    rerun = lemonsqueezy.calls[mark:]
    # It continued at the page that failed, not at the first one.
    assert list_calls(rerun, "/v1/subscriptions")[:2] == [(2, 200), (3, 200)]
    assert list_calls(rerun, "/v1/orders") == [(1, 200), (2, 200), (3, 200)]
    assert "lemonsqueezy (resumed)" in resumed.output
    assert resumed.count("lemonsqueezy", "objects read") == 150 + 250  # page 1: not again
    members = members_by_email(sotion_api)
    assert sorted(members) == emails and all(m.paid for m in members.values())
    assert resumed.summary()["changed"] == 250
    assert redis_conn.get(CURSOR) is None
    # Complete: the next backfill starts from the first page again.
    mark = len(lemonsqueezy.calls)
    assert bridge.run("backfill", "lemonsqueezy", **env).code == 0
    assert list_calls(lemonsqueezy.calls[mark:], "/v1/subscriptions")[0] == (1, 200)


def test_a_backfill_stopped_by_the_providers_rate_limit_says_to_run_it_again(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
) -> None:
    lemonsqueezy.add_subscription("a@limited.example")
    lemonsqueezy.throttle(MAX_RATE_LIMITED_TRIES, retry_after=0)

    out = bridge.run("backfill", "lemonsqueezy", **lemonsqueezy_env(ls_server))

    assert out.code == 1
    assert "run it again to continue" in out.output
    assert isinstance(out.result.exception, SystemExit)


# -- 5. webhooks lost while web was down -------------------------------------------------


def test_reconcile_repairs_lemonsqueezy_changes_whose_webhooks_were_lost(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    expired = lemonsqueezy.add_subscription("a@expired.example")
    unpaid = lemonsqueezy.add_subscription("a@unpaid.example")
    cancelled = lemonsqueezy.add_subscription("a@cancelled.example")
    refunded = lemonsqueezy.add_order("a@refunded.example")
    lemonsqueezy.add_subscription("a@kept.example")
    lemonsqueezy.add_order("a@kept-order.example")
    env = lemonsqueezy_env(ls_server)
    assert bridge.run("backfill", **env).code == 0
    assert all(m.paid for m in sotion_api.iter_members())
    # Web is down: none of these changes reaches the bridge as a webhook.
    lemonsqueezy.expire(expired)
    lemonsqueezy.set_status(unpaid, "unpaid")
    lemonsqueezy.cancel(cancelled)  # access continues until ends_at
    lemonsqueezy.refund(refunded)
    requests = record_requests(sotion)

    out = bridge.run("reconcile", **env)

    assert out.code == 0, out.output
    lost = {"a***@expired.example", "a***@unpaid.example", "a***@refunded.example"}
    assert out.changes() == dict.fromkeys(lost, "patch:paid=False")
    assert out.summary()["changed"] == 3
    members = members_by_email(sotion_api)
    ended = {"a@expired.example", "a@unpaid.example", "a@refunded.example"}
    assert sorted(writes(requests)) == sorted(
        ("PATCH", member_path(members[email]), {"paid": False}) for email in ended
    )
    assert {email for email, m in members.items() if not m.paid} == ended
    assert not any(m.blocked for m in members.values())
    again = record_requests(sotion)
    second = bridge.run("reconcile", **env)
    assert second.code == 0, second.output
    assert writes(again) == [] and second.changes() == {}
    assert second.summary()["changed"] == 0


def test_reconcile_repairs_gumroad_changes_whose_pings_were_lost(
    bridge: Bridge,
    gumroad: GumroadStandIn,
    gumroad_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    now = datetime.now(UTC)
    long_ago = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
    ebook = gumroad.add_product("E-book")
    club = gumroad.add_product("Club", membership=True)
    # In the order of their dates, as Gumroad numbers sales.
    refunded = gumroad.sell(ebook, "a@refunded.example", at=long_ago)
    ended, _ = gumroad.subscribe(club, "a@ended.example", at=long_ago + timedelta(hours=1))
    gumroad.renew(ended, at=long_ago + timedelta(days=30))
    gumroad.subscribe(club, "a@kept.example", at=now - timedelta(hours=3))
    disputed = gumroad.sell(ebook, "a@disputed.example", at=now - timedelta(hours=2))
    env = gumroad_env(gumroad_server)
    assert bridge.run("backfill", "gumroad", **env).code == 0
    assert len([m for m in sotion_api.iter_members() if m.paid]) == 4
    # No ping reaches the bridge for any of these.
    gumroad.refund(refunded)
    gumroad.chargeback(disputed)
    gumroad.end(ended, at=now - timedelta(minutes=5), reason="failed_payment")
    requests = record_requests(sotion)
    mark = len(gumroad.calls)

    out = bridge.run("reconcile", "--provider", "gumroad", **env)

    assert out.code == 0, out.output
    calls = made(requests)
    assert out.changes() == {
        "a***@refunded.example": "patch:paid=False",
        "a***@disputed.example": "patch:paid=False,status=blocked",
        "a***@ended.example": "patch:paid=False",
    }
    assert out.summary()["changed"] == 3
    members = members_by_email(sotion_api)
    assert {e: (m.paid, m.status) for e, m in members.items()} == {
        "a@refunded.example": (False, "active"),
        "a@disputed.example": (False, "blocked"),
        "a@ended.example": (False, "active"),
        "a@kept.example": (True, "active"),
    }
    assert len(writes(calls)) == 3
    # Only what changed since the backfill was listed; the older purchases re-read by id.
    sales = [c for c in gumroad.calls[mark:] if c.path == "/v2/sales"]
    assert [bool(c.query.get("after")) for c in sales] == [True]
    assert f"/v2/sales/{refunded}" in {c.path for c in gumroad.calls[mark:]}
    again = record_requests(sotion)
    second = bridge.run("reconcile", "--provider", "gumroad", **env)
    assert second.code == 0, second.output
    assert writes(again) == [] and second.summary()["changed"] == 0


def test_reconcile_repairs_a_lost_dispute_of_a_membership_charge(
    bridge: Bridge,
    gumroad: GumroadStandIn,
    gumroad_server: StandInServer,
    sotion_api: SotionClient,
) -> None:
    long_ago = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
    club = gumroad.add_product("Club", membership=True)
    subscription, _ = gumroad.subscribe(club, "a@charged-back.example", at=long_ago)
    renewal = gumroad.renew(subscription, at=long_ago + timedelta(days=30))
    env = gumroad_env(gumroad_server)
    assert bridge.run("backfill", "gumroad", **env).code == 0
    assert find(sotion_api, "a@charged-back.example").paid
    gumroad.chargeback(renewal)  # the dispute ping is lost

    out = bridge.run("reconcile", "--provider", "gumroad", **env)

    assert out.code == 0, out.output
    assert find(sotion_api, "a@charged-back.example").blocked


def test_reconcile_repairs_stripe_changes_from_its_events(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_clock: Clock,
    stripe_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    canceled = stripe.add_subscription(stripe.add_customer("a@canceled.example", name="Can"))
    buyer = stripe.add_customer("a@refunded.example", name="Ref")
    session = stripe.add_checkout(customer_id=buyer)
    stripe.add_subscription(stripe.add_customer("a@kept.example", name="Kept"))
    env = stripe_env(stripe_server)
    assert bridge.run("backfill", "stripe", **env).code == 0
    assert len([m for m in sotion_api.iter_members() if m.paid]) == 3
    # A few seconds later (Stripe dates events in whole seconds), its webhooks for these
    # never arrive.
    stripe_clock.advance(3)
    stripe.update_subscription(canceled, status="canceled")
    stripe.refund(stripe.charge_of(session))
    requests = record_requests(sotion)
    mark = len(stripe.calls)

    out = bridge.run("reconcile", "--provider", "stripe", **env)

    assert out.code == 0, out.output
    assert out.changes() == {
        "a***@canceled.example": "patch:paid=False",
        "a***@refunded.example": "patch:paid=False",
    }
    assert out.summary()["changed"] == 2 and len(writes(requests)) == 2
    assert find(sotion_api, "a@kept.example").paid
    assert not find(sotion_api, "a@canceled.example").paid
    # Read from Stripe's events since the last run, not by listing everything again.
    assert {c.path for c in stripe.calls[mark:]} == {"/v1/events"}
    assert all("created[gte]" in c.query for c in stripe.calls[mark:])
    again = record_requests(sotion)
    second = bridge.run("reconcile", "--provider", "stripe", **env)
    assert second.code == 0, second.output
    assert writes(again) == [] and second.summary()["changed"] == 0


def test_a_stripe_change_in_the_second_of_the_listing_is_not_lost(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_clock: Clock,
    stripe_server: StandInServer,
    sotion_api: SotionClient,
) -> None:
    # Everything at Stripe happens within one second S; the backfill reads its page at
    # S + a fraction, and the cancellation comes after that read, still within S.
    stripe_clock.hold(math.floor(time.time()))
    canceled = stripe.add_subscription(stripe.add_customer("a@same-second.example"))
    env = stripe_env(stripe_server)
    assert bridge.run("backfill", "stripe", **env).code == 0
    assert find(sotion_api, "a@same-second.example").paid
    stripe.update_subscription(canceled, status="canceled")

    out = bridge.run("reconcile", "--provider", "stripe", **env)

    assert out.code == 0, out.output
    assert not find(sotion_api, "a@same-second.example").paid


# -- 6. drift made by hand ---------------------------------------------------------------


def test_reconcile_repairs_what_was_changed_by_hand_on_what_the_bridge_owns(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    stripe.add_subscription(stripe.add_customer("a@payer.example", name="Payer"))
    buyer = stripe.add_customer("a@disputed.example", name="Disputer")
    stripe.add_dispute(stripe.charge_of(stripe.add_checkout(customer_id=buyer)))
    env = stripe_env(stripe_server)
    assert bridge.run("backfill", "stripe", **env).code == 0
    payer, disputer = find(sotion_api, "a@payer.example"), find(sotion_api, "a@disputed.example")
    assert payer.paid and not payer.blocked
    assert disputer.blocked and not disputer.paid  # blocked by the bridge (the dispute)
    # By hand, in Sotion: the paying buyer un-paid, the disputed one unblocked.
    sotion_api.update_member(payer.id, paid=False)
    sotion_api.update_member(disputer.id, status="active")
    requests = record_requests(sotion)

    out = bridge.run("reconcile", **env)

    assert out.code == 0, out.output
    assert out.changes() == {
        "a***@payer.example": "patch:paid=True",
        "a***@disputed.example": "patch:status=blocked",
    }
    assert patches(requests) == {
        member_path(payer): [{"paid": True}],
        member_path(disputer): [{"status": "blocked"}],
    }
    assert sotion_api.get_member(payer.id).paid
    assert sotion_api.get_member(disputer.id).blocked
    again = record_requests(sotion)
    assert bridge.run("reconcile", **env).code == 0
    assert writes(again) == []


# -- 7. a webhook delivered meanwhile ----------------------------------------------------


def test_a_webhook_delivered_meanwhile_is_not_applied_twice(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    settings: Settings,
    redis_conn: redis.Redis,
    queue: Queue,
    runtime: worker_runtime.Runtime,
) -> None:
    delivered = lemonsqueezy.add_subscription("a@delivered.example")
    missed = lemonsqueezy.add_subscription("a@missed.example")
    env = lemonsqueezy_env(ls_server)
    assert bridge.run("backfill", **env).code == 0
    lemonsqueezy.expire(delivered)
    lemonsqueezy.expire(missed)
    # The expiry of one reaches the bridge as Lemon Squeezy's webhook (the very snapshot
    # the API now lists); the other's webhook is lost.
    payload = {
        "meta": {"event_name": "subscription_updated", "test_mode": False},
        "data": lemonsqueezy.resource("subscriptions", delivered, ls_server.url),
    }
    body = webhooks.encode(payload)
    web = create_app(replace(settings, lemonsqueezy_webhook_secrets=(LEMONSQUEEZY_SECRET,)))
    response = web.test_client().post(
        "/webhooks/lemonsqueezy",
        data=body,
        headers=webhooks.headers(payload, body, LEMONSQUEEZY_SECRET),
    )
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    assert queue.count == 1
    requests = record_requests(sotion)

    out = bridge.run("reconcile", **env)

    assert out.code == 0, out.output
    # The delivered snapshot is left to its job; the missed one is repaired now.
    assert out.count("lemonsqueezy", "objects read") == 4  # two subscriptions, their orders
    assert out.count("lemonsqueezy", "ledger changes") == 1
    # The webhook's snapshot, and the two orders as the backfill already merged them.
    assert (
        out.provider("lemonsqueezy")["skipped"]
        == "already applied (a webhook or an earlier run): 3"
    )
    assert out.changes() == {"a***@missed.example": "patch:paid=False"}
    ledger = Store(redis_conn).entitlements("a@delivered.example")
    assert [e.state.value for e in ledger.values()] == ["active"]
    assert find(sotion_api, "a@delivered.example").paid
    drain(queue)  # the webhook's job
    member = find(sotion_api, "a@delivered.example")
    assert not member.paid
    assert patches(requests)[member_path(member)] == [{"paid": False}]  # once, by the job
    again = record_requests(sotion)
    second = bridge.run("reconcile", **env)
    assert second.code == 0 and writes(again) == []


# -- 8. the scheduled reconcile ----------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path, redis_conn: redis.Redis) -> Iterator[Fleet]:
    """Real `bridge worker` processes, killed (with their horses) after the test."""
    started = Fleet(env=environment(), logs_dir=tmp_path)
    yield started
    started.stop_all()


def test_the_worker_reconciles_on_its_own_schedule(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    redis_url: str,
    redis_conn: redis.Redis,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    fleet: Fleet,
) -> None:
    ending = lemonsqueezy.add_subscription("a@ending.example")
    lemonsqueezy.add_subscription("a@staying.example")
    env = lemonsqueezy_env(ls_server)
    assert bridge.run("backfill", **env).code == 0
    member = find(sotion_api, "a@ending.example")
    assert member.paid
    mark = len(lemonsqueezy.calls)
    worker = fleet.start_worker(
        REDIS_URL=redis_url,
        SOTION_API_KEY=SANDBOX_KEY,
        SOTION_API_URL=sotion.url,
        BRIDGE_RECONCILE_INTERVAL="0.05",  # minutes
        **env,
    )
    wait_until(
        lambda: redis_conn.exists(NEXT_KEY),
        30,
        "the worker's maintenance pass to schedule a reconcile",
        fleet.logs(),
    )

    lemonsqueezy.expire(ending)  # its webhook is lost, and nobody runs a command

    wait_until(
        lambda: not sotion_api.get_member(member.id).paid,
        60,
        "the scheduled reconcile to un-pay the expired subscription",
        fleet.logs(),
    )
    assert worker.alive(), worker.output()
    assert find(sotion_api, "a@staying.example").paid
    assert list_calls(lemonsqueezy.calls[mark:], "/v1/subscriptions")[0] == (1, 200)
    line = wait_until(
        lambda: next(
            (
                x
                for x in worker.output().splitlines()
                if "scheduled reconcile done" in x and '"changed": 1' in x
            ),
            None,
        ),
        20,
        "the worker to log the run that repaired it",
        fleet.logs(),
    )
    assert "ending" not in line  # counts only, no email


# -- 9. errors ---------------------------------------------------------------------------


def test_with_no_provider_api_key_the_commands_say_which_to_set(bridge: Bridge) -> None:
    for command in (["backfill"], ["reconcile"]):
        out = bridge.run(*command)
        assert out.code == 1, out.output
        assert "no provider API is configured" in out.output
        for name in ("STRIPE_API_KEY", "LEMONSQUEEZY_API_KEY", "GUMROAD_ACCESS_TOKEN"):
            assert name in out.output


def test_a_provider_asked_for_without_its_key_is_named(
    bridge: Bridge, ls_server: StandInServer
) -> None:
    env = lemonsqueezy_env(ls_server)  # another provider is configured
    out = bridge.run("backfill", "gumroad", **env)
    assert out.code == 1
    assert "GUMROAD_ACCESS_TOKEN" in out.output
    other = bridge.run("reconcile", "--provider", "stripe", **env)
    assert other.code == 1 and "STRIPE_API_KEY" in other.output


def test_a_placeholder_or_refused_key_stops_the_command_without_printing_it(
    bridge: Bridge, lemonsqueezy: LemonSqueezyStandIn, ls_server: StandInServer
) -> None:
    placeholder = bridge.run(
        "backfill", LEMONSQUEEZY_API_KEY="your-api-key", LEMONSQUEEZY_API_BASE=ls_server.url
    )
    assert placeholder.code == 1
    assert "LEMONSQUEEZY_API_KEY is a placeholder" in placeholder.output
    wrong = "lsk_live_Wr0ngKeyWr0ngKey77"
    refused = bridge.run(
        "backfill", LEMONSQUEEZY_API_KEY=wrong, LEMONSQUEEZY_API_BASE=ls_server.url
    )
    assert refused.code == 1
    assert "LEMONSQUEEZY_API_KEY" in refused.output and "401" in refused.output
    assert wrong not in refused.output
    assert [c.status for c in lemonsqueezy.calls] == [401]


def test_since_must_be_an_iso_time_with_a_zone(bridge: Bridge, ls_server: StandInServer) -> None:
    env = lemonsqueezy_env(ls_server)
    for value in (
        "yesterday",
        "2026-11-30T08:00:00",
        "9999-12-31T23:00:00-12:00",  # the day after would not fit a date
        "0001-01-01T00:00:00+05:00",
    ):
        out = bridge.run("reconcile", "--since", value, **env)
        assert out.code == 2, out.output
        assert "Invalid value for '--since'" in out.output
    assert bridge.run("reconcile", "--since", "2026-11-30T08:00:00Z", **env).code == 0


def test_a_run_while_another_holds_the_lock_says_so_and_writes_nothing(
    bridge: Bridge,
    lemonsqueezy: LemonSqueezyStandIn,
    ls_server: StandInServer,
    sotion: SandboxServer,
    redis_conn: redis.Redis,
) -> None:
    lemonsqueezy.add_subscription("a@locked.example")
    redis_conn.set("bridge:reconcile:lock", "another run", px=30_000)
    requests = record_requests(sotion)
    env = lemonsqueezy_env(ls_server)
    for command in (["reconcile"], ["backfill"]):
        out = bridge.run(*command, **env)
        assert out.code == 1, out.output
        assert "another backfill or reconcile is running" in out.output
    assert redis_conn.get("bridge:reconcile:lock") == b"another run"  # not taken from it
    assert requests.calls == [] and lemonsqueezy.calls == []


def test_redis_unreachable_is_said_plainly(bridge: Bridge, ls_server: StandInServer) -> None:
    for command in (["reconcile"], ["backfill", "--restart"]):
        out = bridge.run(*command, REDIS_URL="redis://127.0.0.1:9/0", **lemonsqueezy_env(ls_server))
        assert out.code == 1
        assert "Redis is unreachable" in out.output


def test_a_token_no_client_can_send_is_refused_without_echoing_it(
    bridge: Bridge, gumroad_server: StandInServer
) -> None:
    env = {**gumroad_env(gumroad_server), "GUMROAD_ACCESS_TOKEN": "abc def"}
    out = bridge.run("backfill", "gumroad", **env)
    assert out.code == 1
    assert "Gumroad access token contains whitespace" in out.output
    assert "abc def" not in out.output


def test_help_lists_each_commands_options(bridge: Bridge) -> None:
    backfill = bridge.run("backfill", "--help")
    assert backfill.code == 0
    for option in ("--dry-run", "--adopt-paid", "--restart", "[stripe|lemonsqueezy|gumroad|all]"):
        assert option in backfill.output
    reconcile = bridge.run("reconcile", "--help")
    assert reconcile.code == 0
    for option in ("--provider", "--since", "--dry-run", "BRIDGE_RECONCILE_INTERVAL"):
        assert option in reconcile.output


# -- 10. a Gumroad backfill --------------------------------------------------------------


def test_gumroad_backfill_ends_as_the_pings_would_have(
    bridge: Bridge,
    gumroad: GumroadStandIn,
    gumroad_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    tmp_path: Path,
) -> None:
    library = sotion_api.create_access_group("Library").id
    club_group = sotion_api.create_access_group("Club").id
    ebook = gumroad.add_product("E-book", custom_permalink="ebook")
    club = gumroad.add_product("Club", membership=True)
    stickers = gumroad.add_product("Stickers")  # in no rule of the products file
    products = tmp_path / "products.toml"
    products.write_text(
        f'[[products]]\nname = "E-book"\ngumroad_products = ["{ebook}"]\ngroups = ["Library"]\n'
        f'[[products]]\nname = "Club"\ngumroad_products = ["{club}"]\ngroups = ["Club"]\n'
    )
    # Every sale in the order of its date, as Gumroad numbers them (its pages rely on it).
    day = datetime(2026, 1, 5, 10, tzinfo=UTC)
    month = timedelta(days=30)
    reader, member = frozenset({library}), frozenset({club_group})
    neither: frozenset[str] = frozenset()
    expected: dict[str, tuple[bool, bool, frozenset[str]]] = {}  # email -> paid, blocked, groups
    hours = iter(range(1, 1000))

    def at() -> datetime:
        return day + timedelta(hours=next(hours))

    for i in range(8):  # a sale
        gumroad.sell(ebook, f"reader{i}@gumroad.example", at=at())
        expected[f"reader{i}@gumroad.example"] = (True, False, reader)
    for i in range(2):  # refund: the purchase ends
        gumroad.refund(gumroad.sell(ebook, f"refunded{i}@gumroad.example", at=at()))
    for i in range(2):  # a partial refund keeps access
        sale = gumroad.sell(ebook, f"partial{i}@gumroad.example", at=at())
        gumroad.refund(sale, amount_cents=300)
        expected[f"partial{i}@gumroad.example"] = (True, False, reader)
    for i in range(2):  # dispute: blocked
        gumroad.chargeback(gumroad.sell(ebook, f"charged{i}@gumroad.example", at=at()))
        expected[f"charged{i}@gumroad.example"] = (False, True, neither)
    for i in range(2):  # dispute_won restores
        sale = gumroad.sell(ebook, f"won{i}@gumroad.example", at=at())
        gumroad.chargeback(sale)
        gumroad.win_dispute(sale)
        expected[f"won{i}@gumroad.example"] = (True, False, reader)
    gumroad.sell(stickers, "stickers@gumroad.example", at=at())
    renewing: list[tuple[str, int]] = []  # (subscription, renewals)
    for i in range(4):  # a membership, renewed monthly (every renewal is a sale)
        sub, _ = gumroad.subscribe(club, f"member{i}@gumroad.example", at=at())
        renewing.append((sub, 2))
        expected[f"member{i}@gumroad.example"] = (True, False, member)
    ended = []
    for i in range(2):  # subscription_ended
        sub, _ = gumroad.subscribe(club, f"ended{i}@gumroad.example", at=at())
        renewing.append((sub, 1))
        ended.append(sub)
    leaving, _ = gumroad.subscribe(club, "leaving@gumroad.example", at=at())
    renewing.append((leaving, 1))
    expected["leaving@gumroad.example"] = (True, False, member)  # cancelled: until it ends
    renewed, first = gumroad.subscribe(club, "renewed@gumroad.example", at=at())
    gumroad.refund(first)  # an old charge refunded; renewed since
    renewing.append((renewed, 2))
    expected["renewed@gumroad.example"] = (True, False, member)
    gumroad.subscribe(club, "both@gumroad.example", at=at())
    gumroad.sell(ebook, "both@gumroad.example", at=at())
    expected["both@gumroad.example"] = (True, False, reader | member)
    for wave in (1, 2):
        hours = iter(range(1, 1000))
        for sub, renewals in renewing:
            if renewals >= wave:
                gumroad.renew(sub, at=at() + wave * month)
    for sub in ended:
        gumroad.end(sub, at=day + 3 * month, reason="fixed_subscription_period_ended")
    gumroad.cancel(leaving, at=datetime.now(UTC) + timedelta(days=20))
    created = sorted(gumroad.sales.values(), key=lambda sale: sale.number)
    assert [sale.created_at for sale in created] == sorted(sale.created_at for sale in created)
    assert 35 <= len(gumroad.sales) <= 45
    requests = record_requests(sotion)

    out = bridge.run(
        "backfill", "gumroad", BRIDGE_PRODUCTS=str(products), **gumroad_env(gumroad_server)
    )

    assert out.code == 0, out.output
    members = members_by_email(sotion_api)
    groups: dict[str, set[str]] = {}
    for group_id in (library, club_group):
        for found in sotion_api.iter_group_members(group_id):
            groups.setdefault(found.email, set()).add(group_id)
    actual = {
        email: (bool(m.paid), m.blocked, frozenset(groups.get(email, ())))
        for email, m in members.items()
    }
    assert actual == expected
    assert out.count("gumroad", "objects read") >= len(gumroad.sales)
    assert "product not in the products file: 1" in out.provider("gumroad")["skipped"]
    # New members in one bulk call (groups included), then the blocks a create cannot set.
    assert sorted(path for _, path, _ in writes(requests)) == sorted(
        ["/api/v1/members/bulk"]
        + [member_path(members[f"charged{i}@gumroad.example"]) for i in (0, 1)]
    )
    sales_pages = gumroad.calls_to("/v2/sales")
    assert len(sales_pages) == math.ceil(len(gumroad.sales) / 10)


def test_a_lost_one_time_checkout_with_a_products_file_is_granted_by_reconcile(
    bridge: Bridge,
    stripe: StripeStandIn,
    stripe_clock: Clock,
    stripe_server: StandInServer,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    tmp_path: Path,
) -> None:
    products = tmp_path / "products.toml"
    products.write_text(
        f'[[products]]\nname = "Course"\nstripe_prices = ["{ONE_TIME[0]}"]\n', encoding="utf-8"
    )
    env = {**stripe_env(stripe_server), "BRIDGE_PRODUCTS": str(products)}
    assert bridge.run("backfill", "stripe", **env).code == 0
    stripe_clock.advance(3)
    # A guest buys the course while the bridge is down: only /v1/events knows.
    stripe.add_checkout(email="guest@example.com")
    out = bridge.run("reconcile", "--provider", "stripe", **env)
    assert out.code == 0, out.output
    # The Checkout event names no product: its line items are read, as for the webhook.
    member = find(sotion_api, "guest@example.com")
    assert member.paid
    assert any(call.path.endswith("/line_items") for call in stripe.calls)
