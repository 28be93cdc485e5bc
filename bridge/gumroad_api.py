"""The Gumroad API reads the bridge needs: a sale and a subscriber as they are now, and lists.

Pings are not signed, so where an access token is configured the workers grant only
what this read confirms (providers.md §3). The reconcile source (bridge/sources/gumroad.py)
lists sales, products and subscribers; those reads are paced and wait out 429s, while the
single reads the workers make are not (RQ retries the job).

Shapes and behaviours follow Gumroad's own API code and docs (antiwork/gumroad at
8c16285: app/controllers/api/v2/{sales,subscribers,links,base}_controller.rb and
config/initializers/api_v2_methods.rb, which is gumroad.com/api).
"""

from __future__ import annotations

import logging
import time
from datetime import date
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import requests

from bridge.sources.pacing import (
    Pacer,
    RateLimited,
    paced_call,
)
from bridge.stripe_api import ProviderAPIError

logger = logging.getLogger(__name__)

# Gumroad's API host; the path carries the version (/v2/...).
API_BASE = "https://api.gumroad.com"
# (connect, read) seconds: a slow Gumroad fails the job, and RQ retries it later.
DEFAULT_TIMEOUT = (3.05, 10.0)
# Listing reads a minute. Gumroad documents no limit for API v2 reads and its Rack::Attack
# rules throttle none of them (only deprecated `page` paging past page 10, at 10/s); one a
# second stays far below the 120/min it gives its busiest public pages, and each sales
# page is a heavy query on Gumroad's side. A reconcile has no hurry.
DEFAULT_REQUESTS_PER_MINUTE = 60.0
# A Retry-After longer than this is waited for this long, then the call is tried again.
MAX_RETRY_AFTER_SECONDS = 600.0
# Statuses worth trying again: rate limited, request timeout, or Gumroad's own trouble.
_RETRYABLE_STATUSES = frozenset({408, 429})
# Doorkeeper answers these with an empty body: say what they mean.
_AUTH_REASONS = {
    401: "the access token was refused (missing, wrong or revoked)",
    403: "the access token lacks the view_sales scope",
}
# Enough of Gumroad's error message to explain a failure, not enough to flood a log.
_MESSAGE_LIMIT = 200


class GumroadRateLimitedError(ProviderAPIError):
    """Gumroad answered 429; ``retry_after`` is the pause it asked for, if it said."""

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after = retry_after


class GumroadNotFoundError(ProviderAPIError):
    """Gumroad has no such object for this seller (HTTP 200 with ``success: false``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class GumroadAPI:
    """Reads from Gumroad with the seller's access token."""

    def __init__(
        self,
        access_token: str,
        *,
        api_base: str = API_BASE,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        pacer: Pacer | None = None,
    ) -> None:
        # A token requests would refuse as a header value ends up quoted in the
        # exception it raises; refuse it here, without echoing it.
        if not access_token or not (access_token.isascii() and access_token.isprintable()):
            raise ValueError("Gumroad access token is empty or has non-printable characters")
        if any(char.isspace() for char in access_token):
            raise ValueError("Gumroad access token contains whitespace")
        self._token = access_token
        self._api_base = api_base.rstrip("/")
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        # Paces the listing reads and sleeps their 429 pauses (inject one to test the waits).
        self.pacer = pacer if pacer is not None else Pacer(DEFAULT_REQUESTS_PER_MINUTE)
        self.calls = 0  # listing requests sent, 429s included (a source's Batch.calls)

    def sale(self, sale_id: str) -> dict[str, Any]:
        """The sale as Gumroad reports it now (``sale_`` prefixes of bridge refs are stripped)."""
        ident = _ident(sale_id, "sale_", "sale")
        # Gumroad ids are base64 with `=` padding; quote everything so an id stays one segment.
        body = self._get(f"/v2/sales/{quote(ident, safe='')}", f"sale {ident}")
        return _object(body, "sale", ident)

    def subscriber(self, subscription_id: str) -> dict[str, Any]:
        """A subscription as Gumroad reports it now (``GET /v2/subscribers/:id``)."""
        ident = _ident(subscription_id, "sub_", "subscription")
        body = self._get(f"/v2/subscribers/{quote(ident, safe='')}", f"subscriber {ident}")
        return _object(body, "subscriber", ident)

    # -- listing reads: paced, 429s waited out ---------------------------------------------

    def find_sale(self, sale_id: str) -> dict[str, Any] | None:
        """``GET /v2/sales/:id``, or None when Gumroad has no such sale for this seller."""
        ident = _ident(sale_id, "sale_", "sale")
        body = self._find(f"/v2/sales/{quote(ident, safe='')}", f"sale {ident}")
        return None if body is None else _object(body, "sale", ident)

    def find_subscriber(self, subscription_id: str) -> dict[str, Any] | None:
        """``GET /v2/subscribers/:id``, or None when this seller has no such subscription."""
        ident = _ident(subscription_id, "sub_", "subscription")
        body = self._find(f"/v2/subscribers/{quote(ident, safe='')}", f"subscriber {ident}")
        return None if body is None else _object(body, "subscriber", ident)

    def products(self) -> list[dict[str, Any]]:
        """``GET /v2/products``: every visible product of the seller (one unpaginated list)."""
        return _items(self._paced("/v2/products", {}, "products"), "products")

    def sales_page(
        self, *, page_key: str | None = None, after: date | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``GET /v2/sales`` (10 sales, newest first) and the next page's key.

        ``after`` keeps sales created on that UTC day or later (Gumroad filters by day).
        """
        params = {"page_key": page_key, "after": after.isoformat() if after else None}
        body = self._paced("/v2/sales", params, "sales page")
        return _items(body, "sales"), _next_key(body)

    def subscribers_page(
        self, product_id: str, *, page_key: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page (100) of a product's active subscribers, pending cancellations included."""
        path = f"/v2/products/{quote(product_id, safe='')}/subscribers"
        # Unpaginated, Gumroad returns every subscriber in one response: slow for big lists.
        params = {"paginated": "true", "page_key": page_key}
        body = self._paced(path, params, f"subscribers of {product_id}")
        return _items(body, "subscribers"), _next_key(body)

    def _find(self, path: str, subject: str) -> dict[str, Any] | None:
        try:
            return self._paced(path, {}, subject)
        except GumroadNotFoundError:
            return None

    def _paced(self, path: str, params: dict[str, str | None], subject: str) -> dict[str, Any]:
        """One listing read at the pacer's rate, waiting out 429s, then giving up."""

        def send() -> dict[str, Any]:
            self.calls += 1
            try:
                return self._get(path, subject, params)
            except GumroadRateLimitedError as exc:
                raise RateLimited(exc.retry_after) from exc

        body, _ = paced_call(
            self.pacer, send, f"Gumroad reading {subject}", max_wait=MAX_RETRY_AFTER_SECONDS
        )
        return body

    def _get(
        self, path: str, subject: str, params: dict[str, str | None] | None = None
    ) -> dict[str, Any]:
        try:
            # Gumroad's docs pass access_token as a parameter; Doorkeeper (its OAuth server)
            # takes the same token as a Bearer header, which keeps it out of URLs, and so
            # out of request logs and of the messages requests puts in its exceptions.
            response = self._session.get(
                f"{self._api_base}{path}",
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            logger.warning(
                "gumroad_api_unreachable provider=gumroad subject=%r error=%s",
                subject,
                type(exc).__name__,
            )
            raise ProviderAPIError(
                f"Gumroad API unreachable reading {subject}: {type(exc).__name__}", retryable=True
            ) from exc
        return self._body(response, subject)

    def _body(self, response: requests.Response, subject: str) -> dict[str, Any]:
        """The JSON body of a successful call, or the one ProviderAPIError it amounts to."""
        status = response.status_code
        try:
            data: Any = response.json()
        except ValueError:
            data = None
        if status == 429:
            # Rack::Attack's answer is a bare "Retry later"; a Retry-After is honoured if sent.
            raise self._failure(response, subject, data, retryable=True, kind=429)
        if status >= 400:
            retryable = status >= 500 or status in _RETRYABLE_STATUSES
            raise self._failure(
                response, subject, data, retryable=retryable, reason=_AUTH_REASONS.get(status)
            )
        if not isinstance(data, dict):
            # A 200 that is not Gumroad's JSON is a proxy or an outage page: try later.
            raise self._failure(response, subject, None, retryable=True, reason="not JSON")
        if data.get("success") is not True:
            # Gumroad's "The sale was not found." comes with HTTP 200 (base_controller.rb).
            raise self._failure(response, subject, data, retryable=False, kind=404)
        return data

    def _failure(
        self,
        response: requests.Response,
        subject: str,
        data: Any,
        *,
        retryable: bool,
        reason: str | None = None,
        kind: int | None = None,
    ) -> ProviderAPIError:
        status = response.status_code
        detail = (_message(data) if isinstance(data, dict) else None) or reason
        # Gumroad's messages never quote the token, but a proxy's might: redact anyway.
        detail = detail.replace(self._token, "[redacted]") if detail else None
        logger.warning(
            "gumroad_api_failed provider=gumroad subject=%r status=%s request_id=%s retryable=%s",
            subject,
            status,
            response.headers.get("X-Request-Id", "-"),
            retryable,
        )
        message = f"Gumroad API status={status} reading {subject}"
        message = f"{message}: {detail}" if detail else message
        if kind == 429:
            return GumroadRateLimitedError(message, retry_after=_retry_after(response))
        if kind == 404:
            return GumroadNotFoundError(message)
        return ProviderAPIError(message, retryable=retryable)


def _ident(value: str, prefix: str, name: str) -> str:
    ident = value.removeprefix(prefix)
    if not ident:
        raise ProviderAPIError(f"Gumroad {name} id is empty", retryable=False)
    return ident


def _object(body: dict[str, Any], name: str, ident: str) -> dict[str, Any]:
    found = body.get(name)
    if not isinstance(found, dict):
        raise ProviderAPIError(f"Gumroad API returned no {name} object for {ident}", retryable=True)
    return found


def _items(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = body.get(name)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProviderAPIError(f"Gumroad API returned no {name} list", retryable=True)
    return items


def _next_key(body: dict[str, Any]) -> str | None:
    # The last page has no next_page_key at all (base_controller.rb#pagination_info).
    key = body.get("next_page_key")
    return key if isinstance(key, str) and key else None


def _retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if there is one."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _message(data: dict[str, Any]) -> str | None:
    message = data.get("message") or data.get("error")
    if not isinstance(message, str) or not message.strip():
        return None
    return message.strip()[:_MESSAGE_LIMIT]
