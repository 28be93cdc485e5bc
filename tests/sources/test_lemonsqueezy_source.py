"""The Lemon Squeezy source against the stand-in API on a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from bridge.events import EntitlementState, MembershipEvent, parse_timestamp
from bridge.lemonsqueezy_api import MAX_PAGE_SIZE, LemonSqueezyAPI
from bridge.providers import lemonsqueezy
from bridge.sources import Batch
from bridge.sources.lemonsqueezy import LemonSqueezySource
from bridge.sources.pacing import MAX_RATE_LIMITED_TRIES, Pacer, RateLimitExhaustedError
from bridge.stripe_api import ProviderAPIError
from tests import lemonsqueezy_events as webhooks
from tests.sources import timing
from tests.standins.lemonsqueezy import Call, LemonSqueezyStandIn
from tests.standins.server import StandInServer

# Distinctive, so a leak into any message or log line is easy to spot.
API_KEY = "lsk_TOPSECRET_source.do-not-leak"
EMAIL = "Buyer@Example.COM"
# The source's clock: the Unix time it reads just before each page's request.
REQUESTED_AT = 1_800_000_000.0
# What the pacer sleeps between list calls at Lemon Squeezy's 300 calls a minute.
PACE = 60 / 300
_AUTH = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/vnd.api+json"}


class FakeTime(timing.FakeTime):
    """The shared fake clock, and which of its waits were not the steady pace."""

    def holds(self) -> list[float]:
        """The waits that were not the steady pace (429 back-offs)."""
        return [s for s in self.sleeps if abs(s - PACE) > 1e-9]


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def standin(fake_time: FakeTime) -> LemonSqueezyStandIn:
    return LemonSqueezyStandIn(API_KEY, clock=fake_time.monotonic)


@pytest.fixture
def server(standin: LemonSqueezyStandIn) -> Iterator[StandInServer]:
    with StandInServer(standin.app) as running:
        yield running


def _api(server: StandInServer, fake_time: FakeTime, per_minute: float = 300) -> LemonSqueezyAPI:
    pacer = Pacer(per_minute, clock=fake_time.monotonic, sleep=fake_time.sleep)
    return LemonSqueezyAPI(API_KEY, api_base=server.url, timeout=(1.0, 5.0), pacer=pacer)


@pytest.fixture
def api(server: StandInServer, fake_time: FakeTime) -> Iterator[LemonSqueezyAPI]:
    client = _api(server, fake_time)
    yield client
    client.close()


@pytest.fixture
def source(api: LemonSqueezyAPI) -> LemonSqueezySource:
    return LemonSqueezySource(api, clock=lambda: REQUESTED_AT)


def _events(batches: list[Batch]) -> list[MembershipEvent]:
    return [event for batch in batches for event in batch.events]


def _lists(standin: LemonSqueezyStandIn, collection: str | None = None) -> list[Call]:
    paths = {f"/v1/{collection}"} if collection else {"/v1/subscriptions", "/v1/orders"}
    return [call for call in standin.calls if call.path in paths]


def _attributes(standin: LemonSqueezyStandIn, collection: str, object_id: int) -> dict[str, object]:
    attributes: dict[str, object] = standin.resource(collection, object_id)["attributes"]
    return attributes


def _updated_at(standin: LemonSqueezyStandIn, collection: str, object_id: int) -> float | None:
    return parse_timestamp(_attributes(standin, collection, object_id)["updated_at"])


def _of(events: list[MembershipEvent], ref: str, prefix: str) -> MembershipEvent:
    """The one event about object ``ref`` whose type starts with ``prefix``."""
    [found] = [e for e in events if ref in e.refs.values() and e.event_type.startswith(prefix)]
    return found


# -- what each state maps to --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "pause_mode", "expected"),
    [
        ("on_trial", None, EntitlementState.ACTIVE),
        ("active", None, EntitlementState.ACTIVE),
        ("paused", "free", EntitlementState.ACTIVE),
        ("paused", "void", EntitlementState.ENDED),
        ("past_due", None, EntitlementState.PAST_DUE),
        ("unpaid", None, EntitlementState.ENDED),
        ("cancelled", None, EntitlementState.ACTIVE),  # until ends_at
        ("expired", None, EntitlementState.ENDED),
    ],
)
def test_each_subscription_status_gives_the_webhook_state(
    standin: LemonSqueezyStandIn,
    source: LemonSqueezySource,
    status: str,
    pause_mode: str | None,
    expected: EntitlementState,
) -> None:
    sub = standin.add_subscription(EMAIL, status=status, pause_mode=pause_mode, name="Ada L")
    attributes = _attributes(standin, "subscriptions", sub)

    event = _of(_events(list(source.backfill())), f"sub_{sub}", "subscription_")

    assert event.event_type == "subscription_updated"
    assert event.entitlement == f"lemonsqueezy:sub_{sub}"
    assert event.state is expected
    assert event.dispute is None
    assert event.products == (
        f"product:{attributes['product_id']}",
        f"variant:{attributes['variant_id']}",
    )
    assert event.refs == {"subscription": f"sub_{sub}", "order": f"order_{attributes['order_id']}"}
    assert event.email == "buyer@example.com"
    assert event.customer == f"customer_{attributes['customer_id']}"
    assert event.display_name == "Ada L"
    assert event.test_mode is False
    assert event.occurred_at == _updated_at(standin, "subscriptions", sub)


@pytest.mark.parametrize(
    ("status", "event_type", "expected"),
    [
        ("paid", "order_created", EntitlementState.ACTIVE),
        ("pending", "order_created", EntitlementState.PENDING),
        ("failed", "order_created", EntitlementState.PENDING),
        ("fraudulent", "order_created", EntitlementState.ENDED),
        ("refunded", "order_refunded", EntitlementState.ENDED),
        # Still paid for the most part: listed, it grants as the paid order it was.
        ("partial_refund", "order_refunded", EntitlementState.ACTIVE),
    ],
)
def test_each_order_status_gives_the_webhook_state(
    standin: LemonSqueezyStandIn,
    source: LemonSqueezySource,
    status: str,
    event_type: str,
    expected: EntitlementState | None,
) -> None:
    order = standin.add_order(EMAIL, status=status)
    item = _attributes(standin, "orders", order)["first_order_item"]
    assert isinstance(item, dict)

    [event] = _events(list(source.backfill()))

    assert event.event_type == event_type
    # Not a subscription's order: the engine resolves the key as for the webhook.
    assert event.entitlement is None
    assert event.refs == {"order": f"order_{order}"}
    assert event.state is expected
    assert event.dispute is None
    assert event.products == (f"product:{item['product_id']}", f"variant:{item['variant_id']}")
    assert event.email == "buyer@example.com"
    assert event.occurred_at == _updated_at(standin, "orders", order)


def test_a_listing_and_a_webhook_of_one_snapshot_share_event_id_and_meaning(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    sub = standin.add_subscription(EMAIL)
    standin.cancel(sub)
    order = standin.add_order(EMAIL)
    standin.refund(order)
    sub_at, order_at = (
        _updated_at(standin, "subscriptions", sub),
        _updated_at(standin, "orders", order),
    )
    assert sub_at is not None and order_at is not None
    sub_attributes = _attributes(standin, "subscriptions", sub)
    # What Lemon Squeezy posts for those snapshots (built from the shared fixtures).
    sent = [
        webhooks.subscription(
            "subscription_updated", "cancelled", subscription_id=str(sub), email=EMAIL,
            updated_at=sub_at, order_id=str(sub_attributes["order_id"]),
        ),
        webhooks.order("order_refunded", "refunded", order_id=str(order), email=EMAIL,
                       updated_at=order_at),
    ]  # fmt: skip

    listed = {event.event_id: event for event in _events(list(source.backfill()))}

    for payload in sent:
        [delivered] = lemonsqueezy.parse(payload)
        event = listed[delivered.event_id]
        assert (event.entitlement, event.state, event.occurred_at) == (
            delivered.entitlement,
            delivered.state,
            delivered.occurred_at,
        )


def test_test_mode_objects_keep_test_mode(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    standin.add_subscription(EMAIL, test_mode=True)
    standin.add_order(EMAIL, test_mode=True)

    events = _events(list(source.backfill()))

    assert len(events) == 3  # the subscription, its first order, the one-time order
    assert all(event.test_mode for event in events)


def test_seeded_changes_move_updated_at_and_make_new_observations(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    sub = standin.add_subscription(EMAIL)
    first = _of(_events(list(source.backfill())), f"sub_{sub}", "subscription_")
    standin.cancel(sub)
    cancelled = _of(_events(list(source.backfill())), f"sub_{sub}", "subscription_")
    standin.expire(sub)
    expired = _of(_events(list(source.backfill())), f"sub_{sub}", "subscription_")

    assert first.occurred_at < cancelled.occurred_at < expired.occurred_at
    assert len({first.event_id, cancelled.event_id, expired.event_id}) == 3
    assert [first.state, cancelled.state, expired.state] == [
        EntitlementState.ACTIVE,
        EntitlementState.ACTIVE,
        EntitlementState.ENDED,
    ]


# -- a subscription's first order ---------------------------------------------------------


def test_a_subscriptions_first_order_never_grants_on_its_own(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    sub = standin.add_subscription(EMAIL)
    standin.expire(sub)
    first_order = _attributes(standin, "subscriptions", sub)["order_id"]
    assert _attributes(standin, "orders", int(str(first_order)))["status"] == "paid"  # the trap
    lone = standin.add_order(EMAIL)

    events = _events(list(source.backfill()))

    subscription = _of(events, f"sub_{sub}", "subscription_")
    folded = _of(events, f"order_{first_order}", "order_")
    one_time = _of(events, f"order_{lone}", "order_")
    assert subscription.state is EntitlementState.ENDED
    assert folded.entitlement == f"lemonsqueezy:sub_{sub}"
    assert folded.state is None
    assert folded.refs == {"order": f"order_{first_order}", "subscription": f"sub_{sub}"}
    assert (one_time.entitlement, one_time.state) == (None, EntitlementState.ACTIVE)


def test_a_refunded_first_order_ends_its_subscription_as_its_webhook_does(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    sub = standin.add_subscription(EMAIL)
    first_order = int(str(_attributes(standin, "subscriptions", sub)["order_id"]))
    standin.refund(first_order)

    folded = _of(_events(list(source.backfill())), f"order_{first_order}", "order_")

    assert folded.event_type == "order_refunded"
    assert folded.entitlement == f"lemonsqueezy:sub_{sub}"
    assert folded.state is EntitlementState.ENDED
    assert folded.occurred_at == _updated_at(standin, "orders", first_order)


# -- pages and cursors --------------------------------------------------------------------


def _seed_many(standin: LemonSqueezyStandIn) -> None:
    """230 subscriptions (and their orders) and 20 one-time orders: 3 pages of each list."""
    for n in range(230):
        standin.add_subscription(f"member{n}@example.com", status="active" if n % 2 else "expired")
    for n in range(20):
        standin.add_order(f"buyer{n}@example.com")


def test_every_object_is_listed_in_pages_of_the_largest_size(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    _seed_many(standin)

    batches = list(source.backfill())

    calls = _lists(standin)
    assert [(c.path, c.query["page[number]"]) for c in calls] == [
        ("/v1/subscriptions", "1"), ("/v1/subscriptions", "2"), ("/v1/subscriptions", "3"),
        ("/v1/orders", "1"), ("/v1/orders", "2"), ("/v1/orders", "3"),
    ]  # fmt: skip
    assert {c.query["page[size]"] for c in calls} == {str(MAX_PAGE_SIZE)}
    assert [len(b.events) for b in batches] == [100, 100, 30, 100, 100, 50]
    assert [b.calls for b in batches] == [1] * 6
    assert all(b.cursor is not None for b in batches[:-1])
    assert batches[-1].cursor is None
    events = _events(batches)
    assert len({e.entitlement for e in events if e.event_type == "subscription_updated"}) == 230
    folded = [e for e in events if e.event_type.startswith("order_") and e.entitlement]
    assert len(folded) == 230 and all(e.state is None for e in folded)


def test_an_empty_store_lists_one_empty_page_of_each(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    batches = list(source.backfill())

    assert [(b.events, b.calls) for b in batches] == [((), 1), ((), 1)]
    assert batches[-1].cursor is None


@pytest.mark.parametrize(
    ("index", "first_orders_batch", "subscription_calls"),
    [
        # Resumed in the subscriptions: their last two pages, then all three again.
        pytest.param(0, 2, 2 + 3, id="in-the-subscriptions"),
        pytest.param(2, 0, 3, id="at-the-first-orders-page"),
        pytest.param(3, 0, 3, id="at-the-second-orders-page"),
        pytest.param(4, 0, 3, id="at-the-last-orders-page"),
    ],
)
def test_a_resumed_backfill_yields_exactly_the_rest(
    standin: LemonSqueezyStandIn,
    server: StandInServer,
    fake_time: FakeTime,
    source: LemonSqueezySource,
    index: int,
    first_orders_batch: int,
    subscription_calls: int,
) -> None:
    _seed_many(standin)
    full = list(source.backfill())
    standin.calls.clear()

    resumed_api = _api(server, fake_time)
    resumed = LemonSqueezySource(resumed_api, clock=lambda: REQUESTED_AT)
    rest = list(resumed.backfill(full[index].cursor))
    resumed_api.close()

    # The same events, first orders still folded into their subscriptions.
    assert _events(rest) == _events(full[index + 1 :])
    assert [b.cursor for b in rest] == [b.cursor for b in full[index + 1 :]]
    # The subscriptions listed again for their order ids count in the first orders batch.
    assert rest[first_orders_batch].calls == 1 + 3
    assert len(_lists(standin, "subscriptions")) == subscription_calls
    assert sum(b.calls for b in rest) == len(_lists(standin))


@pytest.mark.parametrize(
    "cursor", ["nope", "[]", '{"phase": "refunds", "page": 1}', '{"phase": "orders", "page": 0}']
)
def test_a_cursor_this_source_never_wrote_is_refused(
    source: LemonSqueezySource, cursor: str
) -> None:
    with pytest.raises(ValueError, match="cursor"):
        list(source.backfill(cursor))


def test_changes_lists_everything_again(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    sub = standin.add_subscription(EMAIL)
    standin.add_order(EMAIL)
    backfilled = _events(list(source.backfill()))
    standin.calls.clear()

    changed = _events(list(source.changes(REQUESTED_AT - 60, [f"lemonsqueezy:sub_{sub}"])))

    assert changed == backfilled
    assert [c.path for c in standin.calls] == ["/v1/subscriptions", "/v1/orders"]


# -- rate limits --------------------------------------------------------------------------


def test_429s_are_waited_out_as_retry_after_asks(
    standin: LemonSqueezyStandIn,
    source: LemonSqueezySource,
    fake_time: FakeTime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    standin.add_subscription(EMAIL)
    standin.throttle(3, retry_after=7)

    batches = list(source.backfill())

    assert fake_time.holds() == [7.0, 7.0, 7.0]
    assert [b.calls for b in batches] == [4, 1]
    assert [c.status for c in _lists(standin)] == [429, 429, 429, 200, 200]
    assert len(_events(batches)) == 2
    assert "TOPSECRET" not in caplog.text
    assert "example.com" not in caplog.text.lower()


def test_429s_without_retry_after_back_off_exponentially(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource, fake_time: FakeTime
) -> None:
    standin.throttle(3, retry_after=None)

    batches = list(source.backfill())

    holds = fake_time.holds()
    assert len(holds) == 3
    for attempt, wait in enumerate(holds, start=1):
        ceiling = 2.0 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling
    assert batches[0].calls == 4


def test_429s_in_a_row_past_the_limit_give_up(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource, fake_time: FakeTime
) -> None:
    standin.throttle(MAX_RATE_LIMITED_TRIES, retry_after=2)

    with pytest.raises(RateLimitExhaustedError, match="429"):
        list(source.backfill())

    assert [c.status for c in standin.calls] == [429] * MAX_RATE_LIMITED_TRIES
    assert fake_time.holds() == [2.0] * (MAX_RATE_LIMITED_TRIES - 1)


def test_pacing_at_the_limit_never_draws_a_429(fake_time: FakeTime) -> None:
    standin = LemonSqueezyStandIn(API_KEY, per_minute=5, clock=fake_time.monotonic)
    with StandInServer(standin.app) as server:
        api = _api(server, fake_time, per_minute=5)
        source = LemonSqueezySource(api, clock=lambda: REQUESTED_AT)
        for _ in range(6):
            list(source.backfill())
        api.close()

    assert [c.status for c in standin.calls] == [200] * 12
    assert fake_time.sleeps == [pytest.approx(12.0)] * 11


def test_a_minute_another_client_used_up_is_waited_out(fake_time: FakeTime) -> None:
    standin = LemonSqueezyStandIn(API_KEY, per_minute=5, clock=fake_time.monotonic)
    with StandInServer(standin.app) as server:
        for _ in range(5):  # another program with the same key spends the minute
            requests.get(f"{server.url}/v1/orders", headers=_AUTH, timeout=5)
        api = _api(server, fake_time)
        batches = list(LemonSqueezySource(api, clock=lambda: REQUESTED_AT).backfill())
        api.close()

    assert [c.status for c in standin.calls] == [200] * 5 + [429, 200, 200]
    assert fake_time.holds() == [60.0]  # Retry-After: the rest of the minute
    assert [b.calls for b in batches] == [2, 1]


def test_a_lower_limit_in_the_headers_slows_the_pace(fake_time: FakeTime) -> None:
    standin = LemonSqueezyStandIn(API_KEY, per_minute=60, clock=fake_time.monotonic)
    with StandInServer(standin.app) as server:
        api = _api(server, fake_time)
        list(LemonSqueezySource(api, clock=lambda: REQUESTED_AT).backfill())
        api.close()

    assert api.pacer.interval == 1.0
    assert [c.status for c in standin.calls] == [200, 200]


# -- failures -----------------------------------------------------------------------------


def test_a_refused_key_is_a_clear_permanent_error_without_the_key(
    standin: LemonSqueezyStandIn, server: StandInServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    wrong = LemonSqueezyAPI("lsk_TOPSECRET_wrong", api_base=server.url)

    with pytest.raises(ProviderAPIError) as caught:
        list(LemonSqueezySource(wrong).backfill())
    wrong.close()

    assert caught.value.retryable is False
    assert "status=401" in str(caught.value)
    assert "LEMONSQUEEZY_API_KEY" in str(caught.value)
    assert "TOPSECRET" not in str(caught.value) and "TOPSECRET" not in caplog.text
    assert [c.status for c in standin.calls] == [401]


def test_a_listed_object_that_cannot_be_read_is_skipped_by_id(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource, caplog: pytest.LogCaptureFixture
) -> None:
    broken = standin.add_order("broken@example.com")
    standin.patch("orders", broken, user_email=12345)
    fine = standin.add_order(EMAIL)

    events = _events(list(source.backfill()))

    assert [e.refs["order"] for e in events] == [f"order_{fine}"]
    assert f"'{broken}'" in caplog.text and "skipped" in caplog.text
    assert "12345" not in caplog.text and "example.com" not in caplog.text


def test_an_object_without_timestamps_is_dated_just_before_its_page_was_read(
    standin: LemonSqueezyStandIn, source: LemonSqueezySource
) -> None:
    order = standin.add_order(EMAIL)
    standin.patch("orders", order, updated_at=None, created_at=None)

    [event] = _events(list(source.backfill()))

    assert event.occurred_at == REQUESTED_AT


# -- the stand-in keeps to the docs ---------------------------------------------------------


def test_single_reads_of_the_existing_client_work_against_the_stand_in(
    standin: LemonSqueezyStandIn, api: LemonSqueezyAPI
) -> None:
    sub = standin.add_subscription(EMAIL, status="past_due")
    order = int(str(_attributes(standin, "subscriptions", sub)["order_id"]))

    assert api.subscription(f"sub_{sub}")["status"] == "past_due"
    assert api.order(str(order))["status"] == "paid"
    assert [c.path for c in standin.calls] == [f"/v1/subscriptions/{sub}", f"/v1/orders/{order}"]


def test_stand_in_answers_as_the_docs_say(
    standin: LemonSqueezyStandIn, server: StandInServer
) -> None:
    for _ in range(12):
        standin.add_order(EMAIL)
    auth = _AUTH

    unauthenticated = requests.get(f"{server.url}/v1/orders", timeout=5)
    too_big = requests.get(f"{server.url}/v1/orders?page[size]=101", headers=auth, timeout=5)
    html = requests.get(
        f"{server.url}/v1/orders", headers={**auth, "Accept": "text/html"}, timeout=5
    )
    first = requests.get(f"{server.url}/v1/orders", headers=auth, timeout=5)
    last = requests.get(f"{server.url}/v1/orders?page[number]=2", headers=auth, timeout=5)

    assert unauthenticated.status_code == 401
    assert unauthenticated.json() == {
        "jsonapi": {"version": "1.0"},
        "errors": [{"detail": "Unauthenticated.", "status": "401", "title": "Unauthorized"}],
    }
    assert too_big.status_code == 400 and too_big.json()["errors"][0]["status"] == "400"
    assert html.status_code == 406
    assert first.headers["Content-Type"] == "application/vnd.api+json"
    assert first.headers["X-Ratelimit-Limit"] == "300"
    page = first.json()
    assert page["meta"]["page"] == {
        "currentPage": 1, "from": 1, "lastPage": 2, "perPage": 10, "to": 10, "total": 12,
    }  # fmt: skip
    assert "page%5Bnumber%5D=2&page%5Bsize%5D=10&sort=-createdAt" in page["links"]["next"]
    ids = [int(r["id"]) for r in page["data"] + last.json()["data"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert "next" not in last.json()["links"] and "prev" in last.json()["links"]
    assert len(last.json()["data"]) == 2
