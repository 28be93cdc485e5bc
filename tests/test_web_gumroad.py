"""POST /webhooks/gumroad/<token> through the Flask client and real Redis (DESIGN §3, §5).

Gumroad signs nothing: the secret path segment is the credential, so it must never show
up in a response or in the log. Gumroad retries only 5xx (providers.md §3): a valid ping
answered with a 4xx is lost for good.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from werkzeug.test import TestResponse

from bridge.app import create_app
from bridge.providers import gumroad
from bridge.settings import Settings
from tests.gumroad_events import encode as form_body
from tests.test_providers_gumroad import FORM, SELLER, payload, plan_change, restarted

TOKEN = "tok_" + "x" * 32
URL = f"/webhooks/gumroad/{TOKEN}"
DEDUPE_PATTERN = "bridge:dedupe:*"
JSON = "application/json"
# Purchase fields Gumroad sends as numbers when the ping is JSON.
_NUMERIC_FIELDS = frozenset({"price", "gumroad_fee", "quantity", "order_number"})

JSONObject = dict[str, Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with Gumroad pings configured, seller check on, Stripe off."""
    return dataclasses.replace(
        settings,
        gumroad_webhook_token=TOKEN,
        gumroad_seller_id=SELLER,
        stripe_webhook_secrets=(),
    )


# -- bodies as Gumroad sends them ---------------------------------------------------------


def _typed(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _typed(k, v) for k, v in value.items()}
    if value in ("true", "false"):
        return value == "true"
    if key in _NUMERIC_FIELDS and isinstance(value, str) and value.isdigit():
        return int(value)
    if value == "":
        return None
    return value


def json_body(data: JSONObject) -> bytes:
    """``data`` as a JSON ping (``notification_content_type`` JSON): real booleans, numbers."""
    return json.dumps({key: _typed(key, value) for key, value in data.items()}).encode()


def post(
    client: FlaskClient, body: bytes, *, token: str = TOKEN, content_type: str = FORM
) -> TestResponse:
    """POST a ping to the ping URL with ``token`` as its secret segment."""
    return client.post(
        f"/webhooks/gumroad/{token}", data=body, headers={"Content-Type": content_type}
    )


def sale() -> JSONObject:
    """A one-time sale ping."""
    return payload("sale_one_time")


def every_resource() -> dict[str, JSONObject]:
    """One valid ping of each of Gumroad's eight resources."""
    return {
        "sale": payload("sale_one_time"),
        "refund": payload("refund"),
        "dispute": payload("dispute"),
        "dispute_won": payload("dispute", resource_name="dispute_won", dispute_won="true"),
        "cancellation": payload("cancellation"),
        "subscription_ended": payload("subscription_ended_failed_payment"),
        "subscription_restarted": restarted(),
        "subscription_updated": plan_change(),
    }


def assert_refused(
    response: TestResponse, status: int, code: str, queue: Queue, redis_conn: redis.Redis
) -> None:
    """A JSON error with this status and code, and nothing stored."""
    assert response.status_code == status
    assert response.is_json
    assert response.json is not None
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _app_with(settings: Settings, **changes: Any) -> Flask:
    return create_app(dataclasses.replace(settings, **changes))


# -- accepted pings -----------------------------------------------------------------------


def test_valid_sale_ping_is_queued_as_one_job(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    data = sale()
    response = post(client, form_body(data))
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 1, "duplicates": 0, "ignored": 0}
    (job,) = queue.jobs
    (expected,) = gumroad.parse(data, seller_id=SELLER)
    assert job.args[0] == expected.to_json()
    assert job.args[0]["email"] == "buyer@example.com"
    assert redis_conn.get(f"bridge:dedupe:{expected.dedupe_key}") == job.id.encode()


def test_redelivery_of_the_same_body_is_a_duplicate(client: FlaskClient, queue: Queue) -> None:
    body = form_body(sale())
    assert post(client, body).json == {"received": True, "queued": 1, "duplicates": 0, "ignored": 0}
    again = post(client, body)
    assert again.status_code == 200
    assert again.json == {"received": True, "queued": 0, "duplicates": 1, "ignored": 0}
    assert queue.count == 1


def test_json_ping_is_queued_as_the_same_event_as_its_form_twin(
    client: FlaskClient, queue: Queue
) -> None:
    response = post(client, json_body(sale()), content_type=f"{JSON}; charset=utf-8")
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    (job,) = queue.jobs
    (from_form,) = gumroad.parse(sale(), seller_id=SELLER)
    assert job.args[0] == from_form.to_json()
    twin = post(client, form_body(sale()))
    assert twin.json is not None and twin.json["duplicates"] == 1


def test_subscription_ping_without_seller_id_passes_the_seller_check(
    client: FlaskClient, queue: Queue
) -> None:
    data = payload("subscription_ended_failed_payment")
    assert "seller_id" not in data
    response = post(client, form_body(data))
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    (job,) = queue.jobs
    assert job.args[0]["event_type"] == "subscription_ended"


@pytest.mark.parametrize("encoding", ["form", "json"])
@pytest.mark.parametrize("resource", list(every_resource()))
def test_valid_ping_of_every_resource_is_never_answered_with_a_4xx(
    client: FlaskClient, queue: Queue, resource: str, encoding: str
) -> None:
    data = every_resource()[resource]
    body, content_type = (form_body(data), FORM) if encoding == "form" else (json_body(data), JSON)
    response = post(client, body, content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json is not None and response.json["queued"] == 1
    retried = post(client, form_body({**data, "retry_count": "1"}))
    assert retried.status_code == 200
    assert retried.json is not None and retried.json["duplicates"] == 1
    assert queue.count == 1


def test_settings_ping_without_resource_name_is_queued_as_a_sale(
    client: FlaskClient, queue: Queue
) -> None:
    response = post(client, form_body(payload("sale_one_time", resource_name=None)))
    assert response.status_code == 200
    (job,) = queue.jobs
    assert job.args[0]["event_type"] == "sale"


@pytest.mark.parametrize("seller_check", [True, False], ids=["seller-check", "no-seller-check"])
def test_unknown_resource_is_acknowledged_and_not_queued(
    settings: Settings, queue: Queue, redis_conn: redis.Redis, seller_check: bool
) -> None:
    seller = SELLER if seller_check else None
    client = _app_with(settings, gumroad_seller_id=seller).test_client()
    data = payload("sale_one_time", resource_name="affiliate_joined")
    if not seller_check:
        del data["seller_id"]
    response = post(client, form_body(data))
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 0, "duplicates": 0, "ignored": 0}
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def test_test_purchase_is_acknowledged_and_ignored_unless_accepted(
    settings: Settings, queue: Queue, redis_conn: redis.Redis
) -> None:
    client = _app_with(settings, accept_test_events=False).test_client()
    response = post(client, form_body(payload("sale_one_time", test="true")))
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 0, "duplicates": 0, "ignored": 1}
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def test_live_sale_is_queued_when_test_events_are_not_accepted(
    settings: Settings, queue: Queue
) -> None:
    client = _app_with(settings, accept_test_events=False).test_client()
    response = post(client, form_body(sale()))
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1


# -- refused pings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["tok_" + "y" * 32, TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "t%C3%B6k"],
    ids=["other", "prefix", "longer", "uppercase", "non-ascii"],
)
def test_wrong_token_is_refused_and_nothing_is_stored(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, token: str
) -> None:
    response = post(client, form_body(sale()), token=token)
    assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_ping_for_another_seller_is_forbidden(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = post(client, form_body(payload("sale_one_time", seller_id="someone-else==")))
    assert_refused(response, 403, "forbidden", queue, redis_conn)


def test_sale_without_seller_id_is_forbidden_when_the_seller_is_checked(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = post(client, form_body(payload("sale_one_time", seller_id=None)))
    assert_refused(response, 403, "forbidden", queue, redis_conn)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", FORM),
        (b"&&", FORM),
        (b"email=%FF%FE", FORM),
        (b"\xff\xfe=1", FORM),
        (b"card=x&card%5Bvisual%5D=y", FORM),
        (b"card%5Bvisual%5D=y&card=x", FORM),
        (b"email=a%40b.c&email=d%40e.f", FORM),
        (b"purchase_ids%5B%5D%5Bx%5D=1", FORM),
        (b"resource_name=sale&seller_id=kL0paVL2SdmJSYsNs-OCMg%3D%3D", FORM),
        (b"{", JSON),
        (b"[1, 2]", JSON),
        (b"", JSON),
    ],
    ids=[
        "empty",
        "no-fields",
        "percent-bytes-not-utf8",
        "raw-bytes-not-utf8",
        "scalar-then-nested",
        "nested-then-scalar",
        "repeated-field",
        "nested-in-a-list",
        "sale-without-sale-id",
        "json-truncated",
        "json-array",
        "json-empty",
    ],
)
def test_malformed_ping_is_refused_with_400_and_nothing_stored(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    body: bytes,
    content_type: str,
) -> None:
    response = post(client, body, content_type=content_type)
    assert_refused(response, 400, "invalid_payload", queue, redis_conn)


@pytest.mark.parametrize(
    "timestamp",
    [b"1" + b"0" * 400, b"NaN", b"Infinity", b"-Infinity"],
    ids=["int-too-large-for-a-float", "nan", "infinity", "minus-infinity"],
)
def test_ping_with_a_timestamp_that_cannot_be_ordered_is_a_400_never_a_500(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, timestamp: bytes
) -> None:
    body = json_body(sale()).replace(b'"2026-01-05T19:38:56Z"', timestamp)
    assert timestamp in body
    response = post(client, body, content_type=JSON)
    assert_refused(response, 400, "invalid_payload", queue, redis_conn)


def test_oversized_body_is_refused_with_413(
    settings: Settings, queue: Queue, redis_conn: redis.Redis
) -> None:
    client = _app_with(settings, max_body_bytes=1000).test_client()
    body = form_body({**sale(), "custom_fields": {"note": "x" * 2000}})
    response = post(client, body)
    assert_refused(response, 413, "request_entity_too_large", queue, redis_conn)


def test_gumroad_without_a_token_is_disabled(
    settings: Settings, queue: Queue, redis_conn: redis.Redis
) -> None:
    client = _app_with(settings, gumroad_webhook_token=None).test_client()
    response = post(client, form_body(sale()))
    assert_refused(response, 404, "not_found", queue, redis_conn)


def test_redis_down_is_a_503_so_gumroad_retries(settings: Settings) -> None:
    down = _app_with(settings, redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    response = post(down.test_client(), form_body(sale()))
    # Gumroad retries 499/500/502/503/504 only: anything else loses the ping.
    assert response.status_code == 503
    assert response.is_json
    assert response.json is not None
    assert response.json["error"]["code"] == "queue_unavailable"


# -- the token stays secret ---------------------------------------------------------------


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the app logged: formatted lines (with tracebacks) and raw messages."""
    messages = "\n".join(record.getMessage() for record in caplog.records)
    return caplog.text + "\n" + messages


def test_token_never_appears_in_the_log_or_in_a_response(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    responses = [
        post(client, form_body(sale())),
        post(client, form_body(sale())),
        post(client, form_body(payload("sale_one_time", seller_id="other=="))),
        post(client, form_body(payload("sale_one_time", resource_name="unknown_thing"))),
        post(client, form_body(payload("subscription_ended_failed_payment"))),
        post(client, b"card=x&card%5Bvisual%5D=y"),
        post(client, b"{", content_type=JSON),
        post(client, form_body(sale()), token=TOKEN + "x"),
        client.get(URL),
        client.put(URL, data=b"x"),
        client.get("/metrics"),
    ]
    assert {r.status_code for r in responses} >= {200, 400, 403, 405}
    assert caplog.records, "the app logged nothing: the check below would prove nothing"
    assert "/webhooks/gumroad/***" in caplog.text
    assert TOKEN not in _log_text(caplog)
    for response in responses:
        assert TOKEN.encode() not in response.get_data()
        assert TOKEN not in str(response.headers)


def test_token_stays_out_of_the_log_even_when_a_ping_fails_unexpectedly(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json_body(sale()).replace(b'"2026-01-05T19:38:56Z"', b"1" + b"0" * 400)
    response = post(client, body, content_type=JSON)
    assert TOKEN.encode() not in response.get_data()
    assert caplog.records
    assert TOKEN not in _log_text(caplog)
