"""Stripe's purchases as the API lists them now, and what changed since a moment.

``backfill`` lists, 100 to a page, every subscription (its customer expanded), every
completed one-time Checkout Session (line items and the payment's latest charge expanded)
and every dispute (its charge expanded), in that order: the purchases first, so the engine
knows which purchase each disputed payment belongs to when the disputes come. Each object
becomes the event the webhook parser makes for it (``bridge.providers.stripe.parse`` on a
synthesized envelope, so keys, refs and products are the webhook path's), dated just before
its page was requested: a listed object carries no time of its last change.

A Dispute names only its charge and payment intent. A one-time Checkout's payment intent
leads to its purchase; a subscription's payment belongs to an invoice, which neither the
Charge nor the PaymentIntent names in the API version the SDK speaks (basil or later). So
a dispute of a payment that no listed one-time Checkout Session made costs one request
more, the payment's Invoice Payments with their invoice expanded
(``StripeAPI.list_invoice_payments``), and its event also carries that invoice's and
subscription's ids: the engine ties it to the subscription the listing taught it.

``changes`` reads Stripe's own events (``GET /v1/events``, docs.stripe.com/api/events/list)
created since ``since`` minus a margin, and passes each one, unchanged, through the same
parser: their ids are the webhooks' ids, so the engine drops the ones a webhook delivered.
Stripe keeps events 30 days: for a ``since`` within a day of that edge, older, or None,
the full listing runs instead.
The events list comes newest first and ``starting_after`` pages from a fixed event towards
older ones (docs.stripe.com/api/pagination): events created while paging land before the
first page, never between pages, so none of the window is skipped; the next reconcile,
starting from this one's start, reads them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from bridge.errors import PayloadError
from bridge.events import EntitlementState, MembershipEvent
from bridge.providers import stripe as stripe_provider
from bridge.sources import SYNTHETIC_PREFIX, Batch, CursorError
from bridge.stripe_api import (
    ListPage,
    ProviderAPIError,
    StripeAPI,
    invoice_payment_refs,
    line_item_products,
    object_id,
)

log = logging.getLogger(__name__)

# The event types bridge/providers/stripe.py turns into membership events (14 of the 20 a
# request may filter on).
EVENT_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "invoice.paid",
    "invoice.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
)
# How long Stripe keeps events for the events list (docs.stripe.com/api/events/list).
EVENTS_RETENTION_SECONDS = 30 * 86400
# Reads start this long before ``since``: an event is listed a little after its `created`.
EVENTS_OVERLAP_SECONDS = 300
# A window reaching this close to the retention edge is read in full instead: its oldest
# events may expire while the listing pages through the rest.
RETENTION_MARGIN_SECONDS = 86400
# The listings a backfill walks through, in order.
LISTINGS = ("subscriptions", "checkout_sessions", "disputes")
# Event ids a source makes up start so (workers/observe.py never dedupes them).
# A dispute in one of these statuses is decided: Stripe sent `charge.dispute.closed` for it.
_CLOSED_DISPUTES = frozenset({"won", "lost", "warning_closed", "prevented"})
# A PaymentIntent back in one of these after a delayed payment failed: the purchase failed.
_FAILED_PAYMENTS = frozenset({"requires_payment_method", "canceled"})


class StripeSource:
    """Stripe's subscriptions, one-time checkouts and disputes, as MembershipEvents."""

    # Listings are dated by the read: Stripe's events carry whole seconds of their own.
    dated_by_objects = False

    provider = stripe_provider.PROVIDER

    def __init__(self, api: StripeAPI, *, clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._clock = clock
        # The payment intents of the one-time Checkout Sessions listed so far: a dispute of
        # one of them needs no look-up of its invoice (a Checkout event names its purchase).
        self._checkout_payments: set[str] = set()

    def backfill(self, cursor: str | None = None) -> Iterator[Batch]:
        """Every subscription, one-time checkout and dispute, a page a batch, from ``cursor``."""
        listing, after = _read_cursor(cursor)
        for index in range(LISTINGS.index(listing), len(LISTINGS)):
            name = LISTINGS[index]
            while True:
                page = self._page(name, after)
                events, extra = self._observe(name, page)
                if page.has_more:
                    after = page.last_id
                    next_cursor: str | None = _cursor(name, after)
                else:
                    after = None
                    following = LISTINGS[index + 1] if index + 1 < len(LISTINGS) else None
                    next_cursor = _cursor(following, None) if following else None
                yield Batch(tuple(events), next_cursor, page.calls + extra)
                if not page.has_more:
                    break

    def changes(self, since: float | None, known: Iterable[str] = ()) -> Iterator[Batch]:
        """Stripe's events since ``since`` (minus a margin), parsed as webhooks are.

        ``known`` is not needed: the events list shows every change. Batches carry no
        cursor (a reconcile that stops is run again from the same ``since``).
        """
        oldest = self._clock() - EVENTS_RETENTION_SECONDS + RETENTION_MARGIN_SECONDS
        if since is None or since - EVENTS_OVERLAP_SECONDS < oldest:
            yield from self.backfill()
            return
        created_gte = int(since - EVENTS_OVERLAP_SECONDS)
        after: str | None = None
        while True:
            page = self._api.list_events(
                types=EVENT_TYPES, created_gte=created_gte, starting_after=after, clock=self._clock
            )
            events: list[MembershipEvent] = []
            for event in page.objects:
                events.extend(_from_event(event))
            yield Batch(tuple(events), None, page.calls)
            if not page.has_more:
                return
            after = page.last_id

    def _page(self, listing: str, after: str | None) -> ListPage:
        if listing == "subscriptions":
            return self._api.list_subscriptions(starting_after=after, clock=self._clock)
        if listing == "checkout_sessions":
            return self._api.list_checkout_sessions(starting_after=after, clock=self._clock)
        return self._api.list_disputes(starting_after=after, clock=self._clock)

    def _observe(self, listing: str, page: ListPage) -> tuple[list[MembershipEvent], int]:
        """The page's events, and the extra calls (line items past the first few, disputed
        payments' invoices) they took."""
        events: list[MembershipEvent] = []
        extra = 0
        for obj in page.objects:
            try:
                if listing == "subscriptions":
                    events.append(_subscription(obj, page.requested_at))
                elif listing == "disputes":
                    invoice, calls = self._disputed_invoice(obj)
                    extra += calls
                    events.append(_dispute(obj, invoice, page.requested_at))
                elif obj.get("mode") == "payment":  # a subscription's: see its subscription
                    intent = object_id(obj.get("payment_intent"))
                    if intent is not None:
                        self._checkout_payments.add(intent)
                    products, calls = self._checkout_products(obj)
                    extra += calls
                    events.append(_checkout(obj, products, page.requested_at))
            except PayloadError as exc:
                # One object not shaped as documented must not stop the listing of the rest.
                log.warning("stripe object skipped id=%s reason=%s", obj.get("id"), exc)
        return events, extra

    def _disputed_invoice(self, dispute: Mapping[str, Any]) -> tuple[dict[str, str], int]:
        """The ``invoice`` and ``subscription`` refs of the invoice the disputed payment paid
        ({} for none), and the calls that took: none for a listed one-time Checkout's
        payment, else one.

        A refusal (a restricted key that may not read invoices, say) leaves the dispute as
        its webhook names it, logged; a failure worth retrying stops the listing, which
        resumes from its cursor.
        """
        charge = dispute.get("charge")
        intent = object_id(dispute.get("payment_intent")) or (
            object_id(charge.get("payment_intent")) if isinstance(charge, dict) else None
        )
        if intent is None or intent in self._checkout_payments:
            return {}, 0
        try:
            page = self._api.list_invoice_payments(intent, clock=self._clock)
        except ProviderAPIError as exc:
            if exc.retryable:
                raise
            log.warning(
                "stripe dispute invoice unknown dispute=%s reason=%s", dispute.get("id"), exc
            )
            return {}, 1
        return invoice_payment_refs(page.objects), page.calls

    def _checkout_products(self, session: Mapping[str, Any]) -> tuple[tuple[str, ...], int]:
        """Products of the expanded line items, paging on when a session has more of them."""
        items = session.get("line_items")
        if not isinstance(items, dict):
            return (), 0
        found = list(items.get("data") or [])
        more = bool(items.get("has_more")) and bool(found)
        calls = 0
        while more:
            last = found[-1].get("id") if isinstance(found[-1], dict) else None
            page = self._api.list_line_items(
                str(session.get("id")), starting_after=last, clock=self._clock
            )
            calls += page.calls
            found.extend(page.objects)
            more = page.has_more
        return line_item_products(found), calls


def _subscription(sub: Mapping[str, Any], requested_at: float) -> MembershipEvent:
    """What ``customer.subscription.updated`` would say, with the expanded customer's email."""
    status = str(sub.get("status", ""))
    event = _as_webhook(
        "customer.subscription.updated", f"{sub.get('id')}:{status}", sub, requested_at
    )
    customer = sub.get("customer")
    email = name = None
    # A deleted customer comes back as {"id", "object", "deleted": true}: no email, the id stays.
    if isinstance(customer, dict) and not customer.get("deleted"):
        email, name = _text(customer.get("email")), _text(customer.get("name"))
    return dataclasses.replace(event, email=email, display_name=name)


def _checkout(
    session: Mapping[str, Any], products: tuple[str, ...], requested_at: float
) -> MembershipEvent:
    """What the session's webhooks would say, as of now: a full refund ends the purchase."""
    intent = session.get("payment_intent")
    intent = intent if isinstance(intent, dict) else {}
    charge = intent.get("latest_charge")
    failed = session.get("payment_status") == "unpaid" and intent.get("status") in _FAILED_PAYMENTS
    kind = "checkout.session.async_payment_failed" if failed else "checkout.session.completed"
    event = _as_webhook(kind, str(session.get("id")), session, requested_at)
    state = event.state
    # `refunded` is true only once the whole amount is refunded: partial refunds keep access.
    if isinstance(charge, dict) and charge.get("refunded") is True:
        state = EntitlementState.ENDED
    suffix = state.value if state is not None else "none"
    return dataclasses.replace(
        event,
        event_id=f"{SYNTHETIC_PREFIX}{session.get('id')}:{suffix}",
        state=state,
        products=products or event.products,
    )


def _dispute(
    dispute: Mapping[str, Any], invoice: Mapping[str, str], requested_at: float
) -> MembershipEvent:
    """What ``charge.dispute.*`` would say, with the refs of the ``invoice`` the payment paid;
    the expanded charge tells who paid."""
    status = str(dispute.get("status", ""))
    kind = "charge.dispute.closed" if status in _CLOSED_DISPUTES else "charge.dispute.updated"
    event = _as_webhook(kind, f"{dispute.get('id')}:{status}", dispute, requested_at)
    if invoice:
        event = dataclasses.replace(event, refs={**event.refs, **invoice})
    charge = dispute.get("charge")
    if not isinstance(charge, dict):
        return event
    billing = charge.get("billing_details")
    billing = billing if isinstance(billing, dict) else {}
    customer = charge.get("customer")
    customer_id = customer.get("id") if isinstance(customer, dict) else customer
    customer_id = customer_id if isinstance(customer_id, str) and customer_id else None
    # As the webhook path's lookup does: a customer's email is the Customer's, looked up by
    # the engine; a guest's is the one on the charge.
    email = (
        None if customer_id else _text(billing.get("email")) or _text(charge.get("receipt_email"))
    )
    return dataclasses.replace(
        event, customer=customer_id, email=email, display_name=_text(billing.get("name"))
    )


def _as_webhook(
    kind: str, snapshot: str, obj: Mapping[str, Any], requested_at: float
) -> MembershipEvent:
    """The webhook parser's event for ``obj`` in a ``kind`` envelope dated ``requested_at``."""
    envelope = {
        "id": f"{SYNTHETIC_PREFIX}{snapshot}",
        "object": "event",
        "type": kind,
        # Stripe's events carry whole seconds: a change made in the second of the read,
        # after it, must not look older than the listing (ties go to the later stage).
        "created": math.floor(requested_at) - 1,
        "livemode": obj.get("livemode") is not False,
        "data": {"object": dict(obj)},
    }
    [event] = stripe_provider.parse(envelope)
    return event


def _from_event(event: Mapping[str, Any]) -> list[MembershipEvent]:
    """A listed event through the webhook parser; one of an unexpected shape is skipped."""
    try:
        return stripe_provider.parse(event)
    except PayloadError as exc:
        log.warning(
            "stripe event skipped event=%s type=%s reason=%s",
            event.get("id"),
            event.get("type"),
            exc,
        )
        return []


def _text(value: Any) -> str | None:
    """A non-empty string field, else None."""
    return value if isinstance(value, str) and value.strip() else None


def _cursor(listing: str, after: str | None) -> str:
    return json.dumps({"list": listing, "after": after}, separators=(",", ":"))


def _read_cursor(cursor: str | None) -> tuple[str, str | None]:
    """Which listing to continue and after which id; ValueError for anything else."""
    if cursor is None:
        return LISTINGS[0], None
    try:
        data = json.loads(cursor)
    except ValueError:
        data = None
    listing = data.get("list") if isinstance(data, dict) else None
    after = data.get("after") if isinstance(data, dict) else None
    if listing not in LISTINGS or not (after is None or (isinstance(after, str) and after)):
        raise CursorError("not a Stripe backfill cursor")
    return str(listing), after
