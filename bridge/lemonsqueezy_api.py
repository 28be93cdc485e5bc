"""The few Lemon Squeezy API reads the bridge needs: a subscription's or an order's state now."""

from __future__ import annotations

import logging
from typing import Any

import requests

from bridge.stripe_api import ProviderAPIError

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.lemonsqueezy.com"
# (connect, read) seconds: connect fails fast, reads allow a slow API.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
# Lemon Squeezy's API is JSON:API and asks for this media type in Accept and Content-Type.
JSON_API = "application/vnd.api+json"


class LemonSqueezyAPI:
    """Reads from Lemon Squeezy with the operator's key (no retries here: RQ retries the job)."""

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        # requests quotes a malformed header value in its error message: refuse such a key
        # here, without naming it, rather than leak it later.
        if not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise ValueError("The Lemon Squeezy API key is empty or not a printable ASCII token")
        self._api_key = api_key
        self._api_base = api_base.rstrip("/")
        self._session = session or requests.Session()
        self._timeout = timeout

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        """The attributes of a Subscription as it is now (``sub_`` prefix optional)."""
        return self._get("subscriptions", _bare_id(subscription_id, "sub_"))

    def order(self, order_id: str) -> dict[str, Any]:
        """The attributes of an Order as it is now (``order_`` prefix optional)."""
        return self._get("orders", _bare_id(order_id, "order_"))

    def close(self) -> None:
        """Close the underlying session."""
        self._session.close()

    def _get(self, collection: str, object_id: str) -> dict[str, Any]:
        path = f"/v1/{collection}/{object_id}"
        # Headers per request, not on the session: an injected session may be shared.
        headers = {
            "Accept": JSON_API,
            "Content-Type": JSON_API,
            "Authorization": f"Bearer {self._api_key}",
        }
        try:
            response = self._session.get(
                self._api_base + path, headers=headers, timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise _api_error(path, exc) from exc
        if not 200 <= response.status_code < 300:
            raise _api_error(path, response)
        return _attributes(path, response)


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
    log.warning(
        "lemonsqueezy call failed path=%s status=%s request_id=%s retryable=%s",
        path,
        status,
        request_id,
        retryable,
    )
    return ProviderAPIError(
        f"Lemon Squeezy API GET {path} status={status} request_id={request_id}",
        retryable=retryable,
    )


def _attributes(path: str, response: requests.Response) -> dict[str, Any]:
    """The resource's ``data.attributes``; anything else is a proxy's page or a glitch."""
    try:
        body = response.json()
    except (ValueError, RecursionError) as exc:
        raise ProviderAPIError(
            f"Lemon Squeezy API GET {path} returned a body that is not JSON", retryable=True
        ) from exc
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attributes, dict):
        raise ProviderAPIError(
            f"Lemon Squeezy API GET {path} returned no data.attributes", retryable=True
        )
    return attributes
