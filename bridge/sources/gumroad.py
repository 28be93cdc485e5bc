"""Gumroad's listings as MembershipEvents: every sale, and what became of known purchases.

Each listed sale is turned into the ping Gumroad would have sent for it and handed to
the ping parser (bridge/providers/gumroad.py), so keys, refs, products and event ids are
the webhook path's own, and the intake's dedupe key lets a delivered ping win:

- the charge: ``sale:<id>`` (ACTIVE), or ``refund:<id>`` (ENDED) once fully refunded, dated
  by the sale's ``created_at``, the clock of the ping's ``sale_timestamp``. A refund of an
  old renewal therefore cannot end a subscription renewed after it.
- a dispute: ``dispute:<id>`` (open or charged back) or ``dispute_won:<id>``, dated by the
  page's request time as the webhook path dates dispute pings by arrival; dated by the
  sale, a won dispute would look older than the open one it settles.
- a subscription that is over (``dead``/``ended`` on its sales, or a subscriber whose
  status or timestamps say so; ``cancelled`` alone is a pending cancellation): ENDED,
  dated by the subscriber's own timestamp when read, else by the request time. Its id
  starts with ``list:`` (no ping carries it), so it is never deduplicated.

``changes`` lists the sales created since the day before ``since`` (Gumroad filters by
day), then re-reads what a new sale cannot show: known subscriptions (the products'
active-subscriber lists, 100 a call, while cheaper than reading each; then each one not
seen alive), the older charges of each (see ``CHARGES_PER_SUBSCRIPTION``) and known
one-time sales (``GET /v2/sales/:id``). An id Gumroad does not know yields nothing: an
unknown is never an ending.

A subscriber object lists its charges (``purchase_ids``: Subscription#as_json, from
``purchases.for_sales_api``, test charges excluded); each one not listed in this run is
read by id (``GET /v2/sales/:id``) and turned into the events its listing would give, so
a refund, chargeback or won dispute of an older charge whose ping was lost is seen. The
association has no ORDER BY: MySQL returns it by the subscription_id index, in id order,
which is creation order (Gumroad's own ``subscription.purchases.last`` relies on it), so
the newest charges are the last ids. A subscription whose first charge the new sales
listed has every charge in them and is not read again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bridge.errors import PayloadError
from bridge.events import DisputeState, EntitlementState, MembershipEvent, parse_timestamp
from bridge.gumroad_api import GumroadAPI, GumroadNotFoundError
from bridge.providers.gumroad import parse, sale_dispute, sale_state
from bridge.sources import Batch, CursorError
from bridge.sources.gumroad_pings import (
    ended_event,
    sale_ping,
    subscriber_events,
    text,
)

logger = logging.getLogger(__name__)

PROVIDER = "gumroad"
# A sale's flags that describe its subscription now, not the charge itself.
_SUBSCRIPTION_FLAGS = ("dead", "ended")
# A buyer can dispute a charge for 120 days (the card networks' limit, Gumroad's own
# EarlyFraudWarning::ELIGIBLE_DISPUTE_WINDOW_DURATION), and a refund of a charge older than
# the subscription's newest one never ends it (refunds are dated by their charge). So a
# known subscription's charges are re-read newest first, stopping after the first one older
# than this: what older ones could still say changes nothing the ledger keeps, save a won
# dispute settled that late (a backfill sees it).
DISPUTE_WINDOW_SECONDS = 120 * 86400
# At most this many charges a known subscription re-read (one GET /v2/sales/:id each), on
# top of the window above. Monthly is Gumroad's shortest recurrence and any four months
# are at least 120 days, so four charges cover the dispute window; the fifth leaves room
# for an upgrade's charge or a renewal retried days late.
CHARGES_PER_SUBSCRIPTION = 5


@dataclass
class _Run:
    """What one listing run learned: the products, and the objects it has already seen."""

    products: list[dict[str, Any]] | None = None
    permalinks: dict[str, str] = field(default_factory=dict)  # product id -> custom permalink
    alive: set[str] = field(default_factory=set)  # subscription ids whose sales say alive
    ended: set[str] = field(default_factory=set)  # subscription ids already reported over
    sales: set[str] = field(default_factory=set)  # sale ids already observed
    # subscription ids whose first charge was listed: every later charge was listed too
    whole: set[str] = field(default_factory=set)


class GumroadSource:
    """Gumroad sales, subscribers and products, read with the seller's access token."""

    # Listed objects carry the webhooks' own clock (updated_at / the sale's time).
    dated_by_objects = True

    provider = PROVIDER

    def __init__(
        self,
        api: GumroadAPI,
        *,
        seller_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._seller_id = seller_id
        self._clock = clock

    def backfill(self, cursor: str | None = None) -> Iterator[Batch]:
        """Every sale Gumroad lists (newest first, one batch a page), from ``cursor``."""
        yield from self._sales(_Run(), page_key=_page_key(cursor), after=None, resumable=True)

    def changes(self, since: float | None, known: Iterable[str] = ()) -> Iterator[Batch]:
        """New sales since ``since``, then the known entitlements read again (not resumable)."""
        if since is None:
            yield from self.backfill()
            return
        run = _Run()
        # `after` keeps sales from that UTC day on; a day more covers any clock's midnight.
        after = datetime.fromtimestamp(since, UTC).date() - timedelta(days=1)
        yield from self._sales(run, page_key=None, after=after, resumable=False)
        subscriptions, sales = _known(known)
        yield from self._subscriptions(run, subscriptions)
        for sale_id in sorted(sales - run.sales):
            start, requested_at = self._api.calls, self._clock()
            sale = self._api.find_sale(sale_id)
            events = self._observe(run, sale, requested_at) if sale is not None else []
            yield Batch(tuple(events), None, calls=self._api.calls - start)

    def _sales(
        self, run: _Run, *, page_key: str | None, after: date | None, resumable: bool
    ) -> Iterator[Batch]:
        while True:
            start = self._api.calls
            self._load_products(run)
            requested_at = self._clock()
            sales, next_key = self._api.sales_page(page_key=page_key, after=after)
            events = [event for sale in sales for event in self._observe(run, sale, requested_at)]
            cursor = json.dumps({"page_key": next_key}) if resumable and next_key else None
            yield Batch(tuple(events), cursor, calls=self._api.calls - start)
            if next_key is None:
                return
            page_key = next_key

    def _load_products(self, run: _Run) -> None:
        """The products once a run: the custom permalinks the pings name (not in a sale)."""
        if run.products is not None:
            return
        run.products = self._api.products()
        for product in run.products:
            ident, custom = text(product.get("id")), text(product.get("custom_permalink"))
            if ident and custom:
                run.permalinks[ident] = custom

    def _observe(
        self, run: _Run, sale: Mapping[str, Any], requested_at: float
    ) -> list[MembershipEvent]:
        sale_id = text(sale.get("id"))
        if sale_id is None or (self._seller_id and sale.get("seller_id") != self._seller_id):
            return []  # another seller's sale (a token of the wrong account)
        run.sales.add(sale_id)
        try:
            return self._sale_events(run, sale, requested_at)
        except PayloadError as exc:
            logger.warning(
                "gumroad_sale_unreadable provider=gumroad sale=%s error=%s", sale_id, exc
            )
            return []

    def _sale_events(
        self, run: _Run, sale: Mapping[str, Any], requested_at: float
    ) -> list[MembershipEvent]:
        payload = sale_ping(sale, run.permalinks)
        charge = {k: v for k, v in sale.items() if k not in _SUBSCRIPTION_FLAGS}
        state = sale_state(charge)  # a full refund ends the charge; partial ones do not
        resource = "refund" if state is EntitlementState.ENDED else "sale"
        (event,) = parse({**payload, "resource_name": resource, "refunded": resource == "refund"})
        events = [replace(event, state=state, dispute=None)]
        dispute = sale_dispute(sale)
        if dispute is not None:
            resource = "dispute_won" if dispute is DisputeState.WON else "dispute"
            (event,) = parse({**payload, "resource_name": resource})
            events.append(replace(event, state=None, dispute=dispute, occurred_at=requested_at))
        subscription_id = text(sale.get("subscription_id"))
        if subscription_id is None:
            return events
        # Its first charge (!is_original_subscription_purchase?). A plan change makes a new
        # original purchase, not charged and so not listed, unless the subscription began
        # with a free trial: those are never taken as whole.
        if sale.get("recurring_charge") is False and not sale.get("free_trial_ends_on"):
            run.whole.add(subscription_id)
        over = sale_state({k: sale.get(k) for k in _SUBSCRIPTION_FLAGS})
        if over is not EntitlementState.ENDED:
            run.alive.add(subscription_id)
        elif subscription_id not in run.ended:
            # Newest first: the first sale seen of a subscription is its latest charge.
            run.ended.add(subscription_id)
            ended = {
                "subscription_id": subscription_id,
                "product_id": payload["product_id"],
                "user_email": payload["email"],
                "user_id": payload["purchaser_id"],
                "purchase_ids": [payload["sale_id"]],
            }
            events.append(ended_event(ended, None, requested_at))
        return events

    def _subscriptions(self, run: _Run, known: set[str]) -> Iterator[Batch]:
        """Each known subscription: whether it is over, and its charges not listed yet.

        Its status is needed unless the new sales showed it; its charges unless the new
        sales listed its first one. The subscriber object gives both.
        """
        status = known - run.alive - run.ended
        wanted = status | (known - run.whole)
        listed: dict[str, Mapping[str, Any]] = {}
        if wanted:
            yield from self._list_subscribers(run, set(wanted), listed)
        for subscription_id in sorted(wanted):
            subscriber = listed.get(subscription_id)  # alive: its status says nothing more
            if subscriber is None:
                start, requested_at = self._api.calls, self._clock()
                subscriber = self._api.find_subscriber(subscription_id)
                events: tuple[MembershipEvent, ...] = ()
                if subscriber is not None and subscription_id in status:
                    events = subscriber_events(subscriber, requested_at)
                if any(event.state is EntitlementState.ENDED for event in events):
                    run.ended.add(subscription_id)  # its charges' flags need not say it again
                yield Batch(events, None, calls=self._api.calls - start)
            if subscriber is not None:
                yield from self._charges(run, subscriber)

    def _charges(self, run: _Run, subscriber: Mapping[str, Any]) -> Iterator[Batch]:
        """The subscription's charges not seen in this run, newest first, within the bounds
        of DISPUTE_WINDOW_SECONDS and CHARGES_PER_SUBSCRIPTION; one batch a read.
        """
        ids = subscriber.get("purchase_ids")
        if not isinstance(ids, list):
            return
        read = 0
        for sale_id in (text(ident) for ident in reversed(ids)):  # oldest first: reversed
            if sale_id is None or sale_id in run.sales:
                continue
            if read == CHARGES_PER_SUBSCRIPTION:
                return
            read += 1
            start, requested_at = self._api.calls, self._clock()
            sale = self._api.find_sale(sale_id)
            events = self._observe(run, sale, requested_at) if sale is not None else []
            yield Batch(tuple(events), None, calls=self._api.calls - start)
            created = parse_timestamp(sale.get("created_at")) if sale is not None else None
            if created is not None and created < requested_at - DISPUTE_WINDOW_SECONDS:
                return  # older ones are older still

    def _list_subscribers(
        self, run: _Run, pending: set[str], found: dict[str, Mapping[str, Any]]
    ) -> Iterator[Batch]:
        """Into ``found``, the ``pending`` subscriptions the products' active lists show.

        A list call confirms up to 100 at once; it stops once the calls it took reach the
        reads still pending, so the whole costs at most twice the one-by-one reads.
        """
        memberships = [
            ident
            for product in run.products or ()
            if _membership(product) and (ident := text(product.get("id")))
        ]
        if len(memberships) >= len(pending):
            return  # one call per product at least: reading each is no dearer
        spent = 0
        for product_id in memberships:
            page_key: str | None = None
            while pending and spent < len(pending):
                start = self._api.calls
                try:
                    subscribers, page_key = self._api.subscribers_page(
                        product_id, page_key=page_key
                    )
                except GumroadNotFoundError:
                    subscribers, page_key = [], None  # deleted since the products call
                spent += 1
                for subscriber in subscribers:
                    if (ident := text(subscriber.get("id"))) in pending:
                        found[str(ident)] = subscriber
                        pending.discard(str(ident))
                yield Batch((), None, calls=self._api.calls - start)
                if page_key is None:
                    break


def _membership(product: Mapping[str, Any]) -> bool:
    return bool(product.get("is_tiered_membership") or product.get("subscription_duration"))


def _known(keys: Iterable[str]) -> tuple[set[str], set[str]]:
    """The subscription and sale ids among the ledger's entitlement keys (Gumroad's only)."""
    subscriptions: set[str] = set()
    sales: set[str] = set()
    for key in keys:
        ident = key.removeprefix(f"{PROVIDER}:")
        if ident == key:
            continue
        if ident.startswith("sub_") and len(ident) > 4:
            subscriptions.add(ident[4:])
        elif ident.startswith("sale_") and len(ident) > 5:
            sales.add(ident[5:])
    return subscriptions, sales


def _page_key(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        data = json.loads(cursor)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("page_key"), str):
        raise CursorError("not a Gumroad backfill cursor")
    return str(data["page_key"])
