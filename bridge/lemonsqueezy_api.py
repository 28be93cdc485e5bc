"""The Lemon Squeezy API reads the bridge needs: one subscription's or order's state now, and
the pages of every subscription and order (for backfill and reconcile).

List calls follow docs.lemonsqueezy.com/api/getting-started/requests (page-based JSON:API
pagination: ``page[number]``, ``page[size]`` up to 100, ``links.next`` absent on the last
page) and docs.lemonsqueezy.com/api (300 calls a minute; ``X-Ratelimit-Limit`` and
``X-Ratelimit-Remaining`` on successful responses; 429 when exceeded). They are paced under
that limit and wait out 429s, honouring ``Retry-After`` when the answer carries one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from bridge.sources.pacing import (
    Pacer,
    RateLimited,
    RateLimitExhaustedError,
    paced_call,
)
from bridge.stripe_api import ProviderAPIError

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.lemonsqueezy.com"
# (connect, read) seconds: connect fails fast, reads allow a slow API.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
# Lemon Squeezy's API is JSON:API and asks for this media type in Accept and Content-Type.
JSON_API = "application/vnd.api+json"
# Lemon Squeezy allows 300 API calls a minute (docs.lemonsqueezy.com/api, "Rate limiting").
RATE_LIMIT_PER_MINUTE = 300.0
# The largest page[size] the list endpoints accept.
MAX_PAGE_SIZE = 100
# The collections the list reads cover.
LISTABLE = ("subscriptions", "orders")
# A Retry-After longer than this is not believed (the limit is per minute): wait this long.
MAX_RETRY_AFTER_SECONDS = 120.0


@dataclass(frozen=True)
class ListPage:
    """One page of a list endpoint: its JSON:API resources and whether another page follows."""

    resources: tuple[dict[str, Any], ...]
    number: int
    has_next: bool
    # HTTP requests this page took, 429s included.
    calls: int


class LemonSqueezyAPI:
    """Reads from Lemon Squeezy with the operator's key.

    Single reads are not retried (RQ retries the job). List reads are paced by ``pacer``
    (default: 300 a minute, the documented limit) and wait out 429s; any other failure
    raises, and the caller resumes from its cursor.
    """

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        pacer: Pacer | None = None,
    ) -> None:
        # requests quotes a malformed header value in its error message: refuse such a key
        # here, without naming it, rather than leak it later.
        if not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise ValueError("The Lemon Squeezy API key is empty or not a printable ASCII token")
        self._api_key = api_key
        self._api_base = api_base.rstrip("/")
        self._session = session or requests.Session()
        self._timeout = timeout
        # Every wait of the list reads goes through the pacer: tests inject its sleep.
        self.pacer = pacer or Pacer(RATE_LIMIT_PER_MINUTE)

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        """The attributes of a Subscription as it is now (``sub_`` prefix optional)."""
        return self._get("subscriptions", _bare_id(subscription_id, "sub_"))

    def order(self, order_id: str) -> dict[str, Any]:
        """The attributes of an Order as it is now (``order_`` prefix optional)."""
        return self._get("orders", _bare_id(order_id, "order_"))

    def list_page(self, collection: str, number: int) -> ListPage:
        """Page ``number`` (from 1) of ``GET /v1/<collection>``, the largest page size allowed.

        Both lists come newest first (``sort=-createdAt`` in the docs' links). Raises
        RateLimitExhaustedError after MAX_RATE_LIMITED_TRIES 429s in a row.
        """
        if collection not in LISTABLE:
            raise ValueError(f"Lemon Squeezy lists only {', '.join(LISTABLE)}")
        path = f"/v1/{collection}"
        label = f"{path}?page[number]={number}"
        params = {"page[number]": str(number), "page[size]": str(MAX_PAGE_SIZE)}

        def send() -> requests.Response:
            response = self._send(path, label, params)
            if response.status_code == 429:
                raise RateLimited(_retry_after(response))
            return response

        try:
            response, calls = paced_call(
                self.pacer, send, f"Lemon Squeezy API GET {label}", max_wait=MAX_RETRY_AFTER_SECONDS
            )
        except RateLimitExhaustedError:
            log.warning("lemonsqueezy rate limit exhausted path=%s", label)
            raise
        if not 200 <= response.status_code < 300:
            raise _api_error(label, response)
        self._follow_limit(response)
        return _page(label, number, response, calls)

    def close(self) -> None:
        """Close the underlying session."""
        self._session.close()

    def _get(self, collection: str, object_id: str) -> dict[str, Any]:
        path = f"/v1/{collection}/{object_id}"
        response = self._send(path, path)
        if not 200 <= response.status_code < 300:
            raise _api_error(path, response)
        return _attributes(path, response)

    def _send(
        self, path: str, label: str, params: dict[str, str] | None = None
    ) -> requests.Response:
        # Headers per request, not on the session: an injected session may be shared.
        headers = {
            "Accept": JSON_API,
            "Content-Type": JSON_API,
            "Authorization": f"Bearer {self._api_key}",
        }
        try:
            return self._session.get(
                self._api_base + path, params=params, headers=headers, timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise _api_error(label, exc) from exc

    def _follow_limit(self, response: requests.Response) -> None:
        """Slow down when ``X-Ratelimit-Limit`` says the key's limit is below our pace."""
        try:
            limit = float(response.headers.get("X-Ratelimit-Limit", ""))
        except ValueError:
            return
        if math.isfinite(limit) and limit > 0:
            self.pacer.interval = max(self.pacer.interval, 60.0 / limit)


def _bare_id(value: str, prefix: str) -> str:
    """The numeric id Lemon Squeezy's URLs take, from ``123`` or ``<prefix>123``."""
    bare = str(value).removeprefix(prefix)
    # Only digits go into the URL, so an id can never become a path or a query of its own.
    if not (bare.isascii() and bare.isdigit()):
        raise ProviderAPIError(
            f"Lemon Squeezy id {str(value)[:40]!r} is not numeric", retryable=False
        )
    return bare


def _api_error(
    path: str, failure: requests.RequestException | requests.Response
) -> ProviderAPIError:
    """Connection trouble, timeouts, 429 and 5xx may pass; other answers will not.

    Messages carry the path, status and request id only: never the key, nor the text of a
    requests exception (which can quote headers).
    """
    if isinstance(failure, requests.RequestException):
        retryable = isinstance(
            failure,
            requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError,
        )
        log.warning(
            "lemonsqueezy call failed path=%s error=%s retryable=%s",
            path,
            type(failure).__name__,
            retryable,
        )
        return ProviderAPIError(
            f"Lemon Squeezy API GET {path} failed: {type(failure).__name__}", retryable=retryable
        )
    status = failure.status_code
    request_id = failure.headers.get("X-Request-Id")
    retryable = status == 429 or not 400 <= status < 500
    # Say what a 401 means; never which key it was.
    hint = " (the API key was refused: check LEMONSQUEEZY_API_KEY)" if status == 401 else ""
    log.warning(
        "lemonsqueezy call failed path=%s status=%s request_id=%s retryable=%s",
        path,
        status,
        request_id,
        retryable,
    )
    return ProviderAPIError(
        f"Lemon Squeezy API GET {path} status={status} request_id={request_id}{hint}",
        retryable=retryable,
    )


def _attributes(path: str, response: requests.Response) -> dict[str, Any]:
    """The resource's ``data.attributes``; anything else is a proxy's page or a glitch."""
    body = _json(path, response)
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attributes, dict):
        raise ProviderAPIError(
            f"Lemon Squeezy API GET {path} returned no data.attributes", retryable=True
        )
    return attributes


def _page(label: str, number: int, response: requests.Response, calls: int) -> ListPage:
    """The page's resources; a body that is not a JSON:API list is a glitch worth retrying."""
    body = _json(label, response)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ProviderAPIError(
            f"Lemon Squeezy API GET {label} returned no data list", retryable=True
        )
    links = body.get("links")
    has_next = isinstance(links, dict) and bool(links.get("next"))
    resources = tuple(item for item in data if isinstance(item, dict))
    # An empty page that claims a next one would loop forever: it ends the listing.
    return ListPage(resources, number, has_next and bool(resources), calls)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the 429 asks to wait (delta-seconds or an HTTP date), capped; None if unsaid."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _json(path: str, response: requests.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError) as exc:
        raise ProviderAPIError(
            f"Lemon Squeezy API GET {path} returned a body that is not JSON", retryable=True
        ) from exc
