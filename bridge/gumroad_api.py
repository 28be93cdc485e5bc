"""The Gumroad API reads the bridge needs: a sale and a subscriber as they are now.

Pings are not signed, so where an access token is configured the workers grant only
what this read confirms (providers.md §3).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import requests

from bridge.stripe_api import ProviderAPIError

logger = logging.getLogger(__name__)

# Gumroad's API host; the path carries the version (/v2/...).
API_BASE = "https://api.gumroad.com"
# (connect, read) seconds: a slow Gumroad fails the job, and RQ retries it later.
DEFAULT_TIMEOUT = (3.05, 10.0)
# Statuses worth trying again: rate limited, request timeout, or Gumroad's own trouble.
_RETRYABLE_STATUSES = frozenset({408, 429})
# Enough of Gumroad's error message to explain a failure, not enough to flood a log.
_MESSAGE_LIMIT = 200


class GumroadAPI:
    """Reads from Gumroad with the seller's access token (no retries here: RQ retries the job)."""

    def __init__(
        self,
        access_token: str,
        *,
        api_base: str = API_BASE,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
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

    def sale(self, sale_id: str) -> dict[str, Any]:
        """The sale as Gumroad reports it now (``sale_`` prefixes of bridge refs are stripped)."""
        ident = sale_id.removeprefix("sale_")
        if not ident:
            raise ProviderAPIError("Gumroad sale id is empty", retryable=False)
        # Gumroad ids are base64 with `=` padding; quote everything so an id stays one segment.
        body = self._get(f"/v2/sales/{quote(ident, safe='')}", f"sale {ident}")
        sale = body.get("sale")
        if not isinstance(sale, dict):
            raise ProviderAPIError(
                f"Gumroad API returned no sale object for {ident}", retryable=True
            )
        return sale

    def subscriber(self, subscription_id: str) -> dict[str, Any]:
        """A subscription as Gumroad reports it now (``GET /v2/subscribers/:id``)."""
        ident = subscription_id.removeprefix("sub_")
        if not ident:
            raise ProviderAPIError("Gumroad subscription id is empty", retryable=False)
        body = self._get(f"/v2/subscribers/{quote(ident, safe='')}", f"subscriber {ident}")
        subscriber = body.get("subscriber")
        if not isinstance(subscriber, dict):
            raise ProviderAPIError(
                f"Gumroad API returned no subscriber object for {ident}", retryable=True
            )
        return subscriber

    def _get(self, path: str, subject: str) -> dict[str, Any]:
        try:
            # Gumroad's docs pass access_token as a parameter; Doorkeeper (its OAuth server)
            # takes the same token as a Bearer header, which keeps it out of URLs, and so
            # out of request logs and of the messages requests puts in its exceptions.
            response = self._session.get(
                f"{self._api_base}{path}",
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
        if status >= 400:
            retryable = status >= 500 or status in _RETRYABLE_STATUSES
            raise self._failure(response, subject, data, retryable=retryable)
        if not isinstance(data, dict):
            # A 200 that is not Gumroad's JSON is a proxy or an outage page: try later.
            raise self._failure(response, subject, None, retryable=True, reason="not JSON")
        if data.get("success") is not True:
            raise self._failure(response, subject, data, retryable=False)
        return data

    def _failure(
        self,
        response: requests.Response,
        subject: str,
        data: Any,
        *,
        retryable: bool,
        reason: str | None = None,
    ) -> ProviderAPIError:
        status = response.status_code
        detail = reason or (_message(data) if isinstance(data, dict) else None)
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
        return ProviderAPIError(f"{message}: {detail}" if detail else message, retryable=retryable)


def _message(data: dict[str, Any]) -> str | None:
    message = data.get("message") or data.get("error")
    if not isinstance(message, str) or not message.strip():
        return None
    return message.strip()[:_MESSAGE_LIMIT]
