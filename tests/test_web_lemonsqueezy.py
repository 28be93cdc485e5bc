"""POST /webhooks/lemonsqueezy through the Flask client and real Redis (DESIGN §3, §5)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import socket
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from werkzeug.test import TestResponse

from bridge.app import create_app
from bridge.events import MembershipEvent
from bridge.providers import lemonsqueezy
from bridge.settings import Settings
from tests.test_providers_lemonsqueezy import encode, fixture

URL = "/webhooks/lemonsqueezy"
SECRET = "ls_secret"
DEDUPE_PATTERN = "bridge:dedupe:*"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with Lemon Squeezy configured (and Stripe off)."""
    return dataclasses.replace(
        settings, lemonsqueezy_webhook_secrets=(SECRET,), stripe_webhook_secrets=()
    )


def sign(body: bytes, secret: str = SECRET) -> str:
    """The ``X-Signature`` Lemon Squeezy sends: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(
    client: FlaskClient,
    body: bytes,
    *,
    secret: str = SECRET,
    signature: str | None = None,
    event_name: str = "order_created",
) -> TestResponse:
    """POST a body the way Lemon Squeezy does (signed with ``secret`` unless given)."""
    return client.post(
        URL,
        data=body,
        headers={
            "X-Signature": sign(body, secret) if signature is None else signature,
            "X-Event-Name": event_name,
            "Content-Type": "application/json",
        },
    )


def order_body(**meta: Any) -> bytes:
    """The order_created example as Lemon Squeezy sends it, with ``meta`` fields added."""
    payload = fixture("order_created")
    payload["meta"].update(meta)
    return encode(payload)


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


# -- accepted deliveries ------------------------------------------------------------------


def test_signed_order_is_queued_as_one_job(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = order_body()
    response = post(client, body)
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 1, "duplicates": 0, "ignored": 0}
    (job,) = queue.jobs
    (expected,) = lemonsqueezy.parse(json.loads(body))
    assert job.args[0] == expected.to_json()
    assert job.args[0]["email"] == "dan@lemonsqueezy.com"
    assert job.args[0]["event_type"] == "order_created"
    assert redis_conn.get(f"bridge:dedupe:{expected.dedupe_key}") == job.id.encode()


def test_redelivery_of_the_same_body_is_a_duplicate(client: FlaskClient, queue: Queue) -> None:
    body = order_body()
    assert post(client, body).json == {"received": True, "queued": 1, "duplicates": 0, "ignored": 0}
    again = post(client, body)
    assert again.status_code == 200
    assert again.json == {"received": True, "queued": 0, "duplicates": 1, "ignored": 0}
    assert queue.count == 1


def test_uppercase_hex_signature_is_the_same_signature(client: FlaskClient, queue: Queue) -> None:
    body = order_body()
    response = post(client, body, signature=sign(body).upper())
    assert response.status_code == 200
    assert queue.count == 1


def test_old_secret_still_verifies_during_rotation(
    settings: Settings, redis_conn: redis.Redis, queue: Queue
) -> None:
    client = _app_with(settings, lemonsqueezy_webhook_secrets=("ls_new", SECRET)).test_client()
    old = post(client, order_body(), secret=SECRET)
    new = post(client, encode(fixture("subscription_created")), secret="ls_new")
    neither = post(client, encode(fixture("subscription_expired")), secret="ls_third")
    assert (old.status_code, new.status_code, neither.status_code) == (200, 200, 400)
    assert queue.count == 2


def test_irrelevant_event_is_acknowledged_and_not_queued(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    payload = {
        "meta": {"event_name": "license_key_created"},
        "data": {
            "type": "license-keys",
            "id": "7",
            "attributes": {
                "order_id": 1,
                "user_email": "dan@lemonsqueezy.com",
                "key": "80e15db5-c796-436b-850c-8f9c98a48abe",
                "status": "inactive",
                "created_at": "2023-01-17T12:26:23.000000Z",
                "updated_at": "2023-01-17T12:26:23.000000Z",
            },
        },
    }
    response = post(client, encode(payload), event_name="license_key_created")
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 0, "duplicates": 0, "ignored": 0}
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def test_test_mode_event_is_acknowledged_and_ignored_unless_accepted(
    settings: Settings, redis_conn: redis.Redis, queue: Queue
) -> None:
    client = _app_with(settings, accept_test_events=False).test_client()
    response = post(client, order_body(test_mode=True))
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 0, "duplicates": 0, "ignored": 1}
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def test_live_event_is_queued_when_test_events_are_not_accepted(
    settings: Settings, redis_conn: redis.Redis, queue: Queue
) -> None:
    client = _app_with(settings, accept_test_events=False).test_client()
    response = post(client, order_body(test_mode=False))
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    (job,) = queue.jobs
    assert MembershipEvent.from_json(job.args[0]).test_mode is False


# -- refused deliveries -------------------------------------------------------------------


def test_signature_made_with_another_secret_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = post(client, order_body(), secret="someone_else")
    assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_tampered_body_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = order_body()
    tampered = body.replace(b"dan@lemonsqueezy.com", b"thief@example.com")
    assert tampered != body
    response = post(client, tampered, signature=sign(body))
    assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_missing_signature_header_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = client.post(URL, data=order_body(), headers={"Content-Type": "application/json"})
    assert_refused(response, 400, "invalid_signature", queue, redis_conn)


@pytest.mark.parametrize(
    "signature",
    ["", "abc", "g" * 64, "sha256=" + "0" * 64, "0" * 63, "é" * 64],
    ids=["empty", "short", "not-hex", "prefixed", "63-digits", "non-ascii"],
)
def test_malformed_signature_header_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, signature: str
) -> None:
    response = post(client, order_body(), signature=signature)
    assert_refused(response, 400, "invalid_signature", queue, redis_conn)


@pytest.mark.parametrize(
    "body",
    [
        b"this is not json",
        b"",
        b'{"meta": {"event_name": "order_created"}',
        b"[1, 2, 3]",
        b'{"meta": {"event_name": "order_created"}}',
        b'{"meta": {}, "data": {"type": "orders", "id": "1", "attributes": {}}}',
    ],
    ids=["text", "empty", "truncated", "array", "no-data", "no-event-name"],
)
def test_signed_body_that_is_not_a_webhook_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, body: bytes
) -> None:
    response = post(client, body)
    assert_refused(response, 400, "invalid_payload", queue, redis_conn)


def test_signed_event_of_an_unexpected_shape_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    payload = fixture("subscription_created")
    payload["data"]["type"] = "orders"
    response = post(client, encode(payload), event_name="subscription_created")
    assert_refused(response, 400, "invalid_payload", queue, redis_conn)


@pytest.mark.parametrize(
    "timestamp",
    [b"1" + b"0" * 400, b"NaN", b"Infinity"],
    ids=["int-too-large-for-a-float", "nan", "infinity"],
)
def test_signed_event_with_a_timestamp_that_cannot_be_ordered_is_a_400_never_a_500(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, timestamp: bytes
) -> None:
    body = order_body().replace(b'"2023-01-17T12:26:23.000000Z"', timestamp)
    assert timestamp in body
    response = post(client, body)
    assert_refused(response, 400, "invalid_payload", queue, redis_conn)


def test_oversized_body_is_refused_with_413(
    settings: Settings, queue: Queue, redis_conn: redis.Redis
) -> None:
    client = _app_with(settings, max_body_bytes=1000).test_client()
    body = order_body(custom_data={"note": "x" * 2000})
    response = post(client, body)
    assert_refused(response, 413, "request_entity_too_large", queue, redis_conn)


def test_lemonsqueezy_without_a_secret_is_disabled(
    settings: Settings, queue: Queue, redis_conn: redis.Redis
) -> None:
    client = _app_with(settings, lemonsqueezy_webhook_secrets=()).test_client()
    response = post(client, order_body())
    assert_refused(response, 404, "not_found", queue, redis_conn)


def test_redis_down_is_a_503_so_lemon_squeezy_retries(settings: Settings) -> None:
    down = _app_with(settings, redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    response = post(down.test_client(), order_body())
    assert response.status_code == 503
    assert response.is_json
    assert response.json is not None
    assert response.json["error"]["code"] == "queue_unavailable"
    assert response.headers.get("Retry-After", "").isdigit()


def test_responses_never_contain_the_signing_secret(client: FlaskClient) -> None:
    body = order_body()
    responses = [
        post(client, body),
        post(client, body),
        post(client, body, secret="other"),
        post(client, body, signature=SECRET),
        post(client, b"not json"),
        client.get(URL),
        client.get("/metrics"),
    ]
    assert {r.status_code for r in responses} >= {200, 400, 405}
    for response in responses:
        assert SECRET.encode() not in response.get_data()
        assert SECRET not in str(response.headers)
