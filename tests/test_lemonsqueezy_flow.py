"""Lemon Squeezy end to end: signed webhook → intake → RQ job → worker → Sotion sandbox.

One test per case of DESIGN §4's Lemon Squeezy row, plus ordering, purchase folding and
the fresh-state read of §4. Every test asserts the member as the sandbox has it at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from flask import Flask, abort, jsonify, request
from flask.testing import FlaskClient
from rq import Queue
from werkzeug.serving import WSGIRequestHandler, make_server

from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from tests.conftest import drain
from tests.test_providers_lemonsqueezy import encode, fixture
from workers import runtime as worker_runtime

SECRET = "ls_secret"
EMAIL = "buyer@example.com"
SUBSCRIPTION_ID = "41"
ORDER_ID = "900"
# Unix time of the first event of each story; later events add seconds.
T0 = 1_760_000_000

JSONObject = dict[str, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with Lemon Squeezy configured (and Stripe off)."""
    return dataclasses.replace(
        settings, lemonsqueezy_webhook_secrets=(SECRET,), stripe_webhook_secrets=()
    )


# -- building Lemon Squeezy webhooks from the fixtures ----------------------------------


def at(offset: int) -> str:
    """A Lemon Squeezy timestamp ``offset`` seconds after T0."""
    return datetime.fromtimestamp(T0 + offset, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def _webhook(base: str, event_name: str, object_id: str, attributes: JSONObject) -> JSONObject:
    payload = fixture(base)
    payload["meta"] = {"event_name": event_name, "test_mode": False}
    payload["data"]["id"] = object_id
    payload["data"]["attributes"].update(attributes, test_mode=False)
    return payload


def order(
    event_name: str = "order_created",
    status: str = "paid",
    *,
    updated_at: int = 0,
    order_id: str = ORDER_ID,
    email: str = EMAIL,
) -> JSONObject:
    """An Order webhook in this status."""
    return _webhook(
        "order_created",
        event_name,
        order_id,
        {"status": status, "user_email": email, "created_at": at(0), "updated_at": at(updated_at)},
    )


def subscription(
    event_name: str,
    status: str,
    *,
    updated_at: int,
    pause_mode: str | None = None,
    email: str = EMAIL,
    order_id: str = ORDER_ID,
    custom_data: JSONObject | None = None,
) -> JSONObject:
    """A Subscription webhook in this status (``pause_mode`` for a paused one)."""
    payload = _webhook(
        "subscription_created",
        event_name,
        SUBSCRIPTION_ID,
        {
            "status": status,
            "pause": {"mode": pause_mode, "resumes_at": None} if pause_mode else None,
            "user_email": email,
            "order_id": int(order_id),
            "created_at": at(0),
            "updated_at": at(updated_at),
        },
    )
    if custom_data is not None:
        payload["meta"]["custom_data"] = custom_data
    return payload


def invoice(
    event_name: str = "subscription_payment_success",
    status: str = "paid",
    *,
    updated_at: int,
    email: str = EMAIL,
    invoice_id: str = "7001",
) -> JSONObject:
    """A Subscription invoice webhook (renewal payments)."""
    return _webhook(
        "subscription_payment_refunded",
        event_name,
        invoice_id,
        {
            "subscription_id": int(SUBSCRIPTION_ID),
            "status": status,
            "refunded": status == "refunded",
            "billing_reason": "renewal",
            "user_email": email,
            "created_at": at(updated_at),
            "updated_at": at(updated_at),
        },
    )


# -- delivering and observing -----------------------------------------------------------


def deliver(client: FlaskClient, payload: JSONObject) -> None:
    """Sign and POST one webhook the way Lemon Squeezy does; the bridge must queue it."""
    body = encode(payload)
    response = client.post(
        "/webhooks/lemonsqueezy",
        data=body,
        headers={
            "X-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            "X-Event-Name": payload["meta"]["event_name"],
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json is not None and response.json["queued"] == 1, response.json


def member_of(sotion_api: SotionClient, email: str = EMAIL) -> Member:
    """The member Sotion has for this email (fails when there is none)."""
    found = sotion_api.find_member_by_email(email)
    assert found is not None, f"no Sotion member for {email}"
    return found


def start_subscription(client: FlaskClient, queue: Queue, sotion_api: SotionClient) -> Member:
    """An active subscription at T0, applied; returns the paid member it made."""
    deliver(client, subscription("subscription_created", "active", updated_at=0))
    drain(queue)
    member = member_of(sotion_api)
    assert member.paid is True
    return member


# -- orders -----------------------------------------------------------------------------


def test_paid_order_creates_a_paid_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, order())
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"


def test_pending_order_creates_no_member(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, order(status="pending"))
    drain(queue)

    assert sotion_api.find_member_by_email(EMAIL) is None


def test_full_refund_of_an_order_ends_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, order())
    drain(queue)
    created = member_of(sotion_api)
    assert created.paid is True

    deliver(client, order("order_refunded", "refunded", updated_at=100))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is False
    assert member.status == "active"


def test_partial_refund_of_an_order_keeps_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, order())
    drain(queue)

    deliver(client, order("order_refunded", "partial_refund", updated_at=100))
    drain(queue)

    assert member_of(sotion_api).paid is True


# -- subscriptions ----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["on_trial", "active"])
def test_new_subscription_on_trial_or_active_creates_a_paid_member(
    status: str,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, subscription("subscription_created", status, updated_at=0))
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"


@pytest.mark.parametrize(
    ("event_name", "status", "pause_mode"),
    [
        ("subscription_cancelled", "cancelled", None),
        ("subscription_updated", "past_due", None),
        ("subscription_paused", "paused", "free"),
        ("subscription_payment_failed", "pending", None),
    ],
    ids=["cancelled-grace", "past-due-grace", "paused-free", "payment-failed"],
)
def test_subscription_change_that_keeps_access_leaves_the_member_paid(
    event_name: str,
    status: str,
    pause_mode: str | None,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    created = start_subscription(client, queue, sotion_api)

    if event_name == "subscription_payment_failed":
        deliver(client, invoice(event_name, status, updated_at=100))
    else:
        deliver(client, subscription(event_name, status, updated_at=100, pause_mode=pause_mode))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is True


@pytest.mark.parametrize(
    ("event_name", "status", "pause_mode"),
    [
        ("subscription_expired", "expired", None),
        ("subscription_updated", "unpaid", None),
        ("subscription_paused", "paused", "void"),
    ],
    ids=["expired", "unpaid", "paused-void"],
)
def test_subscription_change_that_ends_access_makes_the_member_unpaid(
    event_name: str,
    status: str,
    pause_mode: str | None,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    created = start_subscription(client, queue, sotion_api)

    deliver(client, subscription(event_name, status, updated_at=100, pause_mode=pause_mode))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is False
    assert member.status == "active"


def test_cancelled_subscription_ends_access_only_when_it_expires(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    start_subscription(client, queue, sotion_api)
    deliver(client, subscription("subscription_cancelled", "cancelled", updated_at=100))
    drain(queue)
    assert member_of(sotion_api).paid is True

    deliver(client, subscription("subscription_expired", "expired", updated_at=200))
    drain(queue)

    assert member_of(sotion_api).paid is False


def test_payment_success_after_expiry_with_a_newer_time_grants_access_again(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    created = start_subscription(client, queue, sotion_api)
    deliver(client, subscription("subscription_expired", "expired", updated_at=100))
    drain(queue)
    assert member_of(sotion_api).paid is False

    deliver(client, invoice(updated_at=200))
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == created.id
    assert member.paid is True


def test_resumed_subscription_grants_access_again(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    start_subscription(client, queue, sotion_api)
    deliver(
        client, subscription("subscription_paused", "paused", updated_at=100, pause_mode="void")
    )
    drain(queue)
    assert member_of(sotion_api).paid is False

    deliver(client, subscription("subscription_unpaused", "active", updated_at=200))
    drain(queue)

    assert member_of(sotion_api).paid is True


# -- one purchase, two objects ----------------------------------------------------------


@pytest.mark.parametrize("order_first", [True, False], ids=["order-first", "subscription-first"])
def test_order_of_a_subscription_is_folded_into_it_and_ends_with_it(
    order_first: bool,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # Lemon Squeezy sends order_created alongside subscription_created for one checkout;
    # the subscription's order_id names the order. Only the subscription decides access.
    paid_order = ("order", order(updated_at=1))
    created = ("subscription", subscription("subscription_created", "active", updated_at=2))
    for _, payload in (paid_order, created) if order_first else (created, paid_order):
        deliver(client, payload)
        drain(queue)
    assert member_of(sotion_api).paid is True

    deliver(client, subscription("subscription_expired", "expired", updated_at=100))
    drain(queue)

    assert member_of(sotion_api).paid is False


def test_unrelated_one_time_order_keeps_access_after_the_subscription_expires(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    deliver(client, order(updated_at=1, order_id="555"))
    deliver(client, subscription("subscription_created", "active", updated_at=2))
    drain(queue)

    deliver(client, subscription("subscription_expired", "expired", updated_at=100))
    drain(queue)

    assert member_of(sotion_api).paid is True


# -- whose member? ----------------------------------------------------------------------


def test_sotion_email_from_custom_data_owns_the_subscription_and_its_renewals(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    login = "member@site.example"
    deliver(
        client,
        subscription(
            "subscription_created",
            "active",
            updated_at=0,
            custom_data={"sotion_email": "Member@Site.example"},
        ),
    )
    drain(queue)
    created = member_of(sotion_api, login)
    assert created.paid is True
    assert sotion_api.find_member_by_email(EMAIL) is None

    # The expiry and the renewal carry only the buyer's user_email.
    deliver(client, subscription("subscription_expired", "expired", updated_at=100))
    drain(queue)
    assert member_of(sotion_api, login).paid is False
    deliver(client, invoice(updated_at=200))
    drain(queue)

    member = member_of(sotion_api, login)
    assert member.id == created.id
    assert member.paid is True
    assert sotion_api.find_member_by_email(EMAIL) is None
    assert len(sotion_api.list_members(limit=100)) == 1


# -- order of delivery ------------------------------------------------------------------


def test_expiry_delivered_before_an_older_active_update_ends_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    start_subscription(client, queue, sotion_api)

    deliver(client, subscription("subscription_expired", "expired", updated_at=200))
    deliver(client, subscription("subscription_updated", "active", updated_at=100))
    drain(queue)

    assert member_of(sotion_api).paid is False


def test_stale_order_created_after_the_subscription_expired_does_not_grant_access(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    start_subscription(client, queue, sotion_api)
    deliver(client, subscription("subscription_expired", "expired", updated_at=200))
    drain(queue)

    deliver(client, order(updated_at=1))
    drain(queue)

    assert member_of(sotion_api).paid is False


# -- fresh state from the API -----------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log lines from the fake."""


class FakeLemonSqueezyAPI:
    """Lemon Squeezy's subscription and order reads on a real socket (GET /v1/...)."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, JSONObject] = {}
        self.orders: dict[str, JSONObject] = {}
        self.requests: list[tuple[str, str | None]] = []
        app = Flask("fake_lemonsqueezy")
        app.add_url_rule("/v1/subscriptions/<object_id>", view_func=self._subscription)
        app.add_url_rule("/v1/orders/<object_id>", view_func=self._order)
        self._server = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The API base, as LEMONSQUEEZY_API_BASE would be set."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        """Serve from a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _subscription(self, object_id: str) -> Any:
        return self._read("subscriptions", object_id, self.subscriptions)

    def _order(self, object_id: str) -> Any:
        return self._read("orders", object_id, self.orders)

    def _read(self, kind: str, object_id: str, known: dict[str, JSONObject]) -> Any:
        self.requests.append((f"{kind}/{object_id}", request.headers.get("Authorization")))
        found = known.get(object_id) or abort(404)
        return jsonify(data={"type": kind, "id": object_id, "attributes": found})


@pytest.fixture
def lemonsqueezy_api() -> Iterator[FakeLemonSqueezyAPI]:
    """A fake Lemon Squeezy API that knows the subscription, active."""
    fake = FakeLemonSqueezyAPI()
    fake.subscriptions[SUBSCRIPTION_ID] = subscription(
        "subscription_created", "active", updated_at=0
    )["data"]["attributes"]
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def api_runtime(
    settings: Settings,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    lemonsqueezy_api: FakeLemonSqueezyAPI,
) -> worker_runtime.Runtime:
    """The worker runtime with LEMONSQUEEZY_API_KEY set and pointed at the fake API."""
    with_key = dataclasses.replace(
        settings, lemonsqueezy_api_key="ls_api_key", lemonsqueezy_api_base=lemonsqueezy_api.url
    )
    return worker_runtime.configure(with_key, redis_conn)


def test_current_subscription_status_from_the_api_wins_over_the_payload(
    client: FlaskClient,
    queue: Queue,
    api_runtime: worker_runtime.Runtime,
    lemonsqueezy_api: FakeLemonSqueezyAPI,
    sotion_api: SotionClient,
) -> None:
    start_subscription(client, queue, sotion_api)

    # Expired since; a late update still says "active".
    lemonsqueezy_api.subscriptions[SUBSCRIPTION_ID]["status"] = "expired"
    deliver(client, subscription("subscription_updated", "active", updated_at=100))
    drain(queue)

    assert member_of(sotion_api).paid is False
    assert lemonsqueezy_api.requests == [
        (f"subscriptions/{SUBSCRIPTION_ID}", "Bearer ls_api_key"),
        (f"subscriptions/{SUBSCRIPTION_ID}", "Bearer ls_api_key"),
    ]


def test_order_refunded_before_its_subscription_is_known_stays_refunded(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # The order is paid and then fully refunded before subscription_created (which ties
    # the order to its subscription) arrives with an older snapshot: folding the order
    # into the subscription keeps the newer state, the refund.
    order = fixture("order_created")
    refunded = fixture("order_refunded")
    subscription = fixture("subscription_created")
    order_id = str(order["data"]["id"])
    subscription["data"]["attributes"]["order_id"] = int(order_id)
    subscription["data"]["attributes"]["status"] = "active"
    subscription["data"]["attributes"]["user_email"] = order["data"]["attributes"]["user_email"]
    subscription["data"]["attributes"]["updated_at"] = "2023-01-17T12:26:30.000000Z"
    refunded["data"]["id"] = order["data"]["id"]
    refunded["data"]["attributes"]["updated_at"] = "2023-01-17T13:00:00.000000Z"
    for body in (order, refunded, subscription):
        deliver(client, body)
    drain(queue)
    member = sotion_api.find_member_by_email(order["data"]["attributes"]["user_email"])
    assert member is not None
    assert member.paid is False
