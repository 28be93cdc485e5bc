"""Gumroad API client against a small stand-in for ``GET /v2/sales/:id`` on a real socket."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from bridge.events import DisputeState, EntitlementState
from bridge.gumroad_api import GumroadAPI
from bridge.providers.gumroad import sale_dispute, sale_state
from bridge.stripe_api import ProviderAPIError

TOKEN = "gr_access_9d1f4c7b2e8a"
SALE_ID = "FO8TXN-dvxYabdavG97Y-Q=="
# The documented example response of GET /v2/sales/:id (config/initializers/api_v2_methods
# docs), trimmed to the fields that matter plus a few neighbours.
DOCUMENTED_SALE: dict[str, Any] = {
    "id": SALE_ID,
    "email": "calvin@gumroad.com",
    "seller_id": "kL0paVL2SdmJSYsNs-OCMg==",
    "created_at": "2021-01-05T19:38:56Z",
    "product_id": "32-nPainqpLj1B_WIwVlMw==",
    "product_permalink": "XCBbJ",
    "partially_refunded": False,
    "chargedback": False,
    "disputed": False,
    "dispute_won": False,
    "subscription_id": "GazW4_NBcQy-o7Gjjng7lw==",
    "cancelled": False,
    "ended": False,
    "recurring_charge": False,
    "license_key": "83DB262A-C19D3B06-A5235A6B-8C079166",
    "quantity": 1,
}


@dataclass
class FakeGumroad:
    """What the stand-in serves per sale id, and what it was asked."""

    base_url: str
    replies: dict[str, tuple[int, Any]] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0


def _app(fake: FakeGumroad) -> Flask:
    app = Flask("fake_gumroad")

    @app.get("/v2/sales/<path:sale_id>")
    def sale(sale_id: str) -> Any:
        fake.seen.append(
            {
                "sale_id": sale_id,
                "authorization": request.headers.get("Authorization"),
                "query": request.query_string.decode(),
                "user_agent": request.headers.get("User-Agent"),
            }
        )
        if fake.delay:
            time.sleep(fake.delay)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return jsonify(success=False, message="The access token is invalid."), 401
        status, body = fake.replies.get(
            sale_id, (404, {"success": False, "message": "The sale was not found."})
        )
        if isinstance(body, str):
            return Response(body, status=status, mimetype="text/html")
        response = jsonify(body)
        response.status_code = status
        response.headers["X-Request-Id"] = "req-gumroad-42"
        return response

    return app


@pytest.fixture
def gumroad() -> Iterator[FakeGumroad]:
    """The stand-in API on 127.0.0.1, a free port, in a daemon thread."""
    fake = FakeGumroad(base_url="")
    server = make_server("127.0.0.1", 0, _app(fake), threaded=True)
    fake.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    thread.join(timeout=5)


def _api(fake: FakeGumroad, **options: Any) -> GumroadAPI:
    options.setdefault("timeout", (2.0, 2.0))
    return GumroadAPI(TOKEN, api_base=fake.base_url, **options)


def _failure(fake: FakeGumroad, sale_id: str = SALE_ID, **options: Any) -> ProviderAPIError:
    with pytest.raises(ProviderAPIError) as caught:
        _api(fake, **options).sale(sale_id)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value.__cause__)
    return caught.value


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# -- success ------------------------------------------------------------------------------


def test_sale_returns_the_sale_object(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": True, "sale": DOCUMENTED_SALE})
    assert _api(gumroad).sale(SALE_ID) == DOCUMENTED_SALE


def test_bridge_sale_reference_is_stripped_of_its_prefix(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": True, "sale": DOCUMENTED_SALE})
    assert _api(gumroad).sale(f"sale_{SALE_ID}")["id"] == SALE_ID
    # The base64 padding survives the trip through the path.
    assert gumroad.seen[-1]["sale_id"] == SALE_ID


def test_token_travels_as_a_bearer_header_never_in_the_url(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": True, "sale": DOCUMENTED_SALE})
    _api(gumroad).sale(SALE_ID)
    assert gumroad.seen[-1]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in gumroad.seen[-1]["query"]


def test_a_slash_in_a_sale_id_cannot_reach_another_path(gumroad: FakeGumroad) -> None:
    # Sent as `..%2Fuser`, it lands on /v2/sales/ (and is no sale), never on /v2/user.
    assert _failure(gumroad, "../user").retryable is False
    assert gumroad.seen[-1]["sale_id"] == "../user"


def test_injected_session_is_the_one_used(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": True, "sale": DOCUMENTED_SALE})
    session = requests.Session()
    session.headers["User-Agent"] = "sotion-bridge-test"
    _api(gumroad, session=session).sale(SALE_ID)
    assert gumroad.seen[-1]["user_agent"] == "sotion-bridge-test"


def test_fresh_sale_state_comes_from_the_api(gumroad: FakeGumroad) -> None:
    refunded = {**DOCUMENTED_SALE, "refunded": True}
    gumroad.replies[SALE_ID] = (200, {"success": True, "sale": refunded})
    assert sale_state(_api(gumroad).sale(f"sale_{SALE_ID}")) is EntitlementState.ENDED


# -- permanent failures -------------------------------------------------------------------


def test_success_false_is_not_retryable(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": False, "message": "You do not have access."})
    error = _failure(gumroad)
    assert error.retryable is False
    assert "You do not have access." in str(error)


def test_missing_sale_is_not_retryable(gumroad: FakeGumroad) -> None:
    error = _failure(gumroad, "nope==")
    assert error.retryable is False
    assert "status=404" in str(error)
    assert "not found" in str(error)


def test_rejected_token_is_not_retryable() -> None:
    fake = FakeGumroad(base_url="")
    server = make_server("127.0.0.1", 0, _app(fake), threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        api = GumroadAPI("gr_wrong_token", api_base=f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(ProviderAPIError) as caught:
            api.sale(SALE_ID)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert caught.value.retryable is False
    assert "status=401" in str(caught.value)
    assert "gr_wrong_token" not in str(caught.value)


def test_empty_sale_id_is_refused_without_a_call(gumroad: FakeGumroad) -> None:
    assert _failure(gumroad, "sale_").retryable is False
    assert gumroad.seen == []


# -- transient failures -------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_rate_limits_and_server_errors_are_retryable(gumroad: FakeGumroad, status: int) -> None:
    gumroad.replies[SALE_ID] = (status, {"success": False, "message": "busy"})
    error = _failure(gumroad)
    assert error.retryable is True
    assert f"status={status}" in str(error)


def test_body_that_is_not_json_is_retryable(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, "<html>Gumroad is down for maintenance</html>")
    assert _failure(gumroad).retryable is True


def test_success_without_a_sale_object_is_retryable(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": True})
    assert _failure(gumroad).retryable is True


def test_unreachable_api_is_retryable() -> None:
    api = GumroadAPI(TOKEN, api_base=f"http://127.0.0.1:{_free_port()}", timeout=(1.0, 1.0))
    with pytest.raises(ProviderAPIError) as caught:
        api.sale(SALE_ID)
    assert caught.value.retryable is True
    assert "unreachable" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value.__cause__)


def test_slow_api_times_out_as_retryable(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (200, {"success": True, "sale": DOCUMENTED_SALE})
    gumroad.delay = 1.0
    error = _failure(gumroad, timeout=(1.0, 0.1))
    assert error.retryable is True
    assert "Timeout" in str(error)


# -- secrets ------------------------------------------------------------------------------


def test_token_echoed_by_a_proxy_is_redacted_from_the_error(gumroad: FakeGumroad) -> None:
    gumroad.replies[SALE_ID] = (502, {"success": False, "message": f"bad upstream for {TOKEN}"})
    error = _failure(gumroad)
    assert "[redacted]" in str(error)


def test_failures_are_logged_with_the_request_id_and_without_the_token(
    gumroad: FakeGumroad, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bridge.gumroad_api"):
        _failure(gumroad, "nope==")
    assert "request_id=req-gumroad-42" in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("token", ["", "gr_abc\r\nX-Injected: 1", "gr abc", "gr_tök"])
def test_unusable_token_is_refused_at_construction_without_echoing_it(token: str) -> None:
    with pytest.raises(ValueError) as caught:
        GumroadAPI(token)
    if token:
        assert token not in str(caught.value)


# -- sale_state and sale_dispute -----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "state", "dispute"),
    [
        pytest.param({}, EntitlementState.ACTIVE, None, id="documented-example"),
        pytest.param({"refunded": False}, EntitlementState.ACTIVE, None, id="not-refunded"),
        pytest.param({"refunded": True}, EntitlementState.ENDED, None, id="refunded"),
        pytest.param(
            {"partially_refunded": True}, EntitlementState.ACTIVE, None, id="partial-refund"
        ),
        pytest.param(
            {"chargedback": True}, EntitlementState.ACTIVE, DisputeState.OPEN, id="chargedback"
        ),
        pytest.param({"disputed": True}, EntitlementState.ACTIVE, DisputeState.OPEN, id="disputed"),
        pytest.param(
            {"disputed": True, "dispute_won": True},
            EntitlementState.ACTIVE,
            DisputeState.WON,
            id="dispute-won",
        ),
        pytest.param(
            {"refunded": True, "chargedback": True, "disputed": True},
            EntitlementState.ENDED,
            DisputeState.OPEN,
            id="refunded-and-charged-back",
        ),
        pytest.param(
            {"cancelled": True, "dead": False},
            EntitlementState.ACTIVE,
            None,
            id="pending-cancellation",
        ),
        pytest.param(
            {"cancelled": True, "dead": True}, EntitlementState.ENDED, None, id="cancelled"
        ),
        pytest.param({"dead": True}, EntitlementState.ENDED, None, id="failed-payment"),
        pytest.param({"ended": True}, EntitlementState.ENDED, None, id="fixed-length-ended"),
        pytest.param({"refunded": "true"}, EntitlementState.ENDED, None, id="form-style-boolean"),
        pytest.param({"refunded": "false"}, EntitlementState.ACTIVE, None, id="form-style-false"),
        pytest.param({"refunded": None}, EntitlementState.ACTIVE, None, id="null-flag"),
    ],
)
def test_sale_state_and_sale_dispute_map_the_api_flags(
    changes: dict[str, Any], state: EntitlementState, dispute: DisputeState | None
) -> None:
    sale = {**DOCUMENTED_SALE, **changes}
    assert sale_state(sale) is state
    assert sale_dispute(sale) is dispute


def test_sale_state_of_a_bare_object_is_active_and_undisputed() -> None:
    assert sale_state({}) is EntitlementState.ACTIVE
    assert sale_dispute({}) is None
