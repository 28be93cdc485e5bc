"""Error translation and header parsing, with exact control over responses."""

from __future__ import annotations

import email.utils

import pytest
import responses

from bridge.sotion import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    SotionClient,
    TransientError,
)
from bridge.sotion.transport import parse_rate_limit, parse_retry_after

BASE = "https://api.sotion.test/api/v1"
NOW = 1_800_000_000.0


def _client() -> SotionClient:
    return SotionClient.connect(BASE, "so_unit", clock=lambda: NOW)


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, PermanentError, False),
        (401, AuthError, False),
        (403, ForbiddenError, False),
        (404, NotFoundError, False),
        (409, ConflictError, False),
        (422, PermanentError, False),
        (408, TransientError, True),
        (429, RateLimitedError, True),
        (500, TransientError, True),
        (503, TransientError, True),
    ],
)
@responses.activate
def test_each_status_maps_to_its_error(
    status: int, error_type: type[Exception], retryable: bool
) -> None:
    responses.get(
        f"{BASE}/site",
        status=status,
        json={"error": {"code": "some_code", "message": "Some message"}},
        headers={"X-Request-Id": "req-1"},
    )
    with pytest.raises(error_type) as caught:
        _client().site()
    error = caught.value
    assert type(error) is error_type
    assert error.retryable is retryable
    assert error.status == status
    assert error.request_id == "req-1"
    assert error.code == "some_code"
    assert error.message == "Some message"


@pytest.mark.parametrize(
    ("body", "content_type", "code", "message"),
    [
        ('{"error": "Missing API key"}', "application/json", None, "Missing API key"),
        ('{"error": {"code": "c", "message": "m"}}', "application/json", "c", "m"),
        ('{"code": "c2", "message": "m2"}', "application/json", "c2", "m2"),
        ('{"message": "only message"}', "application/json", None, "only message"),
        ("plain words", "text/plain", None, "plain words"),
        ("<html><body>Bad Gateway</body></html>", "text/html", None, "Bad Request"),
        ("", "text/plain", None, "Bad Request"),
        ("[1, 2]", "application/json", None, "Bad Request"),
    ],
)
@responses.activate
def test_error_bodies_are_parsed_defensively(
    body: str, content_type: str, code: str | None, message: str
) -> None:
    responses.get(f"{BASE}/site", status=400, body=body, content_type=content_type)
    with pytest.raises(PermanentError) as caught:
        _client().site()
    assert caught.value.code == code
    assert caught.value.message == message
    assert len(caught.value.body_excerpt) <= 300


@responses.activate
def test_long_error_body_is_cut_to_an_excerpt() -> None:
    responses.get(f"{BASE}/site", status=500, body="x" * 10_000)
    with pytest.raises(TransientError) as caught:
        _client().site()
    assert caught.value.body_excerpt == "x" * 300


@responses.activate
def test_non_json_success_body_is_transient() -> None:
    responses.get(f"{BASE}/site", status=200, body="<html>proxy</html>")
    with pytest.raises(TransientError) as caught:
        _client().site()
    assert "not JSON" in caught.value.message


@responses.activate
def test_success_without_data_envelope_is_transient() -> None:
    responses.get(f"{BASE}/site", status=200, json={"unexpected": True})
    with pytest.raises(TransientError):
        _client().site()


@responses.activate
def test_429_reads_retry_after_seconds_and_reset() -> None:
    responses.get(
        f"{BASE}/site",
        status=429,
        json={"error": "slow down"},
        headers={"Retry-After": "7", "X-RateLimit-Reset": str(int(NOW) + 12)},
    )
    with pytest.raises(RateLimitedError) as caught:
        _client().site()
    assert caught.value.retry_after == 7
    assert caught.value.reset_at == NOW + 12
    assert caught.value.wait_seconds(now=NOW) == 7


@responses.activate
def test_429_without_retry_after_waits_until_reset() -> None:
    responses.get(
        f"{BASE}/site", status=429, json={}, headers={"X-RateLimit-Reset": str(int(NOW) + 12)}
    )
    with pytest.raises(RateLimitedError) as caught:
        _client().site()
    assert caught.value.wait_seconds(now=NOW) == 12


@responses.activate
def test_rate_limited_call_is_retried_after_the_wait_when_allowed() -> None:
    responses.get(f"{BASE}/site", status=429, json={}, headers={"Retry-After": "3"})
    responses.get(f"{BASE}/site", status=200, json={"data": {"id": "site_1"}})
    slept: list[float] = []
    api = SotionClient.connect(BASE, "so_unit", rate_limit_waits=1, sleep=slept.append)
    assert api.site().id == "site_1"
    assert slept == [3.0]


def test_retry_after_accepts_an_http_date() -> None:
    when = email.utils.formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after(when, now=NOW) == 30
    assert parse_retry_after("soon", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None


def test_rate_limit_headers_are_parsed_defensively() -> None:
    parsed = parse_rate_limit(
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "99", "X-RateLimit-Reset": "60"},
        now=NOW,
    )
    assert parsed is not None
    assert (parsed.limit, parsed.remaining, parsed.reset_at) == (100, 99, NOW + 60)
    assert parse_rate_limit({}, now=NOW) is None
    assert parse_rate_limit({"X-RateLimit-Limit": "lots"}, now=NOW) is None
    partial = parse_rate_limit({"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "3"}, now=NOW)
    assert partial is not None and (partial.limit, partial.remaining) == (None, 3)


@responses.activate
def test_every_call_sends_the_bearer_key_and_a_timeout() -> None:
    responses.get(f"{BASE}/site", status=200, json={"data": {"id": "s"}})
    api = _client()
    api.site()
    request = responses.calls[0].request
    assert request.headers["Authorization"] == "Bearer so_unit"
    assert request.req_kwargs["timeout"] == (3.05, 10.0)
