"""Gumroad end to end: ping → intake → RQ job → worker → Sotion sandbox.

One test per case of DESIGN §4's Gumroad row, the confirmation of unsigned pings through
``GET /v2/sales/:id`` when an access token is set, and a buyer who pays through both
Gumroad and Lemon Squeezy. Every test asserts the member as the sandbox has it at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask, jsonify, request
from flask.testing import FlaskClient
from rq import Queue
from werkzeug.serving import WSGIRequestHandler, make_server

from bridge.admin import failed_jobs
from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from tests.conftest import drain
from tests.test_providers_gumroad import (
    FORM,
    ONE_TIME_SALE,
    SELLER,
    SUBSCRIPTION,
    payload,
    restarted,
)
from tests.test_providers_lemonsqueezy import encode, fixture
from tests.test_web_gumroad import TOKEN, form_body
from workers import runtime as worker_runtime

EMAIL = "buyer@example.com"
LS_SECRET = "ls_secret"
ACCESS_TOKEN = "gumroad_access_token_x1"

JSONObject = dict[str, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with Gumroad (seller check on) and Lemon Squeezy configured."""
    return dataclasses.replace(
        settings,
        gumroad_webhook_token=TOKEN,
        gumroad_seller_id=SELLER,
        lemonsqueezy_webhook_secrets=(LS_SECRET,),
        stripe_webhook_secrets=(),
    )


# -- delivering and observing -----------------------------------------------------------


def post(client: FlaskClient, data: JSONObject) -> JSONObject:
    """POST a ping the way Gumroad does (form-encoded); the bridge must answer 200."""
    response = client.post(
        f"/webhooks/gumroad/{TOKEN}", data=form_body(data), headers={"Content-Type": FORM}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: JSONObject = response.get_json()
    return answer


def deliver(client: FlaskClient, data: JSONObject) -> None:
    """POST a ping that must be queued as a new event."""
    answer = post(client, data)
    assert answer["queued"] == 1, answer


def member_of(sotion_api: SotionClient, email: str = EMAIL) -> Member:
    """The member Sotion has for this email (fails when there is none)."""
    found = sotion_api.find_member_by_email(email)
    assert found is not None, f"no Sotion member for {email}"
    return found


def count_members(sotion_api: SotionClient) -> int:
    """How many members the sandbox holds."""
    return len(sotion_api.list_members(limit=100))


def dispute_won() -> JSONObject:
    """The dispute ping of the one-time sale, decided in the seller's favour."""
    return payload("dispute", resource_name="dispute_won", dispute_won="true")


def start_subscription(client: FlaskClient, queue: Queue, sotion_api: SotionClient) -> Member:
    """The first charge of the Pro subscription, applied; returns the paid member it made."""
    deliver(client, payload("sale_subscription_start"))
    drain(queue)
    member = member_of(sotion_api)
    assert member.paid is True
    return member


# -- one-time sales ---------------------------------------------------------------------


def test_sale_creates_a_paid_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, payload("sale_one_time"))
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"
    assert member.display_name == "Jane Buyer"


def test_refund_ends_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, payload("sale_one_time"))
    drain(queue)
    created = member_of(sotion_api)

    deliver(client, payload("refund"))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is False
    assert member.status == "active"


def test_partial_refund_keeps_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, payload("sale_one_time"))
    drain(queue)

    deliver(client, payload("refund", refunded="false"))
    drain(queue)

    assert member_of(sotion_api).paid is True


def test_dispute_blocks_the_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, payload("sale_one_time"))
    drain(queue)

    deliver(client, payload("dispute"))
    drain(queue)

    assert member_of(sotion_api).status == "blocked"


def test_won_dispute_unblocks_the_member_and_restores_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, payload("sale_one_time"))
    deliver(client, payload("dispute"))
    drain(queue)
    assert member_of(sotion_api).status == "blocked"

    deliver(client, dispute_won())
    drain(queue)

    member = member_of(sotion_api)
    assert member.status == "active"
    assert member.paid is True


def test_retried_ping_with_retry_count_is_applied_once(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    first = post(client, payload("sale_one_time"))
    retried = post(client, payload("sale_one_time", retry_count="1"))
    drain(queue)

    assert (first["queued"], first["duplicates"]) == (1, 0)
    assert (retried["queued"], retried["duplicates"]) == (0, 1)
    assert queue.finished_job_registry.count == 1
    assert count_members(sotion_api) == 1
    assert member_of(sotion_api).paid is True


# -- subscriptions ----------------------------------------------------------------------


def test_cancellation_keeps_access_until_the_subscription_ends(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    created = start_subscription(client, queue, sotion_api)

    deliver(client, payload("cancellation"))
    drain(queue)
    assert member_of(sotion_api).paid is True

    deliver(client, payload("subscription_ended_failed_payment"))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is False
    assert member.status == "active"


def test_restarted_subscription_grants_access_again(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    created = start_subscription(client, queue, sotion_api)
    deliver(client, payload("subscription_ended_failed_payment"))
    drain(queue)
    assert member_of(sotion_api).paid is False

    deliver(client, restarted())
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is True


def test_recurring_charge_is_a_new_event_that_keeps_the_member_paid(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    created = start_subscription(client, queue, sotion_api)

    deliver(client, payload("sale_recurring_charge"))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is True
    assert count_members(sotion_api) == 1
    assert queue.finished_job_registry.count == 2


def test_stale_recurring_charge_after_the_subscription_ended_does_not_grant_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    start_subscription(client, queue, sotion_api)
    deliver(client, payload("subscription_ended_failed_payment"))
    drain(queue)

    # Charged on 2026-02-05, delivered after the ending of 2026-03-12.
    deliver(client, payload("sale_recurring_charge"))
    drain(queue)

    assert member_of(sotion_api).paid is False


# -- confirmation through the Gumroad API -----------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log lines from the fake."""


class FakeGumroadAPI:
    """Gumroad's ``GET /v2/sales/:id`` on a real socket; unknown sales answer 404."""

    def __init__(self) -> None:
        self.sales: dict[str, tuple[int, JSONObject]] = {}
        self.subscribers: dict[str, tuple[int, JSONObject]] = {}
        self.outages = 0  # the next this many sale reads answer 503
        self.requests: list[tuple[str, str | None]] = []
        app = Flask("fake_gumroad")
        app.add_url_rule("/v2/sales/<sale_id>", view_func=self._sale)
        app.add_url_rule("/v2/subscribers/<subscription_id>", view_func=self._subscriber)
        self._server = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The API base, as GUMROAD_API_BASE would be set."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def answer(self, sale_id: str, status: int, body: JSONObject) -> None:
        """What ``GET /v2/sales/<sale_id>`` returns from now on."""
        self.sales[sale_id] = (status, body)

    def sale_is(self, sale_id: str, **fields: Any) -> None:
        """The sale exists, in this state."""
        sale = {"id": sale_id, "email": EMAIL, "refunded": False, "disputed": False, **fields}
        self.answer(sale_id, 200, {"success": True, "sale": sale})

    def subscriber_is(self, subscription_id: str, **fields: Any) -> None:
        """The subscription exists, in this state (Gumroad's subscriber object)."""
        subscriber = {"id": subscription_id, "user_email": EMAIL, "status": "alive", **fields}
        self.subscribers[subscription_id] = (200, {"success": True, "subscriber": subscriber})

    def _subscriber(self, subscription_id: str) -> Any:
        self.requests.append((subscription_id, request.headers.get("Authorization")))
        status, body = self.subscribers.get(
            subscription_id, (200, {"success": False, "message": "Subscriber not found."})
        )
        return jsonify(body), status

    def _sale(self, sale_id: str) -> Any:
        self.requests.append((sale_id, request.headers.get("Authorization")))
        if self.outages:
            self.outages -= 1
            return jsonify(success=False, message="busy"), 503
        status, body = self.sales.get(
            sale_id, (404, {"success": False, "message": "The sale was not found."})
        )
        return jsonify(body), status


@pytest.fixture
def gumroad_api() -> Iterator[FakeGumroadAPI]:
    """A fake Gumroad API that knows no sale yet."""
    fake = FakeGumroadAPI()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def api_runtime(
    settings: Settings,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
) -> worker_runtime.Runtime:
    """The worker runtime with GUMROAD_ACCESS_TOKEN set and pointed at the fake API."""
    with_token = dataclasses.replace(
        settings, gumroad_access_token=ACCESS_TOKEN, gumroad_api_base=gumroad_api.url
    )
    return worker_runtime.configure(with_token, redis_conn)


def test_sale_the_api_confirms_creates_a_paid_member(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    gumroad_api.sale_is(ONE_TIME_SALE)

    deliver(client, payload("sale_one_time"))
    drain(queue)

    assert member_of(sotion_api).paid is True
    assert gumroad_api.requests == [(ONE_TIME_SALE, f"Bearer {ACCESS_TOKEN}")]


@pytest.mark.parametrize(
    "state",
    [{"refunded": True}, {"chargedback": True}, {"disputed": True}],
    ids=["refunded", "charged-back", "disputed"],
)
def test_sale_the_api_says_was_reversed_grants_nothing(
    state: JSONObject,
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    gumroad_api.sale_is(ONE_TIME_SALE, **state)

    deliver(client, payload("sale_one_time"))
    drain(queue)

    member = sotion_api.find_member_by_email(EMAIL)
    assert member is None or member.paid is False
    assert gumroad_api.requests


@pytest.mark.parametrize("status", [404, 200], ids=["not-found", "success-false"])
def test_sale_the_api_does_not_know_grants_nothing_and_fails_with_a_reason(
    status: int,
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    gumroad_api.answer(
        ONE_TIME_SALE, status, {"success": False, "message": "The sale was not found."}
    )

    deliver(client, payload("sale_one_time"))
    drain(queue)

    assert sotion_api.find_member_by_email(EMAIL) is None
    (failed,) = failed_jobs(queue)
    assert f"status={status}" in failed.reason
    assert "The sale was not found." in failed.reason
    assert ACCESS_TOKEN not in failed.reason
    # Not retryable: one call, not one per retry.
    assert len(gumroad_api.requests) == 1


@pytest.mark.parametrize(
    ("ping", "sale", "code"),
    [
        pytest.param("sale_one_time", {"email": "other@example.com"}, "email", id="email"),
        pytest.param("sale_one_time", {"product_id": "not-this-one"}, "product", id="product"),
        pytest.param("sale_one_time", {"seller_id": "another-seller"}, "seller", id="seller"),
        pytest.param("refund", {}, "refund", id="refund-not-refunded"),
        pytest.param("dispute", {}, "dispute", id="dispute-not-disputed"),
    ],
)
def test_ping_gumroad_does_not_confirm_changes_nothing_and_fails_with_the_mismatch(
    ping: str,
    sale: JSONObject,
    code: str,
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    gumroad_api.sale_is(ONE_TIME_SALE)
    deliver(client, payload("sale_one_time"))
    drain(queue)
    before = member_of(sotion_api)
    gumroad_api.sale_is(ONE_TIME_SALE, **sale)

    if ping != "sale_one_time":
        deliver(client, payload(ping))
    else:
        deliver(client, payload(ping, sale_id="second-sale-id"))
        gumroad_api.sale_is("second-sale-id", **sale)
    drain(queue)

    after = member_of(sotion_api)
    assert (after.paid, after.blocked) == (before.paid, before.blocked) == (True, False)
    (failed,) = failed_jobs(queue)
    assert f"Gumroad ping refused ({code})" in failed.reason
    assert EMAIL not in failed.reason
    counted = redis_conn.hgetall("bridge:metrics")
    assert any(b"bridge_gumroad_refused" in key and code.encode() in key for key in counted)


def test_end_of_a_subscription_gumroad_reports_alive_is_refused(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    ended = payload("subscription_ended_failed_payment", user_email=EMAIL)
    for sale_id in ended["purchase_ids"]:
        gumroad_api.sale_is(sale_id)
    gumroad_api.subscriber_is(SUBSCRIPTION)
    sotion_api.create_member(EMAIL, paid=True)

    deliver(client, ended)
    drain(queue)

    assert member_of(sotion_api).paid is True
    (failed,) = failed_jobs(queue)
    assert "Gumroad ping refused (ended)" in failed.reason


def test_end_gumroad_confirms_ends_access(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    start = payload("sale_subscription_start")
    gumroad_api.sale_is(start["sale_id"])
    gumroad_api.subscriber_is(start["subscription_id"])
    deliver(client, start)
    drain(queue)
    assert member_of(sotion_api).paid is True

    ended = payload("subscription_ended_failed_payment", user_email=EMAIL)
    ended["subscription_id"] = start["subscription_id"]
    ended["purchase_ids"] = [start["sale_id"]]
    gumroad_api.subscriber_is(start["subscription_id"], status="failed_payment", ended_at="x")
    deliver(client, ended)
    drain(queue)

    assert member_of(sotion_api).paid is False
    assert failed_jobs(queue) == []


def test_gumroad_api_outage_is_retried_then_applied(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    gumroad_api: FakeGumroadAPI,
    sotion_api: SotionClient,
) -> None:
    gumroad_api.sale_is(ONE_TIME_SALE)
    gumroad_api.outages = 2

    deliver(client, payload("sale_one_time"))
    drain(queue)  # the test settings retry at once

    assert member_of(sotion_api).paid is True
    assert len(gumroad_api.requests) == 3 and failed_jobs(queue) == []


# -- one buyer, two providers -----------------------------------------------------------


def _lemonsqueezy_subscription(event_name: str, status: str, updated_at: str) -> JSONObject:
    payload = fixture("subscription_created")
    payload["meta"] = {"event_name": event_name, "test_mode": False}
    payload["data"]["attributes"].update(
        status=status, user_email=EMAIL, updated_at=updated_at, test_mode=False
    )
    return payload


def deliver_lemonsqueezy(client: FlaskClient, payload: JSONObject) -> None:
    """Sign and POST one Lemon Squeezy webhook; the bridge must queue it."""
    body = encode(payload)
    signature = hmac.new(LS_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = client.post(
        "/webhooks/lemonsqueezy",
        data=body,
        headers={"X-Signature": signature, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json is not None and response.json["queued"] == 1


@pytest.mark.parametrize("ends_first", ["lemonsqueezy", "gumroad"])
def test_buyer_of_both_providers_stays_paid_until_both_purchases_end(
    ends_first: str,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver_lemonsqueezy(
        client,
        _lemonsqueezy_subscription("subscription_created", "active", "2026-01-01T00:00:00Z"),
    )
    deliver(client, payload("sale_one_time"))
    drain(queue)
    created = member_of(sotion_api)
    assert created.paid is True

    def end_lemonsqueezy() -> None:
        deliver_lemonsqueezy(
            client,
            _lemonsqueezy_subscription("subscription_expired", "expired", "2026-02-01T00:00:00Z"),
        )

    def end_gumroad() -> None:
        deliver(client, payload("refund"))

    first, second = (
        (end_lemonsqueezy, end_gumroad)
        if ends_first == "lemonsqueezy"
        else (end_gumroad, end_lemonsqueezy)
    )
    first()
    drain(queue)
    assert member_of(sotion_api).paid is True

    second()
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is False
    assert count_members(sotion_api) == 1
