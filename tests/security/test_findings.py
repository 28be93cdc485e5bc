"""One test per finding of the security review not covered by a suite of its own.

(Settings: tests/test_settings.py; logs: test_leaks.py; slow clients: test_slow_clients.py;
5xx: test_hostile_inputs.py; Gumroad confirmation: tests/test_gumroad_flow.py.)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import redis
import yaml
from flask.testing import FlaskClient
from rq import Queue

from bridge.redact import mask_email, redact
from bridge.settings import Settings
from tests import stripe_events as se
from tests.conftest import STRIPE_SECRET
from tests.test_providers_gumroad import FORM, SELLER, payload
from tests.test_web_gumroad import TOKEN, form_body

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with Gumroad pings on too."""
    return dataclasses.replace(settings, gumroad_webhook_token=TOKEN, gumroad_seller_id=SELLER)


def _stripe(client: FlaskClient, payload: dict[str, object]) -> dict[str, object]:
    body = se.encode(payload)
    answer = client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)}
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    result: dict[str, object] = answer.get_json()
    return result


def _checkout(email: str, *, created: int | None = None) -> dict[str, object]:
    obj = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj["customer_details"]["email"] = email
    return se.event("checkout.session.completed", obj, created=created)


# -- 2. a timestamp far in the future cannot freeze a purchase ----------------------------


def test_event_dated_far_in_the_future_is_stored_dated_at_its_arrival(
    client: FlaskClient, queue: Queue
) -> None:
    before = time.time()
    assert _stripe(client, _checkout("future@example.com", created=4_000_000_000))["queued"] == 1

    event = queue.jobs[0].args[0]
    assert before <= event["occurred_at"] <= time.time() + 1


def test_gumroad_sale_dated_far_ahead_is_clamped_too(client: FlaskClient, queue: Queue) -> None:
    ping = payload("sale_one_time", sale_timestamp="2999-01-01T00:00:00Z")
    answer = client.post(f"/webhooks/gumroad/{TOKEN}", data=form_body(ping), content_type=FORM)

    assert answer.status_code == 200
    assert queue.jobs[0].args[0]["occurred_at"] <= time.time() + 1


def test_slightly_early_clock_is_kept(client: FlaskClient, queue: Queue) -> None:
    ahead = int(time.time()) + 60  # a provider clock a minute ahead: not a forgery
    _stripe(client, _checkout("clock@example.com", created=ahead))

    assert queue.jobs[0].args[0]["occurred_at"] == ahead


# -- 3. masking ---------------------------------------------------------------------------


def test_mask_email_with_several_at_signs_keeps_only_the_domain() -> None:
    assert mask_email("alice@evil.com@example.com") == "a***@example.com"
    assert "evil" not in mask_email("alice@evil.com@example.com")


def test_gumroad_path_is_masked_in_any_case() -> None:
    assert TOKEN not in redact(f"GET /WebHooks/GumRoad/{TOKEN} HTTP/1.1")
    assert TOKEN not in redact(f"POST //webhooks//gumroad/{TOKEN}?x=1")


# -- 6. compose ---------------------------------------------------------------------------


def test_compose_keeps_the_sandbox_behind_a_profile_on_loopback_and_never_falls_back() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    assert services["sandbox"]["profiles"] == ["try"]
    assert all(port.startswith("127.0.0.1:") for port in services["sandbox"]["ports"])
    assert all(port.startswith("127.0.0.1:") for port in services["web"]["ports"])
    text = json.dumps(services)
    assert "so_sandbox}" not in text and "sandbox:8090/api" not in text.replace(
        json.dumps(services["sandbox"]), ""
    )
    for name in ("web", "worker"):
        assert "SOTION_API_KEY" not in services[name].get("environment", {})
        assert "SOTION_API_URL" not in services[name].get("environment", {})
    assert "caddy" in services and services["caddy"]["profiles"] == ["tls"]


# -- 7. unbounded state -------------------------------------------------------------------


def test_signed_event_with_a_huge_email_is_acknowledged_and_stores_nothing(
    client: FlaskClient, queue: Queue, redis_conn: redis.Redis
) -> None:
    huge = "a" * 500_000 + "@example.com"

    answer = _stripe(client, _checkout(huge))

    assert answer["queued"] == 0 and answer["ignored"] == 1
    assert queue.count == 0
    assert all(len(key) < 1000 for key in redis_conn.scan_iter())
    assert (
        max((len(redis_conn.dump(key) or b"") for key in redis_conn.scan_iter()), default=0)
        < 10_000
    )


@pytest.mark.parametrize("email", ["not-an-address", "two@@example.com", "a b@example.com"])
def test_signed_event_whose_email_is_not_an_address_is_acknowledged_and_not_queued(
    client: FlaskClient, queue: Queue, email: str
) -> None:
    answer = _stripe(client, _checkout(email))

    assert answer["queued"] == 0
    assert queue.count == 0


def test_gumroad_ping_with_an_unusable_email_is_refused(client: FlaskClient, queue: Queue) -> None:
    ping = payload("sale_one_time", email="x" * 300 + "@example.com")
    answer = client.post(f"/webhooks/gumroad/{TOKEN}", data=form_body(ping), content_type=FORM)

    assert answer.status_code == 400
    assert "not an address" in answer.get_json()["error"]["message"]
    assert queue.count == 0
