"""POST /webhooks/stripe and the operational routes, through the Flask client and real Redis."""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from werkzeug.test import TestResponse

from bridge.app import create_app
from bridge.events import MembershipEvent
from bridge.providers import stripe
from bridge.settings import Settings
from tests.conftest import STRIPE_SECRET, drain
from tests.job_states import fail_for_good
from tests.stripe_events import encode, event, fixture, sign
from workers import runtime as worker_runtime

URL = "/webhooks/stripe"
PAYMENT = "checkout_session_completed_payment"
DEDUPE_PATTERN = "bridge:dedupe:*"


def _post(
    client: FlaskClient,
    body: bytes,
    *,
    secret: str = STRIPE_SECRET,
    timestamp: int | None = None,
    header: str | None = None,
) -> TestResponse:
    signature = sign(body, secret, timestamp=timestamp) if header is None else header
    return client.post(
        URL,
        data=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


def _expected_job_payload(body: bytes) -> dict[str, Any]:
    (expected,) = stripe.parse(json.loads(body))
    return expected.to_json()


def _assert_refused(
    response: TestResponse, status: int, code: str, queue: Queue, redis_conn: redis.Redis
) -> None:
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


@pytest.fixture
def redis_down_app(settings: Settings) -> Flask:
    """The bridge pointed at a Redis that refuses connections."""
    return create_app(
        dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    )


# -- accepted deliveries ------------------------------------------------------------------


def test_signed_relevant_event_is_queued_as_one_job(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = encode(fixture(PAYMENT))
    response = _post(client, body)
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 1, "duplicates": 0, "ignored": 0}
    assert queue.count == 1
    (job,) = queue.jobs
    assert job.args[0] == _expected_job_payload(body)
    assert job.args[0]["event_id"] == "evt_1Rp92IE2YllEOQrty5bxSwY3"
    assert redis_conn.get("bridge:dedupe:stripe:evt_1Rp92IE2YllEOQrty5bxSwY3") == job.id.encode()


def test_duplicate_delivery_enqueues_one_job(client: FlaskClient, queue: Queue) -> None:
    body = encode(fixture(PAYMENT))
    assert _post(client, body).json == {
        "received": True,
        "queued": 1,
        "duplicates": 0,
        "ignored": 0,
    }
    again = _post(client, body)
    assert again.status_code == 200
    assert again.json == {"received": True, "queued": 0, "duplicates": 1, "ignored": 0}
    assert queue.count == 1


def test_redelivery_while_the_first_job_is_queued_is_a_duplicate(
    client: FlaskClient, queue: Queue
) -> None:
    body = encode(fixture("customer_subscription_created"))
    first = _post(client, body)
    assert first.json is not None and first.json["queued"] == 1
    (job_id,) = queue.job_ids
    second = _post(client, body, timestamp=int(time.time()) + 5)
    assert second.status_code == 200
    assert second.json is not None and second.json["duplicates"] == 1
    assert queue.job_ids == [job_id]


def test_same_event_from_eight_threads_at_once_enqueues_one_job(app: Flask, queue: Queue) -> None:
    body = encode(fixture(PAYMENT))
    header = sign(body, STRIPE_SECRET)
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    queued: list[int] = []
    lock = threading.Lock()

    def deliver() -> None:
        local = app.test_client()
        barrier.wait()
        response = _post(local, body, header=header)
        with lock:
            statuses.append(response.status_code)
            queued.append((response.json or {}).get("queued", -1))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * 8
    assert sorted(queued) == [0] * 7 + [1]
    assert queue.count == 1


def test_redelivery_of_an_event_whose_job_failed_for_good_is_queued_again(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = encode(fixture(PAYMENT))
    assert _post(client, body).status_code == 200
    (old_id,) = queue.job_ids
    fail_for_good(queue, old_id)
    assert queue.failed_job_registry.get_job_ids() == [old_id]
    response = _post(client, body)
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    (new_id,) = queue.job_ids
    assert new_id != old_id
    assert queue.failed_job_registry.get_job_ids() == []
    assert queue.fetch_job(old_id) is None


@pytest.fixture
def revoked_key_worker(settings: Settings, redis_conn: redis.Redis) -> Iterator[None]:
    """Jobs run against the sandbox with a key it does not know (a permanent 401)."""
    worker_runtime.configure(dataclasses.replace(settings, sotion_api_key="so_revoked"), redis_conn)
    yield
    worker_runtime.reset()


def test_redelivery_after_a_worker_failed_the_job_is_queued_again(
    client: FlaskClient, queue: Queue, revoked_key_worker: None
) -> None:
    body = encode(fixture(PAYMENT))
    assert _post(client, body).status_code == 200
    (old_id,) = queue.job_ids
    drain(queue)
    assert queue.failed_job_registry.get_job_ids() == [old_id]
    response = _post(client, body)
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    assert queue.count == 1
    assert queue.job_ids != [old_id]
    assert queue.failed_job_registry.get_job_ids() == []


def test_irrelevant_event_is_acknowledged_and_not_queued(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = encode(event("customer.created", {"id": "cus_1", "object": "customer"}))
    response = _post(client, body)
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 0, "duplicates": 0, "ignored": 0}
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def test_thin_event_is_acknowledged_and_not_queued(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    thin = {
        "id": "evt_test_65R9Ijk8G1ejWr2WlNz16RhCyEDFSQFqW8Kc4HBdHp4",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "livemode": False,
        "created": "2024-09-17T06:20:52.246Z",
        "related_object": {"id": "mtr_1", "type": "billing.meter", "url": "/v1/billing/meters/1"},
    }
    response = _post(client, encode(thin))
    assert response.status_code == 200
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


@pytest.fixture
def live_only_client(settings: Settings, redis_conn: redis.Redis) -> FlaskClient:
    """A bridge that acknowledges test-mode events without applying them (the default)."""
    return create_app(dataclasses.replace(settings, accept_test_events=False)).test_client()


def test_test_mode_event_is_ignored_unless_test_events_are_accepted(
    live_only_client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = encode(fixture(PAYMENT))
    response = _post(live_only_client, body)
    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 0, "duplicates": 0, "ignored": 1}
    assert queue.count == 0
    assert redis_conn.keys(DEDUPE_PATTERN) == []


def test_live_event_is_queued_when_test_events_are_not_accepted(
    live_only_client: FlaskClient, queue: Queue
) -> None:
    payload = fixture(PAYMENT)
    payload["livemode"] = True
    response = _post(live_only_client, encode(payload))
    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    assert queue.count == 1
    (job,) = queue.jobs
    assert MembershipEvent.from_json(job.args[0]).test_mode is False


def test_old_secret_still_verifies_during_rotation(
    settings: Settings, redis_conn: redis.Redis, queue: Queue
) -> None:
    rotated = dataclasses.replace(
        settings, stripe_webhook_secrets=("whsec_new_secret", STRIPE_SECRET)
    )
    client = create_app(rotated).test_client()
    old = _post(client, encode(fixture(PAYMENT)), secret=STRIPE_SECRET)
    new = _post(client, encode(fixture("customer_subscription_created")), secret="whsec_new_secret")
    neither = _post(client, encode(fixture("charge_dispute_created")), secret="whsec_third")
    assert old.status_code == 200
    assert new.status_code == 200
    assert neither.status_code == 400
    assert queue.count == 2


# -- refused deliveries -------------------------------------------------------------------


def test_tampered_body_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = encode(fixture(PAYMENT))
    header = sign(body, STRIPE_SECRET)
    tampered = body.replace(b"buyer@example.com", b"thief@example.com")
    response = _post(client, tampered, header=header)
    _assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_wrong_secret_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = _post(client, encode(fixture(PAYMENT)), secret="whsec_someone_else")
    _assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_stale_stripe_timestamp_is_rejected(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    stale = int(time.time()) - stripe.TOLERANCE_SECONDS - 60
    response = _post(client, encode(fixture(PAYMENT)), timestamp=stale)
    _assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_old_signature_cannot_be_replayed_behind_a_fresh_timestamp(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = encode(fixture(PAYMENT))
    captured = sign(body, STRIPE_SECRET, timestamp=int(time.time()) - 3600)
    header = f"v0=x, t={int(time.time())},{captured}"
    response = _post(client, body, header=header)
    _assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_missing_signature_header_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = client.post(URL, data=encode(fixture(PAYMENT)))
    _assert_refused(response, 400, "invalid_signature", queue, redis_conn)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=abc",
        "t=soon,v1=abc",
        "t=1700000000",
        "t=1700000000,v1=\u00e9\u00e9",
    ],
)
def test_malformed_signature_header_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, header: str
) -> None:
    response = _post(client, encode(fixture(PAYMENT)), header=header)
    _assert_refused(response, 400, "invalid_signature", queue, redis_conn)


def test_signed_body_that_is_not_json_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    response = _post(client, b"this is not json")
    _assert_refused(response, 400, "invalid_payload", queue, redis_conn)


@pytest.mark.parametrize(
    "payload",
    [
        [{"id": "evt_1"}],
        {"hello": "world"},
        {"id": "evt_1", "type": "charge.refunded", "created": 1, "data": {"object": "ch_1"}},
    ],
)
def test_signed_json_that_is_not_an_event_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis, payload: Any
) -> None:
    response = _post(client, json.dumps(payload).encode())
    _assert_refused(response, 400, "invalid_payload", queue, redis_conn)


def test_signed_event_of_an_unexpected_shape_is_refused(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    payload = fixture(PAYMENT)
    payload["data"]["object"]["customer_details"] = "buyer@example.com"
    response = _post(client, encode(payload))
    _assert_refused(response, 400, "invalid_payload", queue, redis_conn)


@pytest.fixture
def small_app(settings: Settings, redis_conn: redis.Redis) -> Flask:
    """A bridge accepting bodies of at most 1000 bytes."""
    return create_app(dataclasses.replace(settings, max_body_bytes=1000))


def _oversized_body() -> bytes:
    payload = event("customer.created", {"id": "cus_1", "object": "customer", "note": "x" * 2000})
    body = encode(payload)
    assert len(body) > 2000
    return body


def test_oversized_body_is_refused_with_413(
    small_app: Flask, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = _oversized_body()
    response = _post(small_app.test_client(), body)
    _assert_refused(response, 413, "request_entity_too_large", queue, redis_conn)


def test_oversized_chunked_body_without_length_is_refused_with_413(
    small_app: Flask, queue: Queue, redis_conn: redis.Redis
) -> None:
    body = _oversized_body()
    response = small_app.test_client().post(
        URL,
        input_stream=io.BytesIO(body),
        headers={"Stripe-Signature": sign(body, STRIPE_SECRET), "Transfer-Encoding": "chunked"},
        # What gunicorn sets for a chunked request: the stream ends where the body ends.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.request.environ.get("HTTP_TRANSFER_ENCODING") == "chunked"
    _assert_refused(response, 413, "request_entity_too_large", queue, redis_conn)


def test_stripe_without_a_secret_is_disabled(
    settings: Settings, redis_conn: redis.Redis, queue: Queue
) -> None:
    client = create_app(dataclasses.replace(settings, stripe_webhook_secrets=())).test_client()
    response = _post(client, encode(fixture(PAYMENT)))
    _assert_refused(response, 404, "not_found", queue, redis_conn)


def test_get_on_the_webhook_route_is_a_json_405(client: FlaskClient) -> None:
    response = client.get(URL)
    assert response.status_code == 405
    assert response.is_json
    assert response.json is not None
    assert response.json["error"]["code"] == "method_not_allowed"


def test_405_names_the_allowed_method(client: FlaskClient) -> None:
    response = client.get(URL)
    assert response.status_code == 405
    assert "POST" in response.headers.get("Allow", "")


def test_unknown_route_is_a_json_404(client: FlaskClient) -> None:
    response = client.post("/webhooks/paypal", data=b"{}")
    assert response.status_code == 404
    assert response.is_json
    assert response.json is not None
    assert response.json["error"]["code"] == "not_found"


def test_responses_never_contain_the_signing_secret(client: FlaskClient) -> None:
    body = encode(fixture(PAYMENT))
    responses = [
        _post(client, body),
        _post(client, body),
        _post(client, body, secret="whsec_other"),
        _post(client, body + b" ", header=sign(body, STRIPE_SECRET)),
        _post(client, body, header="t=1,v1=" + STRIPE_SECRET),
        _post(client, b"not json"),
        client.post(URL, data=body),
        client.get(URL),
        client.get("/metrics"),
    ]
    assert {r.status_code for r in responses} >= {200, 400, 405}
    for response in responses:
        assert STRIPE_SECRET.encode() not in response.get_data()
        assert "test_secret" not in str(response.headers)


# -- Redis unavailable --------------------------------------------------------------------


def test_redis_down_is_a_503_with_retry_after(redis_down_app: Flask) -> None:
    response = _post(redis_down_app.test_client(), encode(fixture(PAYMENT)))
    assert response.status_code == 503
    assert response.headers.get("Retry-After", "").isdigit()
    assert response.is_json
    assert response.json is not None
    assert response.json["error"]["code"] == "queue_unavailable"


def test_readyz_is_503_when_redis_is_down(redis_down_app: Flask) -> None:
    response = redis_down_app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable", "redis": False}


# -- operational routes -------------------------------------------------------------------


def test_healthz_answers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_200_when_redis_answers(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "redis": True}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_deliveries_and_queue_depth(client: FlaskClient) -> None:
    body = encode(fixture(PAYMENT))
    _post(client, body)
    _post(client, body)
    _post(client, body, secret="whsec_other")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'bridge_webhooks_total{outcome="queued",provider="stripe"} 1.0' in text
    assert 'bridge_queue_jobs{state="queued"} 1.0' in text
    samples = _samples(text)
    webhooks = "bridge_webhooks_total"
    assert samples[(webhooks, (("outcome", "queued"), ("provider", "stripe")))] == 1
    assert samples[(webhooks, (("outcome", "duplicate"), ("provider", "stripe")))] == 1
    assert samples[(webhooks, (("outcome", "invalid_signature"), ("provider", "stripe")))] == 1
    assert samples[("bridge_queue_jobs", (("state", "queued"),))] == 1
    assert samples[("bridge_queue_jobs", (("state", "failed"),))] == 0
    assert samples[("bridge_redis_up", ())] == 1


def test_metrics_count_events_by_intake_outcome(client: FlaskClient, queue: Queue) -> None:
    body = encode(fixture(PAYMENT))
    first, again = _post(client, body), _post(client, body)
    (dead,) = queue.job_ids
    fail_for_good(queue, dead)
    replaced = _post(client, body)  # the redelivery replaces the dead job
    irrelevant = _post(client, encode(event("customer.created", {"id": "cus_1"})))
    answers = [(r.json or {}).get("queued") for r in (first, again, replaced, irrelevant)]
    assert answers == [1, 0, 1, 0]

    samples = _samples(client.get("/metrics").get_data(as_text=True))

    def count(name: str, outcome: str) -> float:
        return samples.get((name, (("outcome", outcome), ("provider", "stripe"))), 0)

    webhooks, events = "bridge_webhooks_total", "bridge_events_total"
    assert [count(webhooks, o) for o in ("queued", "duplicate", "ignored")] == [2, 1, 1]
    assert [count(events, o) for o in ("queued", "duplicate")] == [2, 1]


def test_metrics_say_redis_is_down(redis_down_app: Flask) -> None:
    response = redis_down_app.test_client().get("/metrics")
    assert response.status_code == 200
    assert _samples(response.get_data(as_text=True))[("bridge_redis_up", ())] == 0
