"""The Stripe API reads the bridge needs: a customer's email, fresh subscription state, and
the pages of every subscription, Checkout Session, dispute and recent event (for backfill and
reconcile), and which invoice a payment paid.

List calls follow docs.stripe.com/api/pagination (``limit`` from 1 to 100, ``starting_after``
the last id of the previous page, newest first, ``has_more``) and docs.stripe.com/expand
(list expansions start with ``data.``, four levels deep at most). docs.stripe.com/rate-limits
allows 100 requests a second in live mode, 25 in a sandbox, and 25 a second on any one
endpoint unless noted; its 429 says nothing about when to come back. List calls are paced
under all of those and back off exponentially on 429.

The SDK sends its own API version (``Stripe-Version``, basil or later): there, Charges and
PaymentIntents no longer name their invoice, and the link from a payment to its invoice is
an Invoice Payment (docs.stripe.com/api/invoice-payment/list and
docs.stripe.com/changelog/basil/2025-03-31/add-support-for-multiple-partial-payments-on-invoices).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import stripe

from bridge.sources.pacing import (
    Pacer,
    RateLimited,
    RateLimitExhaustedError,
    paced_call,
)

log = logging.getLogger(__name__)

# The largest ``limit`` a Stripe list accepts (docs.stripe.com/api/pagination).
MAX_PAGE_SIZE = 100
# List reads a minute: 10 a second, under the per-endpoint 25 and a sandbox's 25 overall, so
# a backfill (background work, per Stripe's advice a subset of the limit) leaves room for
# the webhook path's reads made with the same key.
LIST_REQUESTS_PER_MINUTE = 600.0
# The events list takes at most this many ``types`` per request (its ``types`` parameter).
MAX_EVENT_TYPES = 20

Clock = Callable[[], float]


class ProviderAPIError(Exception):
    """A provider API call failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class ListPage:
    """One page of a Stripe list, and when it was asked for."""

    objects: tuple[dict[str, Any], ...]
    has_more: bool
    # Unix time (the caller's clock) just before the request that answered was sent.
    requested_at: float
    # HTTP requests this page took, 429s included.
    calls: int

    @property
    def last_id(self) -> str | None:
        """The id to pass as ``starting_after`` for the next page."""
        last = self.objects[-1].get("id") if self.objects else None
        return last if isinstance(last, str) and last else None


class StripeAPI:
    """Reads from Stripe with the operator's key.

    Single reads are not retried (RQ retries the job). List reads are paced by ``pacer``
    (default: LIST_REQUESTS_PER_MINUTE) and wait out 429s; any other failure raises, and
    the caller resumes from its cursor.
    """

    def __init__(
        self, api_key: str, *, api_base: str | None = None, pacer: Pacer | None = None
    ) -> None:
        options: dict[str, Any] = {"max_network_retries": 0}  # one retry loop: ours
        if api_base is not None:
            options["base_addresses"] = {"api": api_base}
        self._client = stripe.StripeClient(api_key, **options)
        # Every wait of the list reads goes through the pacer: tests inject its sleep.
        self.pacer = pacer or Pacer(LIST_REQUESTS_PER_MINUTE)

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
        return line_item_products(page.to_dict().get("data", []))

    def list_subscriptions(
        self, *, starting_after: str | None = None, clock: Clock = time.time
    ) -> ListPage:
        """A page of every subscription, whatever its status, its customer expanded."""
        params = {"status": "all", "expand": ["data.customer"]}
        method = self._client.v1.subscriptions.list
        return self._list("/v1/subscriptions", method, (), params, starting_after, clock)

    def list_checkout_sessions(
        self, *, starting_after: str | None = None, clock: Clock = time.time
    ) -> ListPage:
        """A page of completed Checkout Sessions with their first line items and their
        payment's latest charge (refunds) expanded."""
        params = {
            "status": "complete",
            "expand": ["data.line_items", "data.payment_intent.latest_charge"],
        }
        method = self._client.v1.checkout.sessions.list
        return self._list("/v1/checkout/sessions", method, (), params, starting_after, clock)

    def list_line_items(
        self, session_id: str, *, starting_after: str | None = None, clock: Clock = time.time
    ) -> ListPage:
        """A page of one Checkout Session's line items (past the expanded first few)."""
        method = self._client.v1.checkout.sessions.line_items.list
        path = f"/v1/checkout/sessions/{session_id}/line_items"
        return self._list(path, method, (session_id,), {}, starting_after, clock)

    def list_disputes(
        self, *, starting_after: str | None = None, clock: Clock = time.time
    ) -> ListPage:
        """A page of every dispute, its charge expanded (who paid)."""
        params = {"expand": ["data.charge"]}
        method = self._client.v1.disputes.list
        return self._list("/v1/disputes", method, (), params, starting_after, clock)

    def list_invoice_payments(self, payment_intent: str, *, clock: Clock = time.time) -> ListPage:
        """The invoice payments of one PaymentIntent, their invoice expanded: which invoice
        (and so which subscription) it paid. A PaymentIntent that paid no invoice has none.

        One request: ``payment[type]=payment_intent`` with ``payment[payment_intent]``
        (docs.stripe.com/api/invoice-payment/list); a page of 100 covers a payment shared by
        several invoices, and any further page is not read.
        """
        params = {
            "payment": {"type": "payment_intent", "payment_intent": payment_intent},
            "expand": ["data.invoice"],
        }
        method = self._client.v1.invoice_payments.list
        return self._list("/v1/invoice_payments", method, (), params, None, clock)

    def list_events(
        self,
        *,
        types: Sequence[str],
        created_gte: int,
        starting_after: str | None = None,
        clock: Clock = time.time,
    ) -> ListPage:
        """A page of the events of ``types`` created at or after ``created_gte``, newest first
        (Stripe keeps 30 days of them)."""
        if not 0 < len(types) <= MAX_EVENT_TYPES:
            raise ValueError(f"Stripe lists events of 1 to {MAX_EVENT_TYPES} types at a time")
        params = {"types": list(types), "created": {"gte": int(created_gte)}}
        method = self._client.v1.events.list
        return self._list("/v1/events", method, (), params, starting_after, clock)

    def _list(
        self,
        path: str,
        method: Any,
        args: tuple[str, ...],
        params: Mapping[str, Any],
        starting_after: str | None,
        clock: Clock,
    ) -> ListPage:
        query = {**params, "limit": MAX_PAGE_SIZE}
        if starting_after:
            query["starting_after"] = starting_after
        requested_at = 0.0  # set by each try, before its request

        def send() -> Any:
            nonlocal requested_at
            requested_at = clock()  # just before the request that is answered
            try:
                return method(*args, query)
            except stripe.RateLimitError as exc:
                # Stripe's 429 names no time to come back: back off, jittered.
                raise RateLimited() from exc
            except stripe.StripeError as exc:
                raise _api_error(exc, path) from exc

        try:
            page, calls = paced_call(self.pacer, send, f"Stripe API GET {path}")
        except RateLimitExhaustedError:
            log.warning("stripe rate limit exhausted path=%s", path)
            raise
        return _page(path, page.to_dict(), requested_at, calls)

    @staticmethod
    def _call(method: Any, object_id: str) -> dict[str, Any]:
        try:
            result = method(object_id)
        except stripe.StripeError as exc:
            raise _api_error(exc) from exc
        data = result.to_dict()
        return data if isinstance(data, dict) else {}


def line_item_products(items: Iterable[Any]) -> tuple[str, ...]:
    """Price and product ids of Checkout line items, in order, each once."""
    found: list[str] = []
    for item in items:
        price = item.get("price") if isinstance(item, dict) else None
        if not isinstance(price, dict):
            continue
        product = price.get("product")
        if isinstance(product, dict):  # an expanded Product
            product = product.get("id")
        for value in (price.get("id"), product):
            if isinstance(value, str) and value and value not in found:
                found.append(value)
    return tuple(found)


def invoice_payment_refs(payments: Iterable[Any]) -> dict[str, str]:
    """``invoice`` and ``subscription`` ids of the invoice a payment paid, from its Invoice
    Payments (invoice expanded or not), preferring a subscription's invoice; {} for none."""
    found: dict[str, str] = {}
    for payment in payments:
        invoice = payment.get("invoice") if isinstance(payment, dict) else None
        invoice_id = object_id(invoice)
        if invoice_id is None:
            continue
        subscription = _invoice_subscription(invoice) if isinstance(invoice, dict) else None
        if subscription is not None:
            return {"invoice": invoice_id, "subscription": subscription}
        found = found or {"invoice": invoice_id}
    return found


def _invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """The subscription of an Invoice: ``parent.subscription_details.subscription`` (basil
    on), or ``subscription`` in the older shape."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    found = details.get("subscription") if isinstance(details, dict) else None
    return object_id(found) or object_id(invoice.get("subscription"))


def object_id(value: Any) -> str | None:
    """An id, whether the field holds it or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _page(path: str, body: Mapping[str, Any], requested_at: float, calls: int) -> ListPage:
    """The page's objects; a body that is not a Stripe list is a glitch worth retrying."""
    data = body.get("data")
    if not isinstance(data, list):
        raise ProviderAPIError(f"Stripe API GET {path} returned no data list", retryable=True)
    objects = tuple(item for item in data if isinstance(item, dict))
    page = ListPage(objects, bool(body.get("has_more")), requested_at, calls)
    # A page that claims more but names no last id would be read again forever: it ends.
    return page if page.last_id is not None else replace(page, has_more=False)


def _api_error(exc: stripe.StripeError, path: str | None = None) -> ProviderAPIError:
    """Connection trouble, 429 and 5xx may pass; other answers will not.

    Messages carry the error class, status, Stripe's error code and request id: never the
    key (Stripe's own message for a wrong key quotes part of it) nor a payload.
    """
    status = getattr(exc, "http_status", None)
    retryable = (
        isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError)
        or status is None
        or status >= 500
    )
    code = getattr(exc, "code", None)
    request_id = getattr(exc, "request_id", None)
    where = f" GET {path}" if path else ""
    details = "".join(
        f" {name}={value}" for name, value in (("code", code), ("request_id", request_id)) if value
    )
    hint = (
        " (the API key was refused: check STRIPE_API_KEY)"
        if isinstance(exc, stripe.AuthenticationError) or status == 401
        else ""
    )
    if path:
        log.warning(
            "stripe call failed path=%s status=%s code=%s request_id=%s retryable=%s",
            path,
            status,
            code,
            request_id,
            retryable,
        )
    return ProviderAPIError(
        f"Stripe API{where} {type(exc).__name__} status={status}{details}{hint}",
        retryable=retryable,
    )
