"""Lemon Squeezy's listings as MembershipEvents: every subscription, then every order.

Lemon Squeezy's API is JSON:API, and a listed resource is exactly a webhook's ``data``. Each
one is wrapped in the envelope its webhook would carry (subscriptions as
``subscription_updated``, the catch-all; orders as ``order_created``, or ``order_refunded``
once refunded) and handed to the webhook parser (bridge/providers/lemonsqueezy.py). Keys,
refs, products and states are therefore the webhook path's own, and so are the event ids,
derived from ``updated_at`` and the status: a webhook and a listing of the same snapshot
share an id, and the intake's dedupe key lets the delivered one win. ``occurred_at`` is
``updated_at``, the webhook's clock; an object with no readable timestamp (never seen) is
dated just before its page was requested.

The email is ``user_email``. The checkout's ``custom_data`` (where a ``sotion_email`` may
name another login) reaches webhooks only, in ``meta.custom_data``
(docs.lemonsqueezy.com/help/checkout/passing-custom-data); the Order and Subscription
objects carry no custom data (docs.lemonsqueezy.com/api/orders/the-order-object,
.../subscriptions/the-subscription-object), so the engine relies on the owner the ledger
learned from the webhook.

A subscription's first order stays ``paid`` after the subscription expires, so an order
that belongs to a subscription never grants on its own: subscriptions are listed first and
their ``order_id``s remembered; such an order is emitted under the subscription's key with
no state (it teaches the order -> subscription alias), except that a full refund or a fraud
flag still ends it, as the same webhook does once the alias is known. A backfill resumed in
the orders phase lists the subscriptions again for their order ids (counted in the first
batch's calls): a page of 100 costs one call, where carrying thousands of ids in the
cursor would make it grow without bound.

Both lists come newest first by page number, so objects created during a run push older
ones to later pages: a page may repeat an object (merged once), never skip one.
There is no change feed and no "updated since" filter in the docs, so ``changes`` lists
everything again and the engine's merge drops what is not newer; the lists hold every
subscription and order, so nothing in ``known`` needs reading one by one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bridge.errors import PayloadError
from bridge.events import EntitlementState, MembershipEvent, parse_timestamp
from bridge.lemonsqueezy_api import LemonSqueezyAPI, ListPage
from bridge.providers import lemonsqueezy
from bridge.sources import Batch, CursorError

log = logging.getLogger(__name__)

PROVIDER = lemonsqueezy.PROVIDER
# The listing's phases, in order.
SUBSCRIPTIONS, ORDERS = "subscriptions", "orders"
# Order statuses a webhook carries in order_refunded rather than order_created.
_REFUNDED_STATUSES = frozenset({"refunded", "partial_refund"})

# order ref ("order_9") -> the entitlement key of the subscription it started
Aliases = dict[str, str]


class LemonSqueezySource:
    """Lemon Squeezy subscriptions and orders, read with the operator's API key."""

    # Listed objects carry the webhooks' own clock (updated_at / the sale's time).
    dated_by_objects = True

    provider = PROVIDER

    def __init__(self, api: LemonSqueezyAPI, *, clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._clock = clock

    def backfill(self, cursor: str | None = None) -> Iterator[Batch]:
        """Every subscription, then every order, one batch a page, from ``cursor``."""
        phase, number = _load(cursor)
        aliases: Aliases = {}
        relist = 0
        if phase == SUBSCRIPTIONS:
            for page, requested_at in self._pages(SUBSCRIPTIONS, number):
                events = self._subscriptions(page, requested_at, aliases)
                then = (SUBSCRIPTIONS, page.number + 1) if page.has_next else (ORDERS, 1)
                yield Batch(tuple(events), _dump(*then), calls=page.calls)
            number = 1
        if phase == ORDERS or cursor is not None:
            # Started (or resumed) past some subscriptions: learn every order id again.
            aliases.clear()
            for page, requested_at in self._pages(SUBSCRIPTIONS, 1):
                self._subscriptions(page, requested_at, aliases)
                relist += page.calls
        for page, requested_at in self._pages(ORDERS, number):
            events = self._orders(page, requested_at, aliases)
            after = _dump(ORDERS, page.number + 1) if page.has_next else None
            yield Batch(tuple(events), after, calls=page.calls + relist)
            relist = 0

    def changes(self, since: float | None, known: Iterable[str] = ()) -> Iterator[Batch]:
        """Everything again (no change feed); the merge keeps only what is newer."""
        return self.backfill(None)

    def _pages(self, collection: str, number: int) -> Iterator[tuple[ListPage, float]]:
        """The pages of one list from ``number`` on, each with the time just before its read."""
        while True:
            requested_at = self._clock()
            page = self._api.list_page(collection, number)
            yield page, requested_at
            if not page.has_next:
                return
            number += 1

    def _subscriptions(
        self, page: ListPage, requested_at: float, aliases: Aliases
    ) -> list[MembershipEvent]:
        events: list[MembershipEvent] = []
        for resource in page.resources:
            event = _event(resource, "subscription_updated", requested_at)
            if event is None:
                continue
            order = event.refs.get("order")
            if order and event.entitlement:
                aliases[order] = event.entitlement
            events.append(event)
        return events

    def _orders(
        self, page: ListPage, requested_at: float, aliases: Aliases
    ) -> list[MembershipEvent]:
        events: list[MembershipEvent] = []
        for resource in page.resources:
            attributes = resource.get("attributes")
            status = attributes.get("status") if isinstance(attributes, Mapping) else None
            name = "order_refunded" if status in _REFUNDED_STATUSES else "order_created"
            event = _event(resource, name, requested_at)
            if event is None:
                continue
            if status == "partial_refund":
                # Listed, a partly refunded order is a paid one: the webhook path has
                # recorded it from its order_created, and a partial refund changes nothing.
                event = dataclasses.replace(event, state=EntitlementState.ACTIVE)
            owner = aliases.get(event.refs.get("order") or "")
            if owner is not None:
                event = _folded(event, owner)
            events.append(event)
        return events


def _folded(event: MembershipEvent, owner: str) -> MembershipEvent:
    """A subscription's order, under the subscription's key: it may end it, never grant."""
    ended = event.state is EntitlementState.ENDED
    subscription = owner.partition(":")[2]
    return replace(
        event,
        entitlement=owner,
        state=EntitlementState.ENDED if ended else None,
        refs={**event.refs, "subscription": subscription},
    )


def _event(resource: Mapping[str, Any], name: str, requested_at: float) -> MembershipEvent | None:
    """The event the webhook ``name`` would carry for this resource; None if unreadable."""
    attributes = resource.get("attributes")
    if isinstance(attributes, Mapping) and not _dated(attributes):
        attributes = {**attributes, "updated_at": _iso(requested_at)}
        resource = {**resource, "attributes": attributes}
    test_mode = bool(attributes.get("test_mode")) if isinstance(attributes, Mapping) else False
    envelope = {"meta": {"event_name": name, "test_mode": test_mode}, "data": resource}
    try:
        events = lemonsqueezy.parse(envelope)
    except PayloadError as exc:
        # Listed by Lemon Squeezy but not shaped as documented: skip it, name only its id.
        log.warning(
            "lemonsqueezy listing skipped provider=%s type=%s id=%.40r error=%s",
            PROVIDER,
            str(resource.get("type"))[:40],
            resource.get("id"),
            exc,
        )
        return None
    return events[0] if events else None


def _dated(attributes: Mapping[str, Any]) -> bool:
    """Whether the object carries a timestamp the parser can date it by."""
    return any(parse_timestamp(attributes.get(f)) is not None for f in ("updated_at", "created_at"))


def _iso(moment: float) -> str:
    """A Unix time written as Lemon Squeezy writes timestamps."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dump(phase: str, number: int) -> str:
    return json.dumps({"phase": phase, "page": number})


def _load(cursor: str | None) -> tuple[str, int]:
    """Where a cursor resumes: (phase, page number); the start for None."""
    if cursor is None:
        return SUBSCRIPTIONS, 1
    try:
        data = json.loads(cursor)
        phase, number = data["phase"], data["page"]
    except (ValueError, TypeError, KeyError) as exc:
        raise CursorError("not a Lemon Squeezy backfill cursor") from exc
    if phase not in (SUBSCRIPTIONS, ORDERS) or type(number) is not int or number < 1:
        raise CursorError("not a Lemon Squeezy backfill cursor")
    return phase, number
