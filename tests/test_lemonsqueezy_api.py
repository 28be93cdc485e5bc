"""Lemon Squeezy API client against a small stand-in API on a real socket."""

from __future__ import annotations

import json
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from bridge.events import EntitlementState
from bridge.lemonsqueezy_api import LemonSqueezyAPI
from bridge.providers import lemonsqueezy
from bridge.stripe_api import ProviderAPIError

# Distinctive, so a leak into any message or log line is easy to spot.
API_KEY = "lsk_TOPSECRET_eyJhbGciOiJSUzI1NiJ9.do-not-leak"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lemonsqueezy"
# Ids the stand-in API answers with a failure instead of the resource.
NOT_JSON_ID = "7000"
NO_ATTRIBUTES_ID = "7001"
SLOW_ID = "7002"
SLOW_SECONDS = 1.0


def _attributes(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return dict(data["data"]["attributes"])


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request (noise in test output)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


@dataclass
class StandIn:
    """The stand-in API: its base URL and every request it received."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)


def _create_app(seen: list[dict[str, Any]]) -> Flask:
    app = Flask(__name__)

    @app.before_request
    def record_and_authenticate() -> tuple[Response, int] | None:
        seen.append({"path": request.full_path.rstrip("?"), "headers": dict(request.headers)})
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _errors(401, "Unauthenticated."), 401
        return None

    @app.get("/v1/<collection>/<object_id>")
    def resource(collection: str, object_id: str) -> Any:
        if collection not in ("subscriptions", "orders"):
            return _errors(404, "Not Found"), 404
        if object_id in ("404", "429", "500", "503"):
            response = _errors(int(object_id), "Failure")
            response.headers["X-Request-Id"] = f"req_{object_id}"
            return response, int(object_id)
        if object_id == "502":
            return "<html>Bad Gateway</html>", 502, {"Content-Type": "text/html"}
        if object_id == NOT_JSON_ID:
            return "<html>maintenance</html>", 200, {"Content-Type": "text/html"}
        if object_id == NO_ATTRIBUTES_ID:
            return jsonify(data={"type": collection, "id": object_id})
        if object_id == SLOW_ID:
            time.sleep(SLOW_SECONDS)
        fixture = "subscription_created" if collection == "subscriptions" else "order_created"
        attributes = _attributes(fixture)
        return Response(
            json.dumps({"data": {"type": collection, "id": object_id, "attributes": attributes}}),
            content_type="application/vnd.api+json",
        )

    return app


def _errors(status: int, title: str) -> Response:
    # JSON:API error document, as Lemon Squeezy answers failures.
    return jsonify(errors=[{"status": str(status), "title": title, "detail": title}])


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """The stand-in API served from a daemon thread on a free port."""
    seen: list[dict[str, Any]] = []
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, _create_app(seen), threaded=True, request_handler=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield StandIn(url=f"http://127.0.0.1:{server.server_port}", seen=seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def api(standin: StandIn) -> Iterator[LemonSqueezyAPI]:
    client = LemonSqueezyAPI(API_KEY, api_base=standin.url, timeout=(1.0, 5.0))
    yield client
    client.close()


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _failure(call: Any) -> ProviderAPIError:
    with pytest.raises(ProviderAPIError) as caught:
        call()
    return caught.value


def _full_text(exc: BaseException) -> str:
    """Everything a traceback log line would show, chained causes included."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


# -- success ------------------------------------------------------------------------------


def test_subscription_returns_its_current_attributes(
    api: LemonSqueezyAPI, standin: StandIn
) -> None:
    attributes = api.subscription("1")
    assert attributes["status"] == "on_trial"
    assert attributes["user_email"] == "dan@lemonsqueezy.com"
    assert attributes["order_id"] == 2
    assert [r["path"] for r in standin.seen] == ["/v1/subscriptions/1"]


def test_order_returns_its_current_attributes(api: LemonSqueezyAPI, standin: StandIn) -> None:
    attributes = api.order("9")
    assert attributes["status"] == "paid"
    assert attributes["first_order_item"]["variant_id"] == 1
    assert [r["path"] for r in standin.seen] == ["/v1/orders/9"]


def test_requests_carry_the_json_api_headers_and_the_bearer_key(
    api: LemonSqueezyAPI, standin: StandIn
) -> None:
    api.order("9")
    headers = standin.seen[0]["headers"]
    assert headers["Accept"] == "application/vnd.api+json"
    assert headers["Content-Type"] == "application/vnd.api+json"
    assert headers["Authorization"] == f"Bearer {API_KEY}"


def test_prefixed_ids_are_sent_bare(api: LemonSqueezyAPI, standin: StandIn) -> None:
    api.subscription("sub_12")
    api.order("order_34")
    assert [r["path"] for r in standin.seen] == ["/v1/subscriptions/12", "/v1/orders/34"]


def test_api_base_with_a_trailing_slash_builds_the_same_urls(standin: StandIn) -> None:
    client = LemonSqueezyAPI(API_KEY, api_base=standin.url + "/")
    client.order("5")
    client.close()
    assert [r["path"] for r in standin.seen] == ["/v1/orders/5"]


def test_attributes_read_back_feed_the_provider_state_functions(api: LemonSqueezyAPI) -> None:
    # What the worker does with a fresh read: the same mapping as for a webhook.
    assert lemonsqueezy.subscription_state(api.subscription("sub_1")) is EntitlementState.ACTIVE
    assert lemonsqueezy.order_state(api.order("order_1")) is EntitlementState.ACTIVE


def test_injected_session_is_used_without_keeping_the_key(standin: StandIn) -> None:
    session = requests.Session()
    client = LemonSqueezyAPI(API_KEY, api_base=standin.url, session=session)
    client.order("5")
    assert len(standin.seen) == 1
    assert "Authorization" not in session.headers
    session.close()


# -- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "object_id",
    [
        pytest.param("../orders/1", id="path-traversal"),
        pytest.param("1?include=store", id="query"),
        pytest.param("1#x", id="fragment"),
        pytest.param("order_1", id="wrong-prefix"),
        pytest.param("", id="empty"),
        pytest.param("sub_", id="prefix-only"),
        pytest.param("\uff11", id="fullwidth-digit"),
        pytest.param(" 1", id="leading-space"),
    ],
)
def test_id_that_is_not_numeric_is_refused_without_a_request(
    api: LemonSqueezyAPI, standin: StandIn, object_id: str
) -> None:
    error = _failure(lambda: api.subscription(object_id))
    assert error.retryable is False
    assert "not numeric" in str(error)
    assert standin.seen == []


# -- failures -----------------------------------------------------------------------------


def test_missing_resource_is_not_retryable(api: LemonSqueezyAPI) -> None:
    error = _failure(lambda: api.subscription("404"))
    assert error.retryable is False
    assert "status=404" in str(error)
    assert "request_id=req_404" in str(error)


def test_rejected_key_is_not_retryable(standin: StandIn) -> None:
    client = LemonSqueezyAPI("lsk_wrong_key", api_base=standin.url)
    error = _failure(lambda: client.order("1"))
    assert error.retryable is False
    assert "status=401" in str(error)
    client.close()


@pytest.mark.parametrize("status", ["500", "502", "503", "429"])
def test_server_errors_and_rate_limits_are_retryable(api: LemonSqueezyAPI, status: str) -> None:
    error = _failure(lambda: api.order(status))
    assert error.retryable is True
    assert f"status={status}" in str(error)


def test_success_that_is_not_json_is_retryable(api: LemonSqueezyAPI) -> None:
    error = _failure(lambda: api.order(NOT_JSON_ID))
    assert error.retryable is True
    assert "not JSON" in str(error)


def test_success_without_attributes_is_retryable(api: LemonSqueezyAPI) -> None:
    error = _failure(lambda: api.subscription(NO_ATTRIBUTES_ID))
    assert error.retryable is True
    assert "data.attributes" in str(error)


def test_unreachable_api_is_retryable() -> None:
    client = LemonSqueezyAPI(API_KEY, api_base=f"http://127.0.0.1:{_free_port()}")
    error = _failure(lambda: client.subscription("1"))
    assert error.retryable is True
    assert "ConnectionError" in str(error)
    client.close()


def test_slow_api_times_out_as_retryable(standin: StandIn) -> None:
    client = LemonSqueezyAPI(API_KEY, api_base=standin.url, timeout=(1.0, SLOW_SECONDS / 10))
    error = _failure(lambda: client.subscription(SLOW_ID))
    assert error.retryable is True
    assert "Timeout" in str(error)
    client.close()


def test_malformed_api_base_is_not_retryable() -> None:
    client = LemonSqueezyAPI(API_KEY, api_base="api.lemonsqueezy.com")  # no scheme
    error = _failure(lambda: client.order("1"))
    assert error.retryable is False
    client.close()


@pytest.mark.parametrize(
    ("api_base_of", "object_id"),
    [
        pytest.param(lambda s: s.url, "404", id="404"),
        pytest.param(lambda s: s.url, "500", id="500"),
        pytest.param(lambda s: s.url, "429", id="429"),
        pytest.param(lambda s: s.url, NOT_JSON_ID, id="not-json"),
        pytest.param(lambda s: s.url, NO_ATTRIBUTES_ID, id="no-attributes"),
        pytest.param(lambda s: s.url, "../x", id="bad-id"),
        pytest.param(lambda s: f"http://127.0.0.1:{_free_port()}", "1", id="unreachable"),
        pytest.param(lambda s: "api.lemonsqueezy.com", "1", id="no-scheme"),
    ],
)
def test_api_key_never_appears_in_errors_or_logs(
    standin: StandIn, caplog: pytest.LogCaptureFixture, api_base_of: Any, object_id: str
) -> None:
    caplog.set_level("DEBUG")
    client = LemonSqueezyAPI(API_KEY, api_base=api_base_of(standin))
    error = _failure(lambda: client.subscription(object_id))
    client.close()
    assert API_KEY not in _full_text(error)
    assert "TOPSECRET" not in _full_text(error)
    assert "TOPSECRET" not in caplog.text


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("lsk_TOPSECRET\n", id="trailing-newline"),
        pytest.param("lsk_TOPSECRET with space", id="space"),
        pytest.param("lsk_TOPSECRET_\u00e9", id="non-ascii"),
    ],
)
def test_key_a_header_cannot_carry_is_refused_without_naming_it(key: str) -> None:
    with pytest.raises(ValueError, match="API key") as caught:
        LemonSqueezyAPI(key)
    assert "TOPSECRET" not in _full_text(caught.value)
