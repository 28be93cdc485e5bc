"""Stripe's REST API for the reads the bridge makes, as Stripe's public docs describe it.

- docs.stripe.com/api/authentication: the secret key as ``Authorization: Bearer sk_...``
  (or HTTP Basic with the key as user name); none, or a wrong one: 401 with Stripe's
  ``invalid_request_error`` bodies ("You did not provide an API key ...", "Invalid API Key
  provided: sk_test_****...").
- docs.stripe.com/api/pagination: ``limit`` (default 10, from 1 to 100), ``starting_after``
  and ``ending_before`` (object ids, one or the other), newest first, and the list shape
  ``{"object": "list", "url", "has_more", "data"}``.
- docs.stripe.com/expand and /api/expanding_objects: ``expand[]``; list expansions start
  with ``data.``; four levels at most, ``data`` included (code
  ``property_expansion_max_depth``); a property that cannot be expanded is a 400.
- docs.stripe.com/api/errors: ``{"error": {"type", "code", "message", "param",
  "doc_url"}}``; a ``Request-Id`` header on every answer.
- docs.stripe.com/rate-limits and /error-codes#rate-limit: 429 with code ``rate_limit`` and
  no Retry-After.
- docs.stripe.com/api/subscriptions/list (``status``: by default all but canceled; ``all``;
  ``ended`` = canceled and incomplete_expired), /api/checkout/sessions/list (``status``),
  /api/checkout/sessions/line_items, /api/disputes/list, /api/events/list (``types``: up to
  20, or ``type`` with ``*``, not both; ``created[gte|gt|lte|lt]``; 30 days kept),
  /api/invoice-payment/list (``invoice``; ``payment[type]``, required with ``payment``,
  ``payment_intent`` or ``payment_record``, with ``payment[payment_intent]`` or
  ``payment[payment_record]``; ``status`` open, paid or canceled; ``created``).
- docs.stripe.com/changelog/basil/2025-03-31/add-support-for-multiple-partial-payments-on-invoices
  and /api/invoice-payment: Invoices carry no ``payment_intent`` or ``charge``,
  PaymentIntents and Charges no ``invoice``; an Invoice Payment links the two
  (``payment.payment_intent``, ``invoice``). A subscription's Invoice names it in
  ``parent.subscription_details.subscription``.
- A subscription is billed at once: its first invoice (``billing_reason``
  ``subscription_create``) is paid by a PaymentIntent and its Charge (a trial's is $0 and
  has no payment; an ``incomplete`` subscription's stays open, an ``incomplete_expired``
  one's is void), and each renewal (``subscription_cycle``, :meth:`StripeStandIn.renew`)
  likewise; ``invoice.paid`` is sent for each paid one.
- docs.stripe.com/api/webhook_endpoints: list, create (``url``, ``enabled_events``; the
  signing ``secret`` only in the create answer), retrieve, update (``url``,
  ``enabled_events``, ``disabled`` -> ``status``) and delete.
- Objects shaped as shared/fixtures/stripe (API version 2025-06-30.basil); test keys see
  test-mode objects (``livemode`` false), live keys live ones. Deleting a customer cancels
  its subscriptions at once and leaves ``{"id", "object": "customer", "deleted": true}``.
Chosen here, not in the docs: ``enabled_events`` are checked by shape, not against
Stripe's enum, and a webhook URL is never refused; the wording of the 400s for more than 20
``types``, an unknown ``status`` and an unknown ``payment[type]``; only the expansions the
bridge needs are served (any other answers 400, as an unknown property does); of the events
Stripe sends, only those the bridge reads or that tests look for (no ``invoice.created``,
``payment_intent.*``, ``charge.succeeded``...).
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, jsonify, request

API_VERSION = "2025-06-30.basil"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_EXPAND_DEPTH = 4
MAX_EVENT_TYPES = 20
EVENTS_RETENTION_SECONDS = 30 * 86400
SUBSCRIPTION_STATUSES = (
    "active", "trialing", "past_due", "canceled", "unpaid", "incomplete",
    "incomplete_expired", "paused",
)  # fmt: skip
DISPUTE_STATUSES = (
    "warning_needs_response", "warning_under_review", "warning_closed", "needs_response",
    "under_review", "won", "lost", "prevented",
)  # fmt: skip
# (price id, product id) of the docs' examples: a monthly plan, a one-time purchase.
MONTHLY = ("price_1MowQULkdIwHu7ixraBm864M", "prod_NjpI7DbZx6AlWQ")
ONE_TIME = ("price_1MotwRLkdIwHu7ixYcPLm5uZ", "prod_NWjs8kKbJWmuuc")
CLOSED_DISPUTES = frozenset({"warning_closed", "won", "lost", "prevented"})
INVOICE_PAYMENT_STATUSES = ("canceled", "open", "paid")
INVOICE_PAYMENT_TYPES = ("payment_intent", "payment_record")
# A subscription's billing period (the stand-in's prices are all monthly).
PERIOD_SECONDS = 30 * 86400
# What each object type can expand, into which type ("line_items" is includable).
_EXPANDABLE: dict[str, dict[str, str]] = {
    "subscription": {"customer": "customer", "latest_invoice": "invoice"},
    "invoice": {"customer": "customer"},
    "invoice_payment": {"invoice": "invoice"},
    "checkout.session": {
        "customer": "customer", "payment_intent": "payment_intent",
        "subscription": "subscription", "line_items": "line_items",
    },
    "payment_intent": {"customer": "customer", "latest_charge": "charge"},
    "charge": {"customer": "customer", "payment_intent": "payment_intent"},
    "dispute": {"charge": "charge", "payment_intent": "payment_intent"},
}  # fmt: skip
_PREFIXES = {
    "customer": "cus", "subscription": "sub", "checkout.session": "cs", "payment_intent": "pi",
    "charge": "ch", "dispute": "dp", "event": "evt", "item": "li", "subscription_item": "si",
    "refund": "re", "invoice": "in", "invoice_payment": "inpay", "line_item": "il",
    "webhook_endpoint": "we",
}  # fmt: skip
# How a new subscription's first invoice ends, by the subscription's status (else paid).
_FIRST_INVOICE = {"incomplete": "open", "incomplete_expired": "void"}
# An event type as Stripe spells them: customer.subscription.updated, v1.billing.meter...
_EVENT_NAME = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)+")
_ARRAY_KEY = re.compile(r"^([a-z_]+)\[(\d*|[a-z_]+)\]$")
_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)
_RATE_LIMITED = (
    "Request rate limit exceeded. Learn more about rate limits here "
    "https://stripe.com/docs/rate-limits."
)


@dataclass(frozen=True)
class Call:
    """One request the stand-in answered."""

    method: str
    path: str
    args: tuple[tuple[str, str], ...]  # the query, in order
    status: int

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (the last value of each)."""
        return dict(self.args)

    def array(self, name: str) -> list[str]:
        """The values of an array parameter, sent as ``name[]`` or ``name[0]``, ``name[1]``..."""
        return _array(self.args, name)


class _Refusal(Exception):
    """An answer in Stripe's error shape."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        error: dict[str, Any] = {"message": message, "type": "invalid_request_error"}
        if code:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            error["param"] = param
        self.body = {"error": error}


class StripeStandIn:
    """Customers, subscriptions and their invoices, Checkout Sessions, payments, disputes and
    their events."""

    def __init__(
        self,
        api_key: str = "sk_test_standin4eC39HqLyjWDarjtT1zdp7dc",
        *,
        clock: Callable[[], float] = time.time,
        requests_per_second: int | None = None,
        rate_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.livemode = api_key.startswith(("sk_live_", "rk_live_"))
        self.requests_per_second = requests_per_second
        self.calls: list[Call] = []
        # Every event each seeding or change made, oldest first; served by GET /v1/events.
        self.events: list[dict[str, Any]] = []
        self._clock = clock
        self._rate_clock = rate_clock
        self._lock = threading.RLock()
        self._serial = 0
        self._forced = 0  # 429s owed to the next requests
        self._window: tuple[int, int] = (-1, 0)  # (second, requests in it)
        self._objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _EXPANDABLE}
        self._objects["customer"] = {}
        self._objects["webhook_endpoint"] = {}
        self._line_items: dict[str, list[dict[str, Any]]] = {}
        self.app = self._create_app()

    # -- seeding ----------------------------------------------------------------------

    def add_customer(
        self, email: str | None = "jenny.rosen@example.com", *, name: str | None = "Jenny Rosen"
    ) -> str:
        """A new Customer."""
        with self._lock:
            customer = {
                "id": self._id("customer"), "object": "customer", "created": self._now(),
                "email": email, "name": name, "livemode": self.livemode, "metadata": {},
            }  # fmt: skip
            return self._store("customer.created", customer)

    def delete_customer(self, customer_id: str) -> None:
        """Delete a Customer: its live subscriptions are canceled at once, as Stripe does."""
        with self._lock:
            for sub in list(self._objects["subscription"].values()):
                if sub["customer"] == customer_id and sub["status"] != "canceled":
                    self.update_subscription(sub["id"], status="canceled")
            last = self._objects["customer"][customer_id]
            self._objects["customer"][customer_id] = {
                "id": customer_id,
                "object": "customer",
                "deleted": True,
            }
            self._emit("customer.deleted", last)

    def add_subscription(
        self,
        customer_id: str,
        *,
        status: str = "active",
        prices: Sequence[tuple[str, str]] = (MONTHLY,),
        cancel_at_period_end: bool = False,
    ) -> str:
        """A new Subscription of ``prices`` ((price id, product id) each), in ``status``."""
        if status not in SUBSCRIPTION_STATUSES:
            raise ValueError(f"not a subscription status: {status}")
        with self._lock:
            now, sub_id = self._now(), self._id("subscription")
            items = [
                {"id": self._id("subscription_item"), "object": "subscription_item",
                 "created": now, "current_period_start": now,
                 "current_period_end": now + 30 * 86400, "metadata": {},
                 "price": self._price(price, product, recurring=True), "quantity": 1,
                 "subscription": sub_id}
                for price, product in prices
            ]  # fmt: skip
            sub = {
                "id": sub_id, "object": "subscription", "cancel_at": None,
                "cancel_at_period_end": cancel_at_period_end, "canceled_at": None,
                "collection_method": "charge_automatically", "created": now, "currency": "usd",
                "customer": customer_id, "ended_at": None,
                "items": {"object": "list", "data": items, "has_more": False,
                          "total_count": len(items),
                          "url": f"/v1/subscription_items?subscription={sub_id}"},
                "latest_invoice": None, "livemode": self.livemode, "metadata": {},
                "pause_collection": None, "start_date": now, "status": status,
            }  # fmt: skip
            self._end(sub)
            # Billed at once: the first invoice exists when the subscription does.
            invoice = self._bill(sub, "subscription_create", _FIRST_INVOICE.get(status, "paid"))
            self._store("customer.subscription.created", sub)
            self._store("invoice.paid" if invoice["status"] == "paid" else "", invoice)
            return sub_id

    def renew(self, sub_id: str) -> str:
        """The subscription's next period, billed and paid (a trial ends: it turns active);
        the renewal invoice's id. Stripe sends ``customer.subscription.updated`` (the new
        period) and ``invoice.paid``."""
        with self._lock:
            sub = self._objects["subscription"][sub_id]
            if sub["status"] not in ("active", "trialing"):
                raise ValueError(f"a {sub['status']} subscription does not renew here")
            for item in sub["items"]["data"]:
                item["current_period_start"] = item["current_period_end"]
                item["current_period_end"] += PERIOD_SECONDS
            sub["status"] = "active"
            invoice = self._bill(sub, "subscription_cycle", "paid")
            self._emit("customer.subscription.updated", sub)
            return self._store("invoice.paid", invoice)

    def update_subscription(
        self, sub_id: str, *, status: str | None = None, cancel_at_period_end: bool | None = None
    ) -> None:
        """Change a Subscription; its event is the one Stripe sends for that change."""
        with self._lock:
            sub = self._objects["subscription"][sub_id]
            before = sub["status"]
            if status is not None:
                if status not in SUBSCRIPTION_STATUSES:
                    raise ValueError(f"not a subscription status: {status}")
                sub["status"] = status
            if cancel_at_period_end is not None:
                sub["cancel_at_period_end"] = cancel_at_period_end
            self._end(sub)
            kind = "customer.subscription.updated"
            if sub["status"] == "canceled" and before != "canceled":
                kind = "customer.subscription.deleted"
            elif sub["status"] == "paused" and before != "paused":
                kind = "customer.subscription.paused"
            elif before == "paused" and sub["status"] != "paused":
                kind = "customer.subscription.resumed"
            self._emit(kind, sub)

    def add_checkout(
        self,
        *,
        customer_id: str | None = None,
        email: str | None = "jenny.rosen@example.com",
        name: str | None = "Jenny Rosen",
        mode: str = "payment",
        payment_status: str = "paid",
        status: str = "complete",
        prices: Sequence[tuple[str, str]] = (ONE_TIME,),
        subscription_id: str | None = None,
        amount: int = 2000,
    ) -> str:
        """A Checkout Session; in payment mode with its PaymentIntent (and Charge once paid).

        With ``customer_id`` the details are the Customer's; without, a guest checkout.
        """
        with self._lock:
            now, session_id = self._now(), self._id("checkout.session")
            if customer_id is not None:
                customer = self._objects["customer"][customer_id]
                email, name = customer.get("email"), customer.get("name")
            intent_id = None
            # A free checkout (no_payment_required) makes no PaymentIntent at all.
            if (
                mode == "payment"
                and status == "complete"
                and payment_status != "no_payment_required"
            ):
                intent_id = self._payment(
                    customer_id, email, name, amount, paid=payment_status == "paid"
                )
            self._line_items[session_id] = [
                {"id": self._id("item"), "object": "item", "amount_subtotal": amount,
                 "amount_total": amount, "currency": "usd", "description": "Membership",
                 "price": self._price(price, product, recurring=mode == "subscription"),
                 "quantity": 1}
                for price, product in prices
            ]  # fmt: skip
            session = {
                "id": session_id, "object": "checkout.session", "amount_subtotal": amount,
                "amount_total": amount, "created": now, "currency": "usd",
                "customer": customer_id,
                "customer_details": {"address": None, "email": email, "name": name,
                                     "phone": None, "tax_exempt": "none", "tax_ids": []}
                if status == "complete" else None,
                "customer_email": None, "expires_at": now + 86400,
                "invoice": self._first_invoice(subscription_id) if mode == "subscription"
                else None,
                "livemode": self.livemode, "metadata": {}, "mode": mode,
                "payment_intent": intent_id, "payment_status": payment_status,
                "status": status, "subscription": subscription_id, "url": None,
            }  # fmt: skip
            kind = "checkout.session.completed" if status == "complete" else ""
            return self._store(kind, session)

    def settle_checkout(self, session_id: str, *, succeeded: bool) -> None:
        """A delayed payment (``payment_status`` unpaid) succeeds or fails."""
        with self._lock:
            session = self._objects["checkout.session"][session_id]
            intent = self._objects["payment_intent"][session["payment_intent"]]
            if succeeded:
                session["payment_status"] = "paid"
                intent["status"] = "succeeded"
                intent["latest_charge"] = self._charge(intent)
            else:
                intent["status"] = "requires_payment_method"
            outcome = "succeeded" if succeeded else "failed"
            self._emit(f"checkout.session.async_payment_{outcome}", session)

    def refund(self, charge_id: str, amount: int | None = None) -> None:
        """Refund ``amount`` (default: what is left); ``refunded`` turns true once in full."""
        with self._lock:
            charge = self._objects["charge"][charge_id]
            left = charge["amount"] - charge["amount_refunded"]
            part = left if amount is None else min(amount, left)
            charge["amount_refunded"] += part
            charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
            refunds = charge["refunds"]
            refunds["data"].insert(0, {
                "id": self._id("refund"), "object": "refund", "amount": part,
                "charge": charge_id, "created": self._now(), "currency": "usd",
                "payment_intent": charge["payment_intent"], "status": "succeeded",
            })  # fmt: skip
            refunds["total_count"] = len(refunds["data"])
            self._emit("charge.refunded", charge)

    def add_dispute(self, charge_id: str, *, status: str = "needs_response") -> str:
        """A dispute of a Charge (an inquiry for the ``warning_*`` statuses)."""
        if status not in DISPUTE_STATUSES:
            raise ValueError(f"not a dispute status: {status}")
        with self._lock:
            charge = self._objects["charge"][charge_id]
            charge["disputed"] = True
            dispute = {
                "id": self._id("dispute"), "object": "dispute", "amount": charge["amount"],
                "balance_transactions": [], "charge": charge_id, "created": self._now(),
                "currency": "usd", "evidence_details": {"has_evidence": False},
                "is_charge_refundable": False, "livemode": self.livemode, "metadata": {},
                "payment_intent": charge["payment_intent"], "reason": "fraudulent",
                "status": status,
            }  # fmt: skip
            return self._store("charge.dispute.created", dispute)

    def update_dispute(self, dispute_id: str, status: str) -> None:
        """Move a dispute on (``charge.dispute.closed`` once decided)."""
        if status not in DISPUTE_STATUSES:
            raise ValueError(f"not a dispute status: {status}")
        with self._lock:
            dispute = self._objects["dispute"][dispute_id]
            dispute["status"] = status
            closed = status in CLOSED_DISPUTES
            self._emit("charge.dispute.closed" if closed else "charge.dispute.updated", dispute)

    def patch(self, kind: str, object_id: str, **fields: Any) -> None:
        """Overwrite fields of a stored object as given (a shape the docs do not promise)."""
        with self._lock:
            self._objects[kind][object_id].update(fields)

    def throttle(self, times: int = 1) -> None:
        """Answer the next ``times`` authenticated requests with 429."""
        with self._lock:
            self._forced += times

    # -- webhook endpoints (docs.stripe.com/api/webhook_endpoints) ---------------------

    def add_webhook_endpoint(
        self, url: str, events: Sequence[str], *, status: str = "enabled"
    ) -> str:
        """An endpoint made earlier (in the Dashboard, say); its id."""
        with self._lock:
            endpoint = self._endpoint(url, events, description=None, api_version=None)
            endpoint["status"] = status
            return self._store("", endpoint)

    def webhook_endpoints(self) -> list[dict[str, Any]]:
        """Copies of every endpoint, oldest first, its signing secret under ``_secret``."""
        with self._lock:
            return copy.deepcopy(list(self._objects["webhook_endpoint"].values()))

    def _webhook_endpoints(self) -> Response:
        if request.method == "GET":
            endpoints = self._newest("webhook_endpoint")
            return self._listing("/v1/webhook_endpoints", "webhook_endpoint", endpoints)
        _check_form({"url", "enabled_events", "description", "api_version", "metadata", "connect"})
        url = request.form.get("url")
        if not url:
            raise _Refusal(
                400, "Missing required param: url.", code="parameter_missing", param="url"
            )
        events = _array(tuple(request.form.items(multi=True)), "enabled_events")
        if not events:
            raise _Refusal(
                400,
                "Missing required param: enabled_events.",
                code="parameter_missing",
                param="enabled_events",
            )
        _check_events(events)
        with self._lock:
            endpoint = self._endpoint(
                url,
                events,
                description=request.form.get("description"),
                api_version=request.form.get("api_version"),
            )
            self._store("", endpoint)
            # The only answer that carries the secret.
            return jsonify({**self._render(endpoint, []), "secret": endpoint["_secret"]})

    def _webhook_endpoint(self, object_id: str) -> Response:
        with self._lock:
            found = self._objects["webhook_endpoint"].get(object_id)
            if found is None:
                raise _Refusal(
                    404,
                    f"No such webhook endpoint: '{object_id}'",
                    code="resource_missing",
                    param="webhook_endpoint",
                )
            if request.method == "DELETE":
                del self._objects["webhook_endpoint"][object_id]
                return jsonify({"id": object_id, "object": "webhook_endpoint", "deleted": True})
            if request.method == "POST":
                _check_form({"url", "enabled_events", "disabled", "description", "metadata"})
                events = _array(tuple(request.form.items(multi=True)), "enabled_events")
                if events:
                    _check_events(events)
                    found["enabled_events"] = events
                if request.form.get("url"):
                    found["url"] = request.form["url"]
                disabled = request.form.get("disabled")
                if disabled is not None:
                    if disabled not in ("true", "false"):
                        raise _Refusal(400, f"Invalid boolean: {disabled}", param="disabled")
                    found["status"] = "disabled" if disabled == "true" else "enabled"
                if "description" in request.form:
                    found["description"] = request.form["description"] or None
            else:
                _check_params(set())
            return jsonify(self._render(found, []))

    def _endpoint(
        self, url: str, events: Sequence[str], *, description: str | None, api_version: str | None
    ) -> dict[str, Any]:
        return {
            "id": self._id("webhook_endpoint"), "object": "webhook_endpoint",
            "api_version": api_version, "application": None, "created": self._now(),
            "description": description, "enabled_events": list(events),
            "livemode": self.livemode, "metadata": {}, "status": "enabled", "url": url,
            "_secret": f"whsec_{secrets.token_hex(16)}",
        }  # fmt: skip

    # -- reading the state back ---------------------------------------------------------

    def get(self, kind: str, object_id: str) -> dict[str, Any]:
        """A copy of a stored object (``kind`` as its ``object`` field says)."""
        with self._lock:
            return copy.deepcopy(self._objects[kind][object_id])

    def charge_of(self, session_id: str) -> str:
        """The id of the charge that paid a Checkout Session."""
        with self._lock:
            session = self._objects["checkout.session"][session_id]
            charge: str = self._objects["payment_intent"][session["payment_intent"]][
                "latest_charge"
            ]
            return charge

    def invoices_of(self, sub_id: str) -> list[str]:
        """The ids of a subscription's invoices, oldest first."""
        with self._lock:
            return [
                invoice["id"]
                for invoice in self._objects["invoice"].values()
                if invoice["parent"]["subscription_details"]["subscription"] == sub_id
            ]

    def charge_of_invoice(self, invoice_id: str) -> str:
        """The id of the charge that paid an invoice (through its invoice payment)."""
        with self._lock:
            for payment in self._objects["invoice_payment"].values():
                if payment["invoice"] == invoice_id and payment["status"] == "paid":
                    intent = self._objects["payment_intent"][payment["payment"]["payment_intent"]]
                    charge: str = intent["latest_charge"]
                    return charge
        raise KeyError(f"no paid invoice payment for {invoice_id}")

    def calls_to(self, path: str) -> list[Call]:
        """The calls made to ``path``, in order."""
        with self._lock:
            return [call for call in self.calls if call.path == path]

    # -- the store ----------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock())

    def _id(self, kind: str) -> str:
        self._serial += 1
        mode = "live" if self.livemode else "test"
        middle = f"{mode}_" if kind == "checkout.session" else ""
        return f"{_PREFIXES[kind]}_{middle}1Standin{self._serial:08d}"

    def _store(self, event_type: str, obj: dict[str, Any]) -> str:
        self._objects[obj["object"]][obj["id"]] = obj
        if event_type:
            self._emit(event_type, obj)
        return str(obj["id"])

    def _emit(self, event_type: str, obj: dict[str, Any]) -> None:
        self.events.append({
            "id": self._id("event"), "object": "event", "api_version": API_VERSION,
            "created": self._now(), "data": {"object": copy.deepcopy(obj)},
            "livemode": self.livemode, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": event_type,
        })  # fmt: skip

    def _end(self, sub: dict[str, Any]) -> None:
        """A subscription that reached ``canceled`` is dated, as Stripe dates it."""
        if sub["status"] == "canceled" and sub["ended_at"] is None:
            sub["canceled_at"] = sub["ended_at"] = self._now()

    def _price(self, price_id: str, product_id: str, *, recurring: bool) -> dict[str, Any]:
        return {
            "id": price_id, "object": "price", "active": True, "currency": "usd",
            "livemode": self.livemode, "product": product_id,
            "recurring": {"interval": "month", "interval_count": 1} if recurring else None,
            "type": "recurring" if recurring else "one_time", "unit_amount": 2000,
        }  # fmt: skip

    def _payment(
        self,
        customer_id: str | None,
        email: str | None,
        name: str | None,
        amount: int,
        *,
        paid: bool,
        status: str | None = None,
    ) -> str:
        intent = {
            "id": self._id("payment_intent"), "object": "payment_intent", "amount": amount,
            "created": self._now(), "currency": "usd", "customer": customer_id,
            "latest_charge": None, "livemode": self.livemode, "metadata": {},
            "receipt_email": email,
            "status": status or ("succeeded" if paid else "processing"),
            "_payer": {"email": email, "name": name},
        }  # fmt: skip
        if paid:
            intent["latest_charge"] = self._charge(intent)
        return self._store("", intent)

    def _charge(self, intent: dict[str, Any]) -> str:
        payer = intent["_payer"]
        charge_id = self._id("charge")
        charge = {
            "id": charge_id, "object": "charge", "amount": intent["amount"],
            "amount_captured": intent["amount"], "amount_refunded": 0,
            "billing_details": {"address": None, "email": payer["email"],
                                "name": payer["name"], "phone": None},
            "captured": True, "created": self._now(), "currency": "usd",
            "customer": intent["customer"], "disputed": False, "livemode": self.livemode,
            "paid": True, "payment_intent": intent["id"], "receipt_email": payer["email"],
            "refunded": False,
            "refunds": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                        "url": f"/v1/charges/{charge_id}/refunds"},
            "status": "succeeded",
        }  # fmt: skip
        return self._store("", charge)

    def _first_invoice(self, sub_id: str | None) -> str:
        """A subscription's first invoice (a made-up id when the session names none)."""
        if sub_id is None or sub_id not in self._objects["subscription"]:
            return self._id("invoice")
        return self.invoices_of(sub_id)[0]

    def _bill(self, sub: dict[str, Any], reason: str, outcome: str) -> dict[str, Any]:
        """An invoice of the subscription's current period, stored (no event) and made the
        latest; ``outcome`` paid (by a PaymentIntent and its Charge, unless it is $0),
        open (its PaymentIntent waits for a payment method) or void."""
        now, invoice_id = self._now(), self._id("invoice")
        customer = self._objects["customer"].get(sub["customer"], {})
        email, name = customer.get("email"), customer.get("name")
        trial = sub["status"] == "trialing" and reason == "subscription_create"
        items = sub["items"]["data"]
        lines = [
            {"id": self._id("line_item"), "object": "line_item",
             "amount": 0 if trial else item["price"]["unit_amount"], "currency": "usd",
             "description": "Membership",
             "invoice": invoice_id, "livemode": self.livemode, "metadata": {},
             "parent": {"invoice_item_details": None, "type": "subscription_item_details",
                        "subscription_item_details": {
                            "invoice_item": None, "proration": False,
                            "proration_details": {"credited_items": None},
                            "subscription": sub["id"], "subscription_item": item["id"]}},
             "period": {"end": item["current_period_end"],
                        "start": item["current_period_start"]},
             "pricing": {"price_details": {"price": item["price"]["id"],
                                           "product": item["price"]["product"]},
                         "type": "price_details",
                         "unit_amount_decimal": str(item["price"]["unit_amount"])},
             "quantity": 1}
            for item in items
        ]  # fmt: skip
        total = sum(line["amount"] for line in lines)
        paid = outcome == "paid"
        # An invoice's own period is the one before its lines' (none before the first).
        start = items[0]["current_period_start"] if items else now
        previous = start - PERIOD_SECONDS if reason == "subscription_cycle" else start
        invoice = {
            "id": invoice_id, "object": "invoice", "amount_due": total,
            "amount_paid": total if paid else 0, "amount_remaining": 0 if paid else total,
            "attempt_count": 1 if total and paid else 0, "attempted": paid,
            "billing_reason": reason, "collection_method": "charge_automatically",
            "created": now, "currency": "usd", "customer": sub["customer"],
            "customer_email": email, "customer_name": name,
            "lines": {"object": "list", "data": lines, "has_more": False,
                      "total_count": len(lines), "url": f"/v1/invoices/{invoice_id}/lines"},
            "livemode": self.livemode, "metadata": {},
            "parent": {"quote_details": None, "type": "subscription_details",
                       "subscription_details": {"metadata": {}, "subscription": sub["id"]}},
            "period_end": start, "period_start": previous,
            "status": outcome, "subtotal": total, "total": total,
            "status_transitions": {"finalized_at": now, "marked_uncollectible_at": None,
                                   "paid_at": now if paid else None,
                                   "voided_at": now if outcome == "void" else None},
        }  # fmt: skip
        if total:
            intent_status = {"open": "requires_payment_method", "void": "canceled"}.get(outcome)
            intent_id = self._payment(
                sub["customer"], email, name, total, paid=paid, status=intent_status
            )
            payment_status = {"paid": "paid", "void": "canceled"}.get(outcome, "open")
            self._store("", {
                "id": self._id("invoice_payment"), "object": "invoice_payment",
                "amount_paid": total if paid else None, "amount_requested": total,
                "created": now, "currency": "usd", "invoice": invoice_id, "is_default": True,
                "livemode": self.livemode,
                "payment": {"type": "payment_intent", "payment_intent": intent_id},
                "status": payment_status,
                "status_transitions": {"canceled_at": now if outcome == "void" else None,
                                       "paid_at": now if paid else None},
            })  # fmt: skip
        self._objects["invoice"][invoice_id] = invoice
        sub["latest_invoice"] = invoice_id
        return invoice

    # -- the API --------------------------------------------------------------------------

    def _create_app(self) -> Flask:
        app = Flask("stripe_standin")
        app.before_request(self._gate)
        app.after_request(self._record)
        app.register_error_handler(_Refusal, _refusal)
        app.register_error_handler(404, _unrecognized)
        app.register_error_handler(405, _unrecognized)
        routes: list[tuple[str, Callable[..., Any]]] = [
            ("/v1/customers/<object_id>", lambda object_id: self._retrieve("customer", object_id)),
            ("/v1/subscriptions/<object_id>",
             lambda object_id: self._retrieve("subscription", object_id)),
            ("/v1/charges/<object_id>", lambda object_id: self._retrieve("charge", object_id)),
            ("/v1/invoices/<object_id>", lambda object_id: self._retrieve("invoice", object_id)),
            ("/v1/invoice_payments/<object_id>",
             lambda object_id: self._retrieve("invoice_payment", object_id)),
            ("/v1/invoice_payments", self._invoice_payments),
            ("/v1/subscriptions", self._subscriptions),
            ("/v1/checkout/sessions", self._sessions),
            ("/v1/checkout/sessions/<object_id>/line_items", self._session_line_items),
            ("/v1/disputes", self._disputes),
            ("/v1/events", self._events),
        ]  # fmt: skip
        for rule, view in routes:
            app.add_url_rule(rule, rule, view, methods=["GET"])
        app.add_url_rule(
            "/v1/webhook_endpoints", "webhook_endpoints", self._webhook_endpoints,
            methods=["GET", "POST"],
        )  # fmt: skip
        app.add_url_rule(
            "/v1/webhook_endpoints/<object_id>", "webhook_endpoint", self._webhook_endpoint,
            methods=["GET", "POST", "DELETE"],
        )  # fmt: skip
        return app

    def _gate(self) -> None:
        """Auth first, then the rate limiter, as Stripe counts requests per account."""
        g.request_id = f"req_{self._next_request()}"
        if self._key() != self.api_key:
            given = self._key()
            if not given:
                raise _Refusal(401, _NO_KEY)
            masked = given[:8] + "*" * max(len(given) - 12, 0) + given[-4:]
            raise _Refusal(401, f"Invalid API Key provided: {masked}")
        with self._lock:
            if self._forced > 0:
                self._forced -= 1
                raise _Refusal(429, _RATE_LIMITED, code="rate_limit")
            if self.requests_per_second is not None:
                second = int(self._rate_clock())
                start, count = self._window
                count = count + 1 if start == second else 1
                self._window = (second, count)
                if count > self.requests_per_second:
                    raise _Refusal(429, _RATE_LIMITED, code="rate_limit")

    def _next_request(self) -> str:
        with self._lock:
            self._serial += 1
            return f"Standin{self._serial:08d}"

    def _key(self) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(value).decode().partition(":")[0]
            except ValueError:
                return ""
        return ""

    def _record(self, response: Response) -> Response:
        response.headers["Request-Id"] = g.get("request_id", "req_unknown")
        with self._lock:
            args = tuple((k, v) for k, values in request.args.lists() for v in values)
            self.calls.append(Call(request.method, request.path, args, response.status_code))
        return response

    def _retrieve(self, kind: str, object_id: str) -> Response:
        _check_params(set())
        paths = _expansions(kind, listing=False)
        with self._lock:
            found = self._objects[kind].get(object_id)
            if found is None:
                raise _Refusal(
                    404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
                )
            return jsonify(self._render(found, paths))

    def _subscriptions(self) -> Response:
        status = request.args.get("status")
        allowed = {*SUBSCRIPTION_STATUSES, "all", "ended"}
        if status is not None and status not in allowed:
            raise _Refusal(
                400, "Invalid status: must be one of " + ", ".join(sorted(allowed)), param="status"
            )
        subs = self._newest("subscription")
        if status is None:
            subs = [s for s in subs if s["status"] != "canceled"]
        elif status == "ended":
            subs = [s for s in subs if s["status"] in ("canceled", "incomplete_expired")]
        elif status != "all":
            subs = [s for s in subs if s["status"] == status]
        return self._listing("/v1/subscriptions", "subscription", subs, {"status"})

    def _sessions(self) -> Response:
        status = request.args.get("status")
        if status is not None and status not in ("open", "complete", "expired"):
            raise _Refusal(
                400, "Invalid status: must be one of complete, expired, or open", param="status"
            )
        sessions = [s for s in self._newest("checkout.session") if status in (None, s["status"])]
        return self._listing("/v1/checkout/sessions", "checkout.session", sessions, {"status"})

    def _disputes(self) -> Response:
        return self._listing("/v1/disputes", "dispute", self._newest("dispute"))

    def _invoice_payments(self) -> Response:
        payment = {
            match.group(2): value
            for key, value in request.args.items()
            if (match := _ARRAY_KEY.match(key)) and match.group(1) == "payment"
        }
        for name in payment:
            if name not in ("type", "payment_intent", "payment_record"):
                raise _Refusal(
                    400, f"Received unknown parameter: payment[{name}]", param=f"payment[{name}]"
                )
        if payment and "type" not in payment:
            raise _Refusal(
                400,
                "Missing required param: payment[type].",
                code="parameter_missing",
                param="payment[type]",
            )
        if payment and payment["type"] not in INVOICE_PAYMENT_TYPES:
            raise _Refusal(
                400,
                "Invalid payment[type]: must be one of " + " or ".join(INVOICE_PAYMENT_TYPES),
                param="payment[type]",
            )
        status = request.args.get("status")
        if status is not None and status not in INVOICE_PAYMENT_STATUSES:
            raise _Refusal(
                400,
                "Invalid status: must be one of " + ", ".join(INVOICE_PAYMENT_STATUSES),
                param="status",
            )
        invoice = request.args.get("invoice")
        created = _created_filter()
        found = [
            p for p in self._newest("invoice_payment")
            if invoice in (None, p["invoice"]) and status in (None, p["status"])
            and created(p["created"])
            and all(p["payment"].get(name) == value for name, value in payment.items())
        ]  # fmt: skip
        filters = {"invoice", "payment", "status", "created"}
        return self._listing("/v1/invoice_payments", "invoice_payment", found, filters)

    def _session_line_items(self, object_id: str) -> Response:
        with self._lock:
            if object_id not in self._line_items:
                raise _Refusal(
                    404,
                    f"No such checkout.session: '{object_id}'",
                    code="resource_missing",
                    param="session",
                )
            items = list(self._line_items[object_id])
        return self._listing(f"/v1/checkout/sessions/{object_id}/line_items", "item", items)

    def _events(self) -> Response:
        types = _array(tuple(request.args.items(multi=True)), "types")
        single = request.args.get("type")
        if types and single:
            raise _Refusal(400, "You may pass either type or types, but not both.", param="types")
        if len(types) > MAX_EVENT_TYPES:
            raise _Refusal(400, f"You may pass at most {MAX_EVENT_TYPES} types.", param="types")
        oldest = self._now() - EVENTS_RETENTION_SECONDS
        created = _created_filter()
        found = [
            e for e in reversed(self.events)
            if e["created"] >= oldest and created(e["created"])
            and (not types or e["type"] in types)
            and (single is None or fnmatch.fnmatchcase(e["type"], single))
        ]  # fmt: skip
        return self._listing("/v1/events", "event", found, {"types", "type", "created"})

    def _newest(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._objects[kind].values()))

    def _listing(
        self, url: str, kind: str, items: list[dict[str, Any]], filters: Iterable[str] = ()
    ) -> Response:
        _check_params({"limit", "starting_after", "ending_before", *filters})
        paths = _expansions(kind, listing=True)
        limit = _limit()
        after, before = request.args.get("starting_after"), request.args.get("ending_before")
        if after and before:
            raise _Refusal(
                400,
                "Received both starting_after and ending_before parameters. "
                "Please pass in only one.",
                param="starting_after",
            )
        ids = [item["id"] for item in items]
        anchor = after or before
        if anchor and anchor not in ids:
            raise _Refusal(
                400,
                f"No such {kind}: '{anchor}'",
                code="resource_missing",
                param="starting_after" if after else "ending_before",
            )
        if after:
            start = ids.index(after) + 1
            page, more = items[start : start + limit], start + limit < len(items)
        elif before:
            end = ids.index(before)
            page, more = items[max(end - limit, 0) : end], end - limit > 0
        else:
            page, more = items[:limit], len(items) > limit
        with self._lock:
            data = [self._render(item, paths) for item in page]
        return jsonify({"object": "list", "url": url, "has_more": more, "data": data})

    def _render(self, obj: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
        shown = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        for path in paths:
            self._expand(shown, path)
        return shown

    def _expand(self, obj: dict[str, Any], path: list[str]) -> None:
        head, rest = path[0], path[1:]
        target = _EXPANDABLE[obj["object"]][head]
        value = obj.get(head)
        if target == "line_items":
            items = self._line_items.get(obj["id"], [])
            obj[head] = {"object": "list", "data": copy.deepcopy(items[:DEFAULT_PAGE_SIZE]),
                         "has_more": len(items) > DEFAULT_PAGE_SIZE,
                         "url": f"/v1/checkout/sessions/{obj['id']}/line_items"}  # fmt: skip
            return
        if isinstance(value, str):
            value = self._render(self._objects[target][value], [])
            obj[head] = value
        if isinstance(value, dict) and rest:
            self._expand(value, rest)


def _refusal(error: _Refusal) -> tuple[Response, int]:
    return jsonify(error.body), error.status


def _unrecognized(_error: Exception) -> tuple[Response, int]:
    message = (
        f"Unrecognized request URL ({request.method}: {request.path}). Please see "
        "https://stripe.com/docs or we can help at https://support.stripe.com/."
    )
    return jsonify(_Refusal(404, message).body), 404


def _array(args: Iterable[tuple[str, str]], name: str) -> list[str]:
    """The values of ``name[]`` / ``name[N]`` query keys, in order."""
    values: list[str] = []
    for key, value in args:
        match = _ARRAY_KEY.match(key)
        if match and match.group(1) == name and (match.group(2) == "" or match.group(2).isdigit()):
            values.append(value)
    return values


def _check_form(allowed: set[str]) -> None:
    """A POST's form parameters, each one the endpoint takes (400 otherwise)."""
    for key in request.form:
        match = _ARRAY_KEY.match(key)
        base = match.group(1) if match else key
        if base != "expand" and base not in allowed:
            raise _Refusal(400, f"Received unknown parameter: {key}", param=key)


def _check_events(events: Sequence[str]) -> None:
    """``enabled_events``: ``*`` or names shaped like Stripe's (the enum is not copied)."""
    for index, event in enumerate(events):
        if event != "*" and not _EVENT_NAME.fullmatch(event):
            raise _Refusal(
                400,
                f"Invalid enabled_events[{index}]: must be one of the event types",
                param=f"enabled_events[{index}]",
            )


def _check_params(allowed: set[str]) -> None:
    for key in request.args:
        match = _ARRAY_KEY.match(key)
        base = match.group(1) if match else key
        if base != "expand" and base not in allowed:
            raise _Refusal(400, f"Received unknown parameter: {key}", param=key)


def _limit() -> int:
    raw = request.args.get("limit")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        limit = int(raw)
    except ValueError:
        raise _Refusal(
            400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param="limit"
        ) from None
    if limit < 1:
        raise _Refusal(
            400,
            "This value must be greater than or equal to 1.",
            code="parameter_invalid_integer",
            param="limit",
        )
    if limit > MAX_PAGE_SIZE:
        raise _Refusal(
            400,
            f"This value must be less than or equal to {MAX_PAGE_SIZE} (it "
            f"currently is '{limit}').",
            code="parameter_invalid_integer",
            param="limit",
        )
    return limit


def _expansions(kind: str, *, listing: bool) -> list[list[str]]:
    """The ``expand[]`` paths, checked against what each type can expand (400 otherwise)."""
    paths: list[list[str]] = []
    for path in _array(tuple(request.args.items(multi=True)), "expand"):
        segments = path.split(".")
        if len(segments) > MAX_EXPAND_DEPTH:
            raise _Refusal(
                400,
                f"You cannot expand more than 4 levels of a property. Property: {path}",
                code="property_expansion_max_depth",
            )
        if listing:
            if segments[0] != "data":
                hint = (
                    f" You may want to try expanding 'data.{path}' instead."
                    if segments[0] in _EXPANDABLE.get(kind, {})
                    else ""
                )
                raise _Refusal(400, f"This property cannot be expanded ({segments[0]}).{hint}")
            segments = segments[1:]
        current = kind
        for depth, segment in enumerate(segments):
            target = _EXPANDABLE.get(current, {}).get(segment)
            if target is None:
                shown = ("data." if listing else "") + ".".join(segments[: depth + 1])
                raise _Refusal(400, f"This property cannot be expanded ({shown}).")
            current = target
        if segments:
            paths.append(segments)
    return paths


def _created_filter() -> Callable[[int], bool]:
    """The ``created`` / ``created[gte|gt|lte|lt]`` filters, as one test of a timestamp."""
    tests: dict[str, Callable[[int, int], bool]] = {
        "created": lambda a, b: a == b, "created[gte]": lambda a, b: a >= b,
        "created[gt]": lambda a, b: a > b, "created[lte]": lambda a, b: a <= b,
        "created[lt]": lambda a, b: a < b,
    }  # fmt: skip
    bounds: list[tuple[Callable[[int, int], bool], int]] = []
    for key, test in tests.items():
        raw = request.args.get(key)
        if raw is None:
            continue
        try:
            bounds.append((test, int(raw)))
        except ValueError:
            raise _Refusal(
                400, f"Invalid integer: {raw}", code="parameter_invalid_integer", param=key
            ) from None
    return lambda created: all(test(created, bound) for test, bound in bounds)
