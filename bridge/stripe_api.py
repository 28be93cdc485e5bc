"""The few Stripe API reads the bridge needs: a customer's email, fresh subscription state."""

from __future__ import annotations

from typing import Any

import stripe


class ProviderAPIError(Exception):
    """A provider API call failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class StripeAPI:
    """Reads from Stripe with the operator's key (no retries here: RQ retries the job)."""

    def __init__(self, api_key: str, *, api_base: str | None = None) -> None:
        options: dict[str, Any] = {"max_network_retries": 0}
        if api_base is not None:
            options["base_addresses"] = {"api": api_base}
        self._client = stripe.StripeClient(api_key, **options)

    def customer_email(self, customer_id: str) -> str | None:
        """The email on a Customer (None when the customer has none or was deleted)."""
        customer = self._call(self._client.v1.customers.retrieve, customer_id)
        if customer.get("deleted"):
            return None
        email = customer.get("email")
        return str(email) if email else None

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        """The Subscription as it is now."""
        return self._call(self._client.v1.subscriptions.retrieve, subscription_id)

    def charge(self, charge_id: str) -> dict[str, Any]:
        """The Charge as it is now."""
        return self._call(self._client.v1.charges.retrieve, charge_id)

    def checkout_products(self, session_id: str) -> tuple[str, ...]:
        """Price and product ids of a Checkout Session's line items."""
        try:
            page = self._client.v1.checkout.sessions.line_items.list(session_id, {"limit": 100})
        except stripe.StripeError as exc:
            raise _api_error(exc) from exc
        found: list[str] = []
        for item in page.to_dict().get("data", []):
            price = item.get("price") or {}
            for value in (price.get("id"), price.get("product")):
                if isinstance(value, str) and value not in found:
                    found.append(value)
        return tuple(found)

    @staticmethod
    def _call(method: Any, object_id: str) -> dict[str, Any]:
        try:
            result = method(object_id)
        except stripe.StripeError as exc:
            raise _api_error(exc) from exc
        data = result.to_dict()
        return data if isinstance(data, dict) else {}


def _api_error(exc: stripe.StripeError) -> ProviderAPIError:
    """Connection trouble, 429 and 5xx may pass; other answers will not."""
    status = getattr(exc, "http_status", None)
    retryable = (
        isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError)
        or status is None
        or status >= 500
    )
    return ProviderAPIError(f"Stripe API {type(exc).__name__} status={status}", retryable=retryable)
