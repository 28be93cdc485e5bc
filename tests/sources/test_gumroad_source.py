"""GumroadSource against the Gumroad stand-in on a real socket, through the real API client."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.gumroad_api import DEFAULT_REQUESTS_PER_MINUTE, GumroadAPI
from bridge.ledger import Entitlement, merge
from bridge.providers.gumroad import parse
from bridge.sources import Batch
from bridge.sources.gumroad import CHARGES_PER_SUBSCRIPTION, DISPUTE_WINDOW_SECONDS, GumroadSource
from bridge.sources.gumroad_pings import subscriber_events
from bridge.sources.pacing import MAX_RATE_LIMITED_TRIES, Pacer, RateLimitExhaustedError
from bridge.stripe_api import ProviderAPIError
from tests.standins.gumroad import SELLER_ID, TOKEN, GumroadStandIn
from tests.standins.server import StandInServer

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
JAN = datetime(2026, 1, 5, 19, 38, 56, tzinfo=UTC)
OTHER_SELLER = "zZ9aaVL2SdmJSYsNs-OCMg=="


@pytest.fixture
def gumroad() -> GumroadStandIn:
    """Gumroad's objects; its clock (for what is past or pending) stands at NOW."""
    return GumroadStandIn(clock=NOW.timestamp)


@pytest.fixture
def server(gumroad: GumroadStandIn) -> Iterator[StandInServer]:
    with StandInServer(gumroad.app) as running:
        yield running


def _source(
    server: StandInServer,
    *,
    token: str = TOKEN,
    seller_id: str | None = None,
    sleeps: list[float] | None = None,
) -> GumroadSource:
    """The real client at the stand-in; 429 pauses recorded in ``sleeps``, never slept."""
    sleep = sleeps.append if sleeps is not None else (lambda _seconds: None)
    api = GumroadAPI(token, api_base=server.url, timeout=(2.0, 5.0), pacer=Pacer(0, sleep=sleep))
    return GumroadSource(api, seller_id=seller_id, clock=NOW.timestamp)


def _events(batches: Iterable[Batch]) -> list[MembershipEvent]:
    return [event for batch in batches for event in batch.events]


def _by_id(events: Iterable[MembershipEvent]) -> dict[str, MembershipEvent]:
    return {event.event_id: event for event in events}


def _folded(events: Iterable[MembershipEvent], key: str) -> Entitlement | None:
    """The ledger's view of one entitlement after these events, in this order."""
    held: Entitlement | None = None
    for event in events:
        if event.entitlement == key:
            held = merge(held, event, key) or held
    return held


# -- one event per sale, as the ping parser makes it ------------------------------------------


def test_one_time_sale_is_an_active_sale_event_dated_by_its_creation(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area", custom_permalink="members")
    sale = gumroad.sell(
        product, "Buyer@Example.com", at=JAN, full_name="Jane Buyer", purchaser_id="5530311507811"
    )
    (event,) = _events(_source(server).backfill())
    unique = gumroad.unique_permalink(product)
    assert event.event_id == f"sale:{sale}"
    assert event.entitlement == f"gumroad:sale_{sale}"
    assert event.state is EntitlementState.ACTIVE
    assert event.dispute is None
    assert event.products == (
        f"product:{product}",
        "permalink:members",
        f"product:{unique}",
        f"permalink:{unique}",
    )
    assert event.email == "buyer@example.com"
    assert event.occurred_at == JAN.timestamp()
    assert event.refs == {"sale": f"sale_{sale}"}
    assert event.display_name == "Jane Buyer"
    assert event.customer == "5530311507811"
    assert event.test_mode is False


def test_listed_sale_is_the_very_event_its_ping_makes(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area", custom_permalink="members")
    sale = gumroad.sell(product, "buyer@example.com", at=JAN, full_name="Jane Buyer")
    unique = gumroad.unique_permalink(product)
    # What Purchase#payload_for_ping_notification sends for this sale (the fixtures' shape).
    ping = {
        "seller_id": SELLER_ID,
        "product_id": product,
        "product_name": "Members Area",
        "permalink": "members",
        "product_permalink": "https://seller.gumroad.com/l/members",
        "short_product_id": unique,
        "email": "buyer@example.com",
        "sale_id": sale,
        "sale_timestamp": "2026-01-05T19:38:56Z",
        "full_name": "Jane Buyer",
        "refunded": "false",
        "resource_name": "sale",
        "disputed": "false",
        "dispute_won": "false",
    }
    assert _events(_source(server).backfill()) == parse(ping)


def test_product_without_custom_permalink_names_its_unique_one(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Plain")
    gumroad.sell(product, "buyer@example.com", at=JAN)
    (event,) = _events(_source(server).backfill())
    unique = gumroad.unique_permalink(product)
    assert event.products == (f"product:{product}", f"permalink:{unique}", f"product:{unique}")


def test_deleted_product_still_lists_its_sales_by_their_unique_permalink(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Gone", custom_permalink="gone")
    gumroad.sell(product, "buyer@example.com", at=JAN)
    gumroad.delete_product(product)
    (event,) = _events(_source(server).backfill())
    assert "permalink:gone" not in event.products
    assert f"product:{product}" in event.products


def test_every_renewal_is_its_own_event_on_the_subscription_entitlement(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True, custom_permalink="pro")
    subscription, first = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    second = gumroad.renew(subscription, at=JAN + timedelta(days=31))
    events = _by_id(_events(_source(server).backfill()))
    assert set(events) == {f"sale:{first}", f"sale:{second}"}
    for sale in (first, second):
        event = events[f"sale:{sale}"]
        assert event.entitlement == f"gumroad:sub_{subscription}"
        assert event.state is EntitlementState.ACTIVE
        assert event.refs == {"sale": f"sale_{sale}", "subscription": f"sub_{subscription}"}
    assert events[f"sale:{second}"].occurred_at == (JAN + timedelta(days=31)).timestamp()


def test_purchase_email_wins_over_the_buyers_account_email(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area")
    gumroad.sell(product, "typed@example.com", at=JAN, account_email="account@example.com")
    (event,) = _events(_source(server).backfill())
    assert event.email == "typed@example.com"


def test_full_refund_is_a_refund_event_ending_the_sale_at_its_creation(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area")
    sale = gumroad.sell(product, "buyer@example.com", at=JAN)
    gumroad.refund(sale)
    (event,) = _events(_source(server).backfill())
    assert event.event_id == f"refund:{sale}"
    assert event.event_type == "refund"
    assert event.state is EntitlementState.ENDED
    assert event.dispute is None
    assert event.occurred_at == JAN.timestamp()


def test_partial_refund_keeps_the_sale_active(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area", price_cents=1000)
    sale = gumroad.sell(product, "buyer@example.com", at=JAN)
    gumroad.refund(sale, amount_cents=300)
    (event,) = _events(_source(server).backfill())
    assert event.event_id == f"sale:{sale}"
    assert event.state is EntitlementState.ACTIVE


def test_refund_of_an_old_renewal_does_not_end_a_subscription_renewed_after_it(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    subscription, first = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    gumroad.renew(subscription, at=JAN + timedelta(days=31))
    gumroad.refund(first)
    events = _events(_source(server).backfill())
    assert f"refund:{first}" in _by_id(events)
    held = _folded(events, f"gumroad:sub_{subscription}")
    assert held is not None and held.state is EntitlementState.ACTIVE


def test_refund_of_the_latest_charge_ends_the_subscription(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    subscription, _ = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    latest = gumroad.renew(subscription, at=JAN + timedelta(days=31))
    gumroad.refund(latest)
    held = _folded(_events(_source(server).backfill()), f"gumroad:sub_{subscription}")
    assert held is not None and held.state is EntitlementState.ENDED


def test_chargeback_adds_an_open_dispute_dated_by_the_request(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area")
    sale = gumroad.sell(product, "buyer@example.com", at=JAN)
    gumroad.chargeback(sale)
    events = _by_id(_events(_source(server).backfill()))
    assert set(events) == {f"sale:{sale}", f"dispute:{sale}"}
    assert events[f"sale:{sale}"].state is EntitlementState.ACTIVE
    assert events[f"sale:{sale}"].dispute is None
    dispute = events[f"dispute:{sale}"]
    assert dispute.state is None
    assert dispute.dispute is DisputeState.OPEN
    assert dispute.entitlement == f"gumroad:sale_{sale}"
    assert dispute.dispute_id == f"sale_{sale}"
    assert dispute.occurred_at == NOW.timestamp()


def test_won_dispute_settles_an_open_one_a_ping_recorded_before(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area")
    sale = gumroad.sell(product, "buyer@example.com", at=JAN)
    gumroad.chargeback(sale)
    gumroad.win_dispute(sale)
    events = _by_id(_events(_source(server).backfill()))
    won = events[f"dispute_won:{sale}"]
    assert won.dispute is DisputeState.WON
    assert won.state is None
    assert won.occurred_at == NOW.timestamp()
    # The dispute ping was dated by its arrival, after the sale: the listing comes later.
    ping = {
        "resource_name": "dispute",
        "sale_id": sale,
        "email": "buyer@example.com",
        "sale_timestamp": "2026-01-05T19:38:56Z",
        "disputed": "true",
        "product_id": product,
    }
    (opened,) = parse(ping, received_at=(JAN + timedelta(days=20)).timestamp())
    held = _folded([opened, won], f"gumroad:sale_{sale}")
    register = held.dispute(f"sale_{sale}") if held is not None else None
    assert register is not None and register.state is DisputeState.WON


def test_pending_cancellation_keeps_access_and_says_nothing_more(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    subscription, sale = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    gumroad.cancel(subscription, at=NOW + timedelta(days=4))
    events = _events(_source(server).backfill())
    assert [event.event_id for event in events] == [f"sale:{sale}"]
    assert events[0].state is EntitlementState.ACTIVE


def test_subscription_that_is_over_ends_once_dated_by_the_request(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    subscription, first = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    second = gumroad.renew(subscription, at=JAN + timedelta(days=31))
    gumroad.end(subscription, at=JAN + timedelta(days=66), reason="failed_payment")
    events = _events(_source(server).backfill())
    ended = [event for event in events if event.state is EntitlementState.ENDED]
    assert len(ended) == 1
    (event,) = ended
    assert event.event_id.startswith(f"list:subscription_ended:{subscription}:")
    assert event.entitlement == f"gumroad:sub_{subscription}"
    assert event.occurred_at == NOW.timestamp()
    assert event.refs == {"subscription": f"sub_{subscription}", "sale": f"sale_{second}"}
    assert event.email == "buyer@example.com"
    assert {e.event_id for e in events} >= {f"sale:{first}", f"sale:{second}"}
    held = _folded(events, f"gumroad:sub_{subscription}")
    assert held is not None and held.state is EntitlementState.ENDED


def test_fixed_length_subscription_run_out_ends_too(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Course", membership=True, recurrence="monthly")
    subscription, _ = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    gumroad.end(subscription, at=JAN + timedelta(days=60), reason="fixed_subscription_period_ended")
    events = _events(_source(server).backfill())
    assert [e.state for e in events] == [EntitlementState.ACTIVE, EntitlementState.ENDED]


def test_test_purchases_are_never_listed(gumroad: GumroadStandIn, server: StandInServer) -> None:
    product = gumroad.add_product("Members Area")
    gumroad.sell(product, "seller@example.com", at=JAN, test=True)
    real = gumroad.sell(product, "buyer@example.com", at=JAN + timedelta(hours=1))
    events = _events(_source(server).backfill())
    assert [event.event_id for event in events] == [f"sale:{real}"]


def test_sales_of_another_seller_are_skipped(
    gumroad: GumroadStandIn, server: StandInServer, caplog: pytest.LogCaptureFixture
) -> None:
    gumroad.add_token("gr_other_sellers_token", OTHER_SELLER)
    product = gumroad.add_product("Theirs", seller_id=OTHER_SELLER)
    gumroad.sell(product, "buyer@example.com", at=JAN)
    source = _source(server, token="gr_other_sellers_token", seller_id=SELLER_ID)
    batches = list(source.backfill())
    assert _events(batches) == []
    assert len(gumroad.calls_to("/v2/sales")) == 1  # listed, then dropped
    # The same listing for its own seller is kept.
    own = _source(server, token="gr_other_sellers_token", seller_id=OTHER_SELLER)
    assert len(_events(own.backfill())) == 1


# -- pagination and resuming ---------------------------------------------------------------


def _many_sales(gumroad: GumroadStandIn, count: int) -> list[str]:
    product = gumroad.add_product("Members Area")
    return [
        gumroad.sell(product, f"buyer{n}@example.com", at=JAN + timedelta(hours=n))
        for n in range(count)
    ]


def test_backfill_pages_through_every_sale_ten_at_a_time(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    sales = _many_sales(gumroad, 25)
    batches = list(_source(server).backfill())
    assert [len(batch.events) for batch in batches] == [10, 10, 5]
    assert [batch.cursor is None for batch in batches] == [False, False, True]
    # Newest first, each sale once.
    assert [e.event_id for e in _events(batches)] == [f"sale:{s}" for s in reversed(sales)]
    listed = gumroad.calls_to("/v2/sales")
    assert [("page_key" in call.query) for call in listed] == [False, True, True]
    assert len(gumroad.calls_to("/v2/products")) == 1
    assert [batch.calls for batch in batches] == [2, 1, 1]  # products once, then pages


def test_backfill_resumes_after_a_mid_listing_cursor_with_exactly_the_rest(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    _many_sales(gumroad, 25)
    full = list(_source(server).backfill())
    cursor = full[0].cursor
    assert cursor is not None
    rest = list(_source(server).backfill(cursor))
    assert _events(rest) == _events(full[1:])
    assert rest[-1].cursor is None


def test_a_cursor_this_source_did_not_make_is_refused(server: StandInServer) -> None:
    for cursor in ("not json", json.dumps({"page": 2}), json.dumps([1])):
        with pytest.raises(ValueError):
            list(_source(server).backfill(cursor))


def test_changes_list_sales_from_the_day_before_since(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    product = gumroad.add_product("Members Area")
    gumroad.sell(product, "old@example.com", at=datetime(2026, 3, 1, tzinfo=UTC))
    edge = gumroad.sell(product, "edge@example.com", at=datetime(2026, 3, 19, 0, 5, tzinfo=UTC))
    new = gumroad.sell(product, "new@example.com", at=datetime(2026, 3, 20, 23, 0, tzinfo=UTC))
    since = datetime(2026, 3, 20, 9, 30, tzinfo=UTC).timestamp()
    events = _events(_source(server).changes(since))
    assert {e.event_id for e in events} == {f"sale:{edge}", f"sale:{new}"}
    assert gumroad.calls_to("/v2/sales")[0].query["after"] == "2026-03-19"


def test_changes_without_since_is_a_backfill(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    sales = _many_sales(gumroad, 3)
    events = _events(_source(server).changes(None, known=["gumroad:sale_unknown=="]))
    assert {e.event_id for e in events} == {f"sale:{s}" for s in sales}
    assert "after" not in gumroad.calls_to("/v2/sales")[0].query


# -- re-reading what a new sale cannot show ---------------------------------------------------


def test_changes_rereads_known_purchases_that_no_new_sale_shows(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    alive, alive_charge = gumroad.subscribe(pro, "alive@example.com", at=JAN)
    pending, pending_charge = gumroad.subscribe(
        pro, "pending@example.com", at=JAN + timedelta(hours=1)
    )
    gumroad.cancel(pending, at=NOW + timedelta(days=3))
    failed_at = datetime(2026, 3, 12, 8, 0, 3, tzinfo=UTC)
    over, over_charge = gumroad.subscribe(pro, "over@example.com", at=JAN + timedelta(hours=2))
    gumroad.end(over, at=failed_at, reason="failed_payment")
    one_time = gumroad.add_product("Book")
    refunded = gumroad.sell(one_time, "reader@example.com", at=JAN)
    gumroad.refund(refunded)
    kept = gumroad.sell(one_time, "keeper@example.com", at=JAN)
    known = [
        f"gumroad:sub_{alive}",
        f"gumroad:sub_{pending}",
        f"gumroad:sub_{over}",
        "gumroad:sub_UnknownSubscription0A==",
        f"gumroad:sale_{refunded}",
        f"gumroad:sale_{kept}",
        "gumroad:sale_UnknownSale00000000000A==",
        "stripe:sub_123",
    ]
    batches = list(_source(server).changes(NOW.timestamp(), known))
    events = _by_id(_events(batches))
    stamp = "2026-03-12T08:00:03Z"
    assert set(events) == {
        f"list:subscription_ended:{over}:{stamp}",
        f"refund:{refunded}",
        f"sale:{kept}",
        # Each known subscription's charges, re-read: unchanged, so the listing's own events.
        f"sale:{alive_charge}",
        f"sale:{pending_charge}",
        f"sale:{over_charge}",
    }
    # Over once: the charge's `dead` flag does not end it a second time.
    assert [e for e in events.values() if e.state is EntitlementState.ENDED] == [
        events[f"list:subscription_ended:{over}:{stamp}"],
        events[f"refund:{refunded}"],
    ]
    ended = events[f"list:subscription_ended:{over}:{stamp}"]
    assert ended.state is EntitlementState.ENDED
    assert ended.occurred_at == failed_at.timestamp()
    assert ended.entitlement == f"gumroad:sub_{over}"
    assert ended.email == "over@example.com"
    assert events[f"refund:{refunded}"].state is EntitlementState.ENDED
    # One list call confirmed the two alive ones; the rest were read one by one.
    assert len(gumroad.calls_to(f"/v2/products/{pro}/subscribers")) == 1
    assert gumroad.calls_to(f"/v2/products/{pro}/subscribers")[0].query["paginated"] == "true"
    reads = [call.path for call in gumroad.calls if call.path.startswith("/v2/subscribers/")]
    assert sorted(reads) == sorted(
        [f"/v2/subscribers/{over}", "/v2/subscribers/UnknownSubscription0A=="]
    )
    charges = [call.path for call in gumroad.calls if call.path.startswith("/v2/sales/")]
    charged = (
        alive_charge,
        pending_charge,
        over_charge,
        refunded,
        kept,
        "UnknownSale00000000000A==",
    )
    assert sorted(charges) == sorted(f"/v2/sales/{sale}" for sale in charged)
    assert all(batch.cursor is None for batch in batches)
    assert sum(batch.calls for batch in batches) == len(gumroad.calls)


@pytest.mark.parametrize(
    ("reason", "stamp_of"),
    [("cancelled", "cancelled_at"), ("fixed_subscription_period_ended", "ended_at")],
)
def test_known_subscription_over_is_dated_by_its_own_timestamp(
    gumroad: GumroadStandIn, server: StandInServer, reason: str, stamp_of: str
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    subscription, _ = gumroad.subscribe(pro, "buyer@example.com", at=JAN)
    at = datetime(2026, 3, 5, 19, 38, 56, tzinfo=UTC)
    if reason == "cancelled":
        gumroad.cancel(subscription, at=at)
    else:
        gumroad.end(subscription, at=at, reason=reason)
    events = _events(_source(server).changes(NOW.timestamp(), [f"gumroad:sub_{subscription}"]))
    (event,) = [e for e in events if e.state is EntitlementState.ENDED]
    assert event.occurred_at == at.timestamp()
    subscriber = json.loads(
        gumroad.app.test_client()
        .get(f"/v2/subscribers/{subscription}", headers={"Authorization": f"Bearer {TOKEN}"})
        .data
    )["subscriber"]
    assert subscriber["status"] == reason
    assert subscriber[stamp_of] == "2026-03-05T19:38:56Z"


def test_subscriber_without_an_email_ends_by_its_customer_id() -> None:
    subscriber = {
        "id": "GazW4_NBcQy-o7Gjjng7lw==",
        "product_id": "wAz3bLm5QeX9sT1kPq7YvA==",
        "user_id": "5530311507811",
        "email": None,
        "user_email": None,
        "purchase_ids": ["Pp9oO8iI7uU6yY5tT4rR3e=="],
        "ended_at": None,
        "failed_at": None,
        "cancelled_at": None,
        "status": "cancelled",
    }
    (event,) = subscriber_events(subscriber, NOW.timestamp())
    assert event.email is None
    assert event.customer == "5530311507811"
    assert event.entitlement == "gumroad:sub_GazW4_NBcQy-o7Gjjng7lw=="
    assert event.state is EntitlementState.ENDED
    assert event.occurred_at == NOW.timestamp()  # no timestamp of its own: the request's


def test_few_known_subscriptions_are_read_one_by_one_without_lists(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    products = [gumroad.add_product(f"Tier {n}", membership=True) for n in range(3)]
    subscription, sale = gumroad.subscribe(products[0], "buyer@example.com", at=JAN)
    events = _events(_source(server).changes(NOW.timestamp(), [f"gumroad:sub_{subscription}"]))
    assert [e.event_id for e in events] == [f"sale:{sale}"]  # alive, its charge unchanged
    assert not [c for c in gumroad.calls if c.path.endswith("/subscribers")]
    assert len(gumroad.calls_to(f"/v2/subscribers/{subscription}")) == 1


def test_subscriber_lists_stop_once_reading_each_is_cheaper(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    oldest = [gumroad.subscribe(pro, f"old{n}@example.com", at=JAN) for n in range(2)]
    for n in range(250):
        gumroad.subscribe(pro, f"buyer{n}@example.com", at=JAN + timedelta(minutes=n + 1))
    known = [f"gumroad:sub_{s}" for s, _ in oldest]
    events = _events(_source(server).changes(NOW.timestamp(), known))
    assert {e.event_id for e in events} == {f"sale:{sale}" for _, sale in oldest}
    # Two list pages did not reach them (they are on the third): two reads, four calls.
    assert len(gumroad.calls_to(f"/v2/products/{pro}/subscribers")) == 2
    assert sorted(c.path for c in gumroad.calls if c.path.startswith("/v2/subscribers/")) == sorted(
        f"/v2/subscribers/{s}" for s, _ in oldest
    )


def test_purchases_seen_in_the_new_sales_are_not_read_again(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    subscription, _ = gumroad.subscribe(pro, "buyer@example.com", at=NOW - timedelta(hours=2))
    book = gumroad.add_product("Book")
    sale = gumroad.sell(book, "reader@example.com", at=NOW - timedelta(hours=1))
    known = [f"gumroad:sub_{subscription}", f"gumroad:sale_{sale}"]
    events = _events(_source(server).changes(NOW.timestamp() - 60, known))
    assert len(events) == 2
    assert [c.path for c in gumroad.calls] == ["/v2/products", "/v2/sales"]


# -- the older charges of known subscriptions ------------------------------------------------


def _membership_months(
    gumroad: GumroadStandIn, email: str, months: int, *, last: datetime, every: int = 30
) -> tuple[str, list[str]]:
    """A monthly subscription charged ``months`` times, ``every`` days apart (upgrades and
    late retries come closer), the last at ``last``: (its id, its charges, oldest first).
    """
    pro = gumroad.add_product(f"Pro {email}", membership=True)
    start = last - timedelta(days=every * (months - 1))
    subscription, first = gumroad.subscribe(pro, email, at=start)
    renewals = [
        gumroad.renew(subscription, at=start + timedelta(days=every * n)) for n in range(1, months)
    ]
    return subscription, [first, *renewals]


def _changes(server: StandInServer, known: list[str]) -> list[Batch]:
    """A reconcile's run: sales listed from the day before NOW, then ``known`` re-read."""
    return list(_source(server).changes(NOW.timestamp(), known))


def test_changes_find_a_refund_of_an_older_membership_charge(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    subscription, (first, latest) = _membership_months(
        gumroad, "buyer@example.com", 2, last=NOW - timedelta(days=20)
    )
    gumroad.refund(latest)  # its refund ping was lost
    events = _by_id(_events(_changes(server, [f"gumroad:sub_{subscription}"])))
    refund = events[f"refund:{latest}"]  # the listing's own event id and date
    assert refund.state is EntitlementState.ENDED
    assert refund.entitlement == f"gumroad:sub_{subscription}"
    assert refund.occurred_at == (NOW - timedelta(days=20)).timestamp()
    assert refund.refs == {"sale": f"sale_{latest}", "subscription": f"sub_{subscription}"}
    assert events[f"sale:{first}"].state is EntitlementState.ACTIVE
    held = _folded(events.values(), f"gumroad:sub_{subscription}")
    assert held is not None and held.state is EntitlementState.ENDED
    # Nothing the sales listed from the day before NOW showed it.
    assert gumroad.calls_to("/v2/sales")[0].query["after"] == "2026-03-31"


def test_changes_find_a_chargeback_of_an_older_membership_charge(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    subscription, (first, renewal, latest) = _membership_months(
        gumroad, "buyer@example.com", 3, last=NOW - timedelta(days=10)
    )
    gumroad.chargeback(renewal)  # the dispute ping was lost
    events = _by_id(_events(_changes(server, [f"gumroad:sub_{subscription}"])))
    assert set(events) == {
        f"sale:{first}",
        f"sale:{renewal}",
        f"sale:{latest}",
        f"dispute:{renewal}",
    }
    dispute = events[f"dispute:{renewal}"]
    assert dispute.dispute is DisputeState.OPEN
    assert dispute.state is None
    assert dispute.entitlement == f"gumroad:sub_{subscription}"
    assert dispute.dispute_id == f"sale_{renewal}"
    assert dispute.occurred_at == NOW.timestamp()  # dated by the read, as the listing does


def test_changes_find_a_won_dispute_of_an_older_membership_charge(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    subscription, (first, latest) = _membership_months(
        gumroad, "buyer@example.com", 2, last=NOW - timedelta(days=3)
    )
    gumroad.chargeback(first)
    gumroad.win_dispute(first)  # the dispute_won ping was lost
    key = f"gumroad:sub_{subscription}"
    events = _by_id(_events(_changes(server, [key])))
    won = events[f"dispute_won:{first}"]
    assert won.dispute is DisputeState.WON
    assert won.occurred_at == NOW.timestamp()
    assert f"dispute:{first}" not in events
    assert events[f"sale:{latest}"].state is EntitlementState.ACTIVE
    # The open dispute a ping recorded earlier is settled by it.
    ping = {
        "resource_name": "dispute",
        "sale_id": first,
        "subscription_id": subscription,
        "email": "buyer@example.com",
        "sale_timestamp": (NOW - timedelta(days=33)).isoformat(),
        "disputed": "true",
    }
    (opened,) = parse(ping, received_at=(NOW - timedelta(days=20)).timestamp())
    held = _folded([opened, *events.values()], key)
    register = held.dispute(f"sale_{first}") if held is not None else None
    assert register is not None and register.state is DisputeState.WON
    assert held is not None and held.state is EntitlementState.ACTIVE


def test_charges_are_read_newest_first_and_at_most_five_a_subscription(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    # Eight charges in 86 days, all within the dispute window: the cap is what stops.
    subscription, charges = _membership_months(
        gumroad, "buyer@example.com", 8, last=NOW - timedelta(days=2), every=12
    )
    gumroad.chargeback(charges[0])  # the sixth-newest and older: not read this run
    batches = _changes(server, [f"gumroad:sub_{subscription}"])
    read = [
        c.path.removeprefix("/v2/sales/") for c in gumroad.calls if c.path.startswith("/v2/sales/")
    ]
    assert read == charges[::-1][:CHARGES_PER_SUBSCRIPTION] == charges[3:][::-1]
    assert {e.event_id for e in _events(batches)} == {f"sale:{c}" for c in charges[3:]}
    # products, the sales since yesterday, the subscriber, five charges: each one counted.
    assert len(gumroad.calls) == 3 + CHARGES_PER_SUBSCRIPTION
    assert sum(batch.calls for batch in batches) == len(gumroad.calls)


def test_charge_reads_stop_after_the_first_older_than_the_dispute_window(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    yearly = gumroad.add_product("Yearly", membership=True, recurrence="yearly")
    subscription, first = gumroad.subscribe(
        yearly, "buyer@example.com", at=NOW - timedelta(days=800)
    )
    second = gumroad.renew(subscription, at=NOW - timedelta(days=435))
    third = gumroad.renew(subscription, at=NOW - timedelta(days=70))
    _changes(server, [f"gumroad:sub_{subscription}"])
    read = [c.path for c in gumroad.calls if c.path.startswith("/v2/sales/")]
    assert read == [f"/v2/sales/{third}", f"/v2/sales/{second}"]  # not the one before
    assert f"/v2/sales/{first}" not in read
    assert DISPUTE_WINDOW_SECONDS == 120 * 86400


def test_charges_listed_in_this_run_are_not_read_again(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    subscription, (first, renewal) = _membership_months(
        gumroad, "buyer@example.com", 2, last=NOW - timedelta(hours=5)
    )
    gumroad.chargeback(first)
    events = _by_id(_events(_changes(server, [f"gumroad:sub_{subscription}"])))
    # The renewal came with the new sales; only the charge before it is read by id.
    assert [c.path for c in gumroad.calls] == [
        "/v2/products",
        "/v2/sales",
        f"/v2/subscribers/{subscription}",
        f"/v2/sales/{first}",
    ]
    assert set(events) == {f"sale:{renewal}", f"sale:{first}", f"dispute:{first}"}


def test_reread_calls_are_bounded_for_a_full_share_of_known_subscriptions(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    pro = gumroad.add_product("Pro", membership=True)
    known = []
    for n in range(12):
        # Eight charges each, 110 to 5 days old: all within the dispute window.
        subscription, _ = gumroad.subscribe(pro, f"b{n}@example.com", at=NOW - timedelta(days=110))
        for renewal in range(1, 8):
            gumroad.renew(subscription, at=NOW - timedelta(days=110 - 15 * renewal))
        known.append(f"gumroad:sub_{subscription}")
    batches = _changes(server, known)
    # One subscribers page confirmed all twelve; then at most five charges each.
    assert len(gumroad.calls_to(f"/v2/products/{pro}/subscribers")) == 1
    assert not [c for c in gumroad.calls if c.path.startswith("/v2/subscribers/")]
    charge_reads = [c for c in gumroad.calls if c.path.startswith("/v2/sales/")]
    assert len(charge_reads) == 12 * CHARGES_PER_SUBSCRIPTION
    assert len(gumroad.calls) == 3 + 12 * CHARGES_PER_SUBSCRIPTION
    assert sum(batch.calls for batch in batches) == len(gumroad.calls)
    assert all(batch.calls <= 1 for batch in batches[2:])  # one read a batch: the lease holds


def test_unknown_known_ids_yield_nothing_and_read_no_charges(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    gumroad.add_product("Pro", membership=True)
    known = ["gumroad:sub_UnknownSubscription0A==", "gumroad:sale_UnknownSale00000000000A=="]
    batches = _changes(server, known)
    assert _events(batches) == []
    assert [c.path for c in gumroad.calls] == [
        "/v2/products",
        "/v2/sales",
        "/v2/subscribers/UnknownSubscription0A==",
        "/v2/sales/UnknownSale00000000000A==",
    ]
    assert sum(batch.calls for batch in batches) == 4


def test_another_sellers_subscription_yields_nothing(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    theirs = gumroad.add_product("Theirs", membership=True, seller_id=OTHER_SELLER)
    subscription, sale = gumroad.subscribe(theirs, "buyer@example.com", at=JAN)
    gumroad.chargeback(sale)
    assert _events(_changes(server, [f"gumroad:sub_{subscription}"])) == []
    assert not gumroad.calls_to(f"/v2/sales/{sale}")


# -- rate limits, pacing and failures ---------------------------------------------------------


def test_429_with_retry_after_waits_as_asked_then_succeeds(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    _many_sales(gumroad, 2)
    gumroad.throttle(2, retry_after="3")
    sleeps: list[float] = []
    batches = list(_source(server, sleeps=sleeps).backfill())
    assert sleeps == [3.0, 3.0]
    assert len(_events(batches)) == 2
    assert batches[0].calls == 4  # two 429s, then products, then the page


def test_429_without_retry_after_backs_off_exponentially(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    _many_sales(gumroad, 1)
    gumroad.throttle(3)  # Rack::Attack's bare "Retry later"
    sleeps: list[float] = []
    assert len(_events(_source(server, sleeps=sleeps).backfill())) == 1
    assert len(sleeps) == 3
    for attempt, wait in enumerate(sleeps, start=1):
        ceiling = 2.0 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling


def test_429s_without_end_give_up_with_rate_limit_exhausted(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    gumroad.throttle(MAX_RATE_LIMITED_TRIES + 5)
    sleeps: list[float] = []
    with pytest.raises(RateLimitExhaustedError):
        list(_source(server, sleeps=sleeps).backfill())
    assert len(gumroad.calls) == MAX_RATE_LIMITED_TRIES
    assert len(sleeps) == MAX_RATE_LIMITED_TRIES - 1


def test_rate_limit_window_is_waited_out(gumroad: GumroadStandIn, server: StandInServer) -> None:
    clock = [NOW.timestamp()]
    gumroad.clock = lambda: clock[0]
    gumroad.rate_limit = (2, 60.0)
    gumroad.retry_after_header = True
    _many_sales(gumroad, 15)

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    sleeps: list[float] = []
    api = GumroadAPI(TOKEN, api_base=server.url, pacer=Pacer(0, sleep=sleep))
    batches = list(GumroadSource(api, clock=NOW.timestamp).backfill())
    assert [len(b.events) for b in batches] == [10, 5]
    assert sleeps == [60.0]  # the third call hit the window; Retry-After said its rest


def test_listing_reads_are_paced(gumroad: GumroadStandIn, server: StandInServer) -> None:
    _many_sales(gumroad, 15)
    ticks = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        ticks[0] += seconds

    pacer = Pacer(60, clock=lambda: ticks[0], sleep=sleep)
    api = GumroadAPI(TOKEN, api_base=server.url, pacer=pacer)
    list(GumroadSource(api, clock=NOW.timestamp).backfill())
    assert waits == [1.0, 1.0]  # products, page 1, page 2: a second apart
    assert DEFAULT_REQUESTS_PER_MINUTE == 60.0
    assert GumroadAPI(TOKEN).pacer.interval == 1.0


def test_rejected_token_is_a_clear_permanent_error_without_the_token(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    _many_sales(gumroad, 1)
    with pytest.raises(ProviderAPIError) as caught:
        list(_source(server, token="gr_wrong_token_123").backfill())
    assert caught.value.retryable is False
    assert "status=401" in str(caught.value)
    assert "access token was refused" in str(caught.value)
    assert "gr_wrong_token_123" not in str(caught.value)


def test_token_without_view_sales_is_refused_as_such(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    gumroad.add_token("gr_public_only", SELLER_ID, scopes=("view_public",))
    with pytest.raises(ProviderAPIError) as caught:
        list(_source(server, token="gr_public_only").backfill())
    assert caught.value.retryable is False
    assert "view_sales" in str(caught.value)


def test_token_travels_as_a_bearer_header_only(
    gumroad: GumroadStandIn, server: StandInServer
) -> None:
    _many_sales(gumroad, 12)
    list(_source(server).backfill())
    assert gumroad.calls
    assert all(TOKEN not in json.dumps(call.query) for call in gumroad.calls)


def test_logs_name_no_email_and_no_token(
    gumroad: GumroadStandIn, server: StandInServer, caplog: pytest.LogCaptureFixture
) -> None:
    product = gumroad.add_product("Members Area")
    gumroad.sell(product, "secret.buyer@example.com", at=JAN)
    gumroad.throttle(1)
    with caplog.at_level(logging.DEBUG):
        list(_source(server).backfill())
        with pytest.raises(ProviderAPIError):
            list(_source(server, token="gr_wrong_token_456").backfill())
    assert "gumroad_api_failed" in caplog.text
    assert "secret.buyer" not in caplog.text
    assert TOKEN not in caplog.text and "gr_wrong_token_456" not in caplog.text
