"""HTTP transport shared by both API flavours: one session, timeouts, error translation.

This is the only module that touches ``requests``; every failure is translated into a
:mod:`bridge.sotion.errors` type here, and the ``X-RateLimit-*`` headers of every response
are parsed and kept so callers can pace themselves.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from bridge.sotion.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    SotionError,
    TransientError,
)
from bridge.sotion.models import RateLimit

log = logging.getLogger(__name__)

# (connect, read) seconds: connect fails fast, reads allow a slow Sotion.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
# A reset header below this is a delta in seconds, not a Unix timestamp (defensive).
_EPOCH_THRESHOLD = 1_000_000_000

RateLimitListener = Callable[[RateLimit], None]


@dataclass(frozen=True)
class Response:
    """A successful, decoded response."""

    status: int
    body: Any
    headers: Mapping[str, str]
    request_id: str | None


class Transport:
    """Sends requests to one base URL and returns decoded JSON or raises a SotionError."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        on_rate_limit: RateLimitListener | None = None,
        before_request: Callable[[], None] | None = None,
        rate_limit_waits: int = 0,
        max_rate_limit_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json", **(headers or {})})
        self.on_rate_limit = on_rate_limit
        self.before_request = before_request
        self.rate_limit_waits = rate_limit_waits
        self.max_rate_limit_wait = max_rate_limit_wait
        self._sleep = sleep
        self._clock = clock
        self.last_rate_limit: RateLimit | None = None
        self.last_request_id: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Response:
        """Send one request; wait out a 429 up to ``rate_limit_waits`` times, then raise."""
        waits_left = self.rate_limit_waits
        while True:
            try:
                return self._send(method, path, params=params, json=json)
            except RateLimitedError as exc:
                wait = exc.wait_seconds(now=self._clock())
                if waits_left <= 0 or wait > self.max_rate_limit_wait:
                    raise
                waits_left -= 1
                log.info(
                    "sotion rate limited method=%s path=%s wait=%.2fs request_id=%s",
                    method,
                    path,
                    wait,
                    exc.request_id,
                )
                self._sleep(wait)

    def close(self) -> None:
        """Close the underlying session."""
        self.session.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
    ) -> Response:
        url = self.base_url + path
        if self.before_request is not None:
            self.before_request()
        try:
            raw = self.session.request(
                method, url, params=_clean_params(params), json=json, timeout=self.timeout
            )
        except requests.RequestException as exc:
            error = error_from_exception(exc)
            log.warning("sotion call failed method=%s path=%s error=%s", method, path, error)
            raise error from exc
        rate_limit = parse_rate_limit(raw.headers, now=self._clock())
        self.last_request_id = raw.headers.get("X-Request-Id")
        if rate_limit is not None:
            self.last_rate_limit = rate_limit
            if self.on_rate_limit is not None:
                self.on_rate_limit(rate_limit)
        if raw.status_code >= 400:
            error = error_from_response(raw, now=self._clock())
            log.warning(
                "sotion call failed method=%s path=%s status=%s request_id=%s",
                method,
                path,
                raw.status_code,
                error.request_id,
            )
            raise error
        return Response(
            status=raw.status_code,
            body=_decode_success(raw),
            headers=raw.headers,
            request_id=self.last_request_id,
        )


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Drop ``None`` values and spell booleans the way the API expects ("true"/"false")."""
    if params is None:
        return None
    cleaned: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        cleaned[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return cleaned


def _decode_success(raw: requests.Response) -> Any:
    """Decode a 2xx body; an undecodable one is treated as transient (a proxy's page)."""
    if raw.status_code == 204 or not raw.content:
        return None
    try:
        return raw.json()
    except ValueError as exc:
        raise TransientError(
            "Sotion returned a body that is not JSON",
            status=raw.status_code,
            request_id=raw.headers.get("X-Request-Id"),
            body=raw.text,
        ) from exc


def parse_rate_limit(headers: Mapping[str, str], *, now: float) -> RateLimit | None:
    """Read ``X-RateLimit-*``; None when the response carried none of them."""
    limit = _int_header(headers, "X-RateLimit-Limit")
    remaining = _int_header(headers, "X-RateLimit-Remaining")
    reset = _int_header(headers, "X-RateLimit-Reset")
    if limit is None and remaining is None and reset is None:
        return None
    reset_at: float | None = None
    if reset is not None:
        reset_at = float(reset) if reset >= _EPOCH_THRESHOLD else now + reset
    return RateLimit(limit=limit, remaining=remaining, reset_at=reset_at)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def parse_error_body(raw: requests.Response) -> tuple[str | None, str]:
    """Return (code, message) from an error body of any shape Sotion is known to send.

    Seen or documented: ``{"error": "text"}``, ``{"error": {"code", "message"}}``;
    tolerated: ``{"code", "message"}``, ``{"message"}``, plain text, HTML, nothing.
    """
    fallback = raw.reason or f"HTTP {raw.status_code}"
    try:
        body = raw.json()
    except ValueError:
        text = raw.text.strip()
        looks_like_markup = text.startswith("<")
        return None, (text[:200] if text and not looks_like_markup else fallback)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, str):
            return None, error
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message") or error.get("error") or fallback
            return (str(code) if code is not None else None), str(message)
    if isinstance(body, str) and body:
        return None, body
    return None, fallback


def error_from_response(raw: requests.Response, *, now: float) -> SotionError:
    """Translate an HTTP error response into the matching SotionError."""
    status = raw.status_code
    code, message = parse_error_body(raw)
    details: dict[str, Any] = {
        "status": status,
        "request_id": raw.headers.get("X-Request-Id"),
        "code": code,
        "body": raw.text,
    }
    if status == 429:
        rate_limit = parse_rate_limit(raw.headers, now=now)
        return RateLimitedError(
            message,
            reset_at=rate_limit.reset_at if rate_limit else None,
            retry_after=parse_retry_after(raw.headers.get("Retry-After"), now=now),
            **details,
        )
    if status == 401:
        return AuthError(message, **details)
    if status == 403:
        return ForbiddenError(message, **details)
    if status == 404:
        return NotFoundError(message, **details)
    if status == 409:
        return ConflictError(message, **details)
    if status == 408 or status >= 500:
        return TransientError(message, **details)
    return PermanentError(message, **details)


def error_from_exception(exc: requests.RequestException) -> SotionError:
    """Translate a ``requests`` exception (no response) into a SotionError."""
    if isinstance(exc, requests.Timeout):
        return TransientError(f"Sotion did not answer in time: {type(exc).__name__}")
    if isinstance(exc, requests.ConnectionError):
        return TransientError(f"Could not connect to Sotion: {type(exc).__name__}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return PermanentError(f"Invalid Sotion URL: {exc}")
    return TransientError(f"Sotion request failed: {type(exc).__name__}")


def path_segment(value: str) -> str:
    """Quote an id for use as one URL path segment (ids come from outside)."""
    return quote(str(value), safe="")
