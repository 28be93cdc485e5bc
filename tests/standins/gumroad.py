"""A stand-in of Gumroad's API v2 for the reads the bridge makes, on Gumroad's own terms.

Sources: the API docs at gumroad.com/api, which antiwork/gumroad (8c16285) serves from
config/initializers/api_v2_methods.rb and app/views/public/api/ (response/_sales, _sale,
_subscribers, _subscriber, _products; parameters/_get_sales, _get_subscribers), and the
code behind them: app/controllers/api/v2/{base,sales,subscribers,links}_controller.rb,
Purchase#as_json(version: 2), Subscription#as_json and #status, Link#as_json_for_api,
config/initializers/{doorkeeper,rack_attack}.rb. What it reproduces:

- Auth (Doorkeeper): ``Authorization: Bearer`` or an ``access_token`` parameter (query or
  form body, as the docs' ``curl -d`` examples send it). Missing or wrong: 401 with an
  empty body and a ``WWW-Authenticate`` header; no ``view_sales`` scope: 403, empty.
- ``GET /v2/sales``: the token owner's successful sales (test purchases never listed),
  newest first (created_at, id), 10 a page; ``next_page_key`` (``<created_at usec>-<id>``)
  and ``next_page_url`` only while more follow; ``after`` keeps created_at >= that UTC
  day, ``before`` < that day; bad dates or page keys: 400 ``{"status", "error"}``. Gumroad
  has no page-size parameter: any other asked for is ignored, as Gumroad does.
- ``GET /v2/sales/:id``, ``GET /v2/subscribers/:id``: an unknown id, or another seller's,
  is HTTP 200 ``{"success": false, "message": "The sale was not found."}``. A subscriber's
  ``purchase_ids`` are its charges (test ones excluded) in id order, oldest first; a
  sale's ``recurring_charge`` is false for the subscription's first charge only.
- ``GET /v2/products``: the owner's visible products, newest first, in one list.
- ``GET /v2/products/:id/subscribers``: active subscriptions only (not test, no
  failed_at/ended_at, cancelled_at unset or ahead); all at once, or 100 a page with
  ``paginated=true`` / ``page_key``.
- Rate limits (Rack::Attack): 429 ``Retry later`` (text/plain), no Retry-After unless
  asked for; a fixed window (``rate_limit=(requests, seconds)``) or ``throttle(n)``.
- A call log (``calls``): every request's method, path and query, 401s and 429s included.
- Resource subscriptions (resource_subscriptions_controller.rb, ResourceSubscription):
  ``GET /v2/resource_subscriptions?resource_name=`` lists the owner's live ones of that
  resource (``success: false`` "Valid resource_name parameter required" for another
  name); ``PUT`` with ``resource_name`` and ``post_url`` always adds one (an http(s) URL
  whose host is not localhost nor a private or reserved address, else "Invalid post URL
  '...'"; the stand-in resolves no names); ``DELETE /v2/resource_subscriptions/:id``
  removes one. All need ``view_sales``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, g, jsonify, request

SELLER_ID = "kL0paVL2SdmJSYsNs-OCMg=="
TOKEN = "gr_standin_token_8f2a"
SALES_PER_PAGE = 10  # SalesController::RESULTS_PER_PAGE
SUBSCRIBERS_PER_PAGE = 100  # SubscribersController::RESULTS_PER_PAGE
_STAMP = "%Y-%m-%dT%H:%M:%SZ"  # how the docs' examples render created_at
_DATES = "Dates must be in the format YYYY-MM-DD."
_CHALLENGE = 'Bearer realm="Doorkeeper", error="invalid_token", error_description="{}"'
# ResourceSubscription::VALID_RESOURCE_NAMES.
RESOURCE_NAMES = (
    "sale", "cancellation", "subscription_ended", "subscription_restarted",
    "subscription_updated", "refund", "dispute", "dispute_won",
)  # fmt: skip
# Fields of a sale that are the same for every sale the stand-in makes.
_SALE_CONSTANTS: dict[str, Any] = {
    "timestamp": "about 2 months ago",
    "currency_symbol": "$",
    "variants_and_quantity": "",
    "custom_fields": {},
    "referrer": "direct",
    "card": dict.fromkeys(("visual", "type", "bin", "expiry_month", "expiry_year")),
    "product_rating": None,
    "quantity": 1,
    "can_contact": True,
    **dict.fromkeys(
        (
            *("product_has_variants", "has_variants", "has_custom_fields", "is_following"),
            *("is_product_physical", "is_additional_contribution", "discover_fee_charged"),
            *("is_upgrade_purchase", "is_gift_sender_purchase", "is_gift_receiver_purchase"),
        ),
        False,
    ),
}
_PRODUCT_CONSTANTS: dict[str, Any] = {
    **dict.fromkeys(
        (
            *("custom_receipt", "custom_summary", "customizable_price", "max_purchase_count"),
            *("preview_url", "url", "thumbnail_url", "custom_delivery_url"),
        )
    ),
    "description": "",
    "require_shipping": False,
    "published": True,
    "currency": "usd",
    "custom_fields": [],
    "tags": [],
    "file_info": {},
    "variants": [],
}


@dataclass(frozen=True)
class Call:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, str]


@dataclass(frozen=True)
class _Buyer:
    email: str  # typed at checkout: the sale's purchase_email
    account_email: str | None = None  # the buyer's Gumroad account, if any
    full_name: str | None = None
    purchaser_id: str | None = None


@dataclass
class _Product:
    id: str
    seller_id: str
    name: str
    unique_permalink: str
    custom_permalink: str | None
    recurrence: str | None  # None: not a membership
    tiered: bool
    price_cents: int
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    deleted: bool = False


@dataclass
class _Subscription:
    id: str
    product_id: str
    buyer: _Buyer
    created_at: datetime
    test: bool
    purchases: list[str] = field(default_factory=list)
    cancelled_at: datetime | None = None
    ended_at: datetime | None = None
    failed_at: datetime | None = None
    deactivated_at: datetime | None = None
    user_requested_cancellation_at: datetime | None = None


@dataclass
class _Sale:
    number: int  # the database id behind the external one: page keys use it
    id: str
    product: _Product
    buyer: _Buyer
    created_at: datetime
    test: bool
    subscription_id: str | None = None
    refunded: bool = False
    partially_refunded: bool = False
    disputed: bool = False  # charged back at some point
    dispute_won: bool = False


class GumroadStandIn:
    """Gumroad's objects and API; seed it with the methods below, serve ``app``."""

    def __init__(
        self,
        *,
        rate_limit: tuple[int, float] | None = None,
        retry_after_header: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # access token -> (the seller it belongs to, its scopes)
        self.tokens: dict[str, tuple[str, frozenset[str]]] = {
            TOKEN: (SELLER_ID, frozenset({"view_sales"}))
        }
        self.rate_limit = rate_limit  # (requests, period in seconds): one fixed window
        self.retry_after_header = retry_after_header
        self.clock = clock  # decides which cancellations are past
        self.calls: list[Call] = []
        self.products: dict[str, _Product] = {}
        self.subscriptions: dict[str, _Subscription] = {}
        self.sales: dict[str, _Sale] = {}
        self._serial = 0
        # id -> {"resource_name", "post_url", "seller_id"}: the live resource subscriptions.
        self.resource_subscriptions: dict[str, dict[str, str]] = {}
        self._forced_429s: list[str | None] = []
        self._window = (-1, 0)  # (window number, requests in it)
        self.app = self._build()

    # -- seeding ---------------------------------------------------------------------------

    def add_token(
        self, token: str, seller_id: str, scopes: tuple[str, ...] = ("view_sales",)
    ) -> None:
        """Another access token, of ``seller_id`` (another seller's, or with other scopes)."""
        self.tokens[token] = (seller_id, frozenset(scopes))

    def add_product(
        self,
        name: str,
        *,
        membership: bool = False,
        tiered: bool = False,
        recurrence: str = "monthly",
        custom_permalink: str | None = None,
        price_cents: int = 1000,
        seller_id: str = SELLER_ID,
    ) -> str:
        """A product (``membership``/``tiered``: a subscription product); its id."""
        ident = self._id("product")
        digest = hashlib.sha256(ident.encode()).digest()
        unique = base64.b32encode(digest).decode()[:5].capitalize()
        recurring = recurrence if membership or tiered else None
        self.products[ident] = _Product(
            ident, seller_id, name, unique, custom_permalink, recurring, tiered, price_cents
        )
        return ident

    def delete_product(self, product_id: str) -> None:
        """Gone from ``GET /v2/products`` and its subscribers list; its sales stay."""
        self.products[product_id].deleted = True

    def unique_permalink(self, product_id: str) -> str:
        """The product's short permalink (the sale's ``product_permalink``)."""
        return self.products[product_id].unique_permalink

    def sell(
        self, product_id: str, email: str, *, at: datetime, test: bool = False, **buyer: Any
    ) -> str:
        """A one-time purchase; ``buyer``: account_email, full_name, purchaser_id. Its id.

        ``test``: the seller bought their own product (purchase_state test_successful).
        """
        return self._sale(product_id, _Buyer(email, **buyer), at, test, None)

    def subscribe(
        self, product_id: str, email: str, *, at: datetime, test: bool = False, **buyer: Any
    ) -> tuple[str, str]:
        """A membership bought: (subscription id, the first charge's sale id)."""
        subscription = _Subscription(
            self._id("subscription"), product_id, _Buyer(email, **buyer), at, test
        )
        self.subscriptions[subscription.id] = subscription
        return subscription.id, self.renew(subscription.id, at=at)

    def renew(self, subscription_id: str, *, at: datetime) -> str:
        """A charge of the subscription (every renewal is a sale of its own); its id."""
        s = self.subscriptions[subscription_id]
        sale_id = self._sale(s.product_id, s.buyer, at, s.test, subscription_id)
        s.purchases.append(sale_id)
        return sale_id

    def refund(self, sale_id: str, *, amount_cents: int | None = None) -> None:
        """A full refund, or a partial one of ``amount_cents`` (PUT /v2/sales/:id/refund)."""
        sale = self.sales[sale_id]
        if amount_cents is not None and amount_cents < sale.product.price_cents:
            sale.partially_refunded = True
        else:
            sale.refunded, sale.partially_refunded = True, False

    def chargeback(self, sale_id: str) -> None:
        """The buyer's bank took the money back: disputed and charged back."""
        self.sales[sale_id].disputed = True

    def win_dispute(self, sale_id: str) -> None:
        """The chargeback reversed: still ``disputed``, now ``dispute_won``."""
        self.sales[sale_id].dispute_won = True

    def cancel(self, subscription_id: str, *, at: datetime) -> None:
        """Cancelled as of ``at`` (the end of the paid period): pending until then, then over."""
        s = self.subscriptions[subscription_id]
        s.user_requested_cancellation_at, s.cancelled_at = self._now(), at
        if at <= self._now():
            s.deactivated_at = at

    def end(self, subscription_id: str, *, at: datetime, reason: str) -> None:
        """Over at ``at`` for ``reason``: failed_payment, fixed_subscription_period_ended,
        or cancelled.
        """
        s = self.subscriptions[subscription_id]
        stamp = {"failed_payment": "failed_at", "fixed_subscription_period_ended": "ended_at"}
        setattr(s, stamp.get(reason, "cancelled_at"), at)
        s.deactivated_at = at

    def throttle(self, count: int, *, retry_after: str | None = None) -> None:
        """Answer the next ``count`` requests 429 (``retry_after``: a header to send)."""
        self._forced_429s.extend([retry_after] * count)

    def subscribe_resource(
        self, resource_name: str, post_url: str, *, seller_id: str = SELLER_ID
    ) -> str:
        """A resource subscription made earlier; its id."""
        ident = self._id("resource_subscription")
        self.resource_subscriptions[ident] = {
            "resource_name": resource_name,
            "post_url": post_url,
            "seller_id": seller_id,
        }
        return ident

    def subscribed(self, seller_id: str = SELLER_ID) -> list[tuple[str, str]]:
        """(resource name, post URL) of the seller's live resource subscriptions, in order."""
        return [
            (found["resource_name"], found["post_url"])
            for found in self.resource_subscriptions.values()
            if found["seller_id"] == seller_id
        ]

    def calls_to(self, path: str) -> list[Call]:
        """The calls made to one path."""
        return [call for call in self.calls if call.path == path]

    # -- views -----------------------------------------------------------------------------

    def _build(self) -> Flask:
        app = Flask("gumroad_standin")

        @app.before_request
        def gate() -> Response | None:
            # Rack::Attack answers before the app, so before Doorkeeper looks at the token.
            self.calls.append(Call(request.method, request.path, request.args.to_dict()))
            return self._limited() or self._authorize()

        @app.get("/v2/products")
        def products() -> Response:
            owned = [p for p in self.products.values() if p.seller_id == g.seller]
            owned = sorted((p for p in owned if not p.deleted), key=lambda p: p.created_at)
            return jsonify(success=True, products=[self._product_json(p) for p in owned[::-1]])

        @app.get("/v2/sales")
        def sales() -> Response | tuple[Response, int]:
            return self._sales_page()

        @app.get("/v2/sales/<path:sale_id>")
        def sale(sale_id: str) -> Response:
            found = self.sales.get(sale_id)
            if found is None or found.product.seller_id != g.seller:
                return jsonify(success=False, message="The sale was not found.")
            return jsonify(success=True, sale=self._sale_json(found))

        @app.get("/v2/products/<product_id>/subscribers")
        def subscribers(product_id: str) -> Response | tuple[Response, int]:
            return self._subscribers_page(product_id)

        @app.get("/v2/subscribers/<path:subscription_id>")
        def subscriber(subscription_id: str) -> Response:
            found = self.subscriptions.get(subscription_id)
            if found is None or self.products[found.product_id].seller_id != g.seller:
                return jsonify(success=False, message="The subscriber was not found.")
            return jsonify(success=True, subscriber=self._subscriber_json(found))

        @app.route("/v2/resource_subscriptions", methods=["GET", "PUT"])
        def resource_subscriptions() -> Response:
            resource_name = request.values.get("resource_name", "")
            if request.method == "GET":
                if resource_name not in RESOURCE_NAMES:
                    return jsonify(success=False, message="Valid resource_name parameter required")
                found = [
                    {"id": ident, "resource_name": s["resource_name"], "post_url": s["post_url"]}
                    for ident, s in self.resource_subscriptions.items()
                    if s["seller_id"] == g.seller and s["resource_name"] == resource_name
                ]
                return jsonify(success=True, resource_subscriptions=found)
            post_url = request.values.get("post_url", "")
            if not _valid_post_url(post_url):
                return jsonify(success=False, message=f"Invalid post URL '{post_url}'")
            if resource_name not in RESOURCE_NAMES:
                return jsonify(success=False, message="Unable to subscribe to ''.")
            ident = self.subscribe_resource(resource_name, post_url, seller_id=g.seller)
            made = {"id": ident, "resource_name": resource_name, "post_url": post_url}
            return jsonify(success=True, resource_subscription=made)

        @app.delete("/v2/resource_subscriptions/<path:subscription_id>")
        def unsubscribe(subscription_id: str) -> Response:
            found = self.resource_subscriptions.get(subscription_id)
            if found is None or found["seller_id"] != g.seller:
                return jsonify(success=False, message="The resource_subscription was not found.")
            del self.resource_subscriptions[subscription_id]
            return jsonify(success=True, resource_subscription=None)

        return app

    def _limited(self) -> Response | None:
        headers: dict[str, str] = {}
        if self._forced_429s:
            retry_after = self._forced_429s.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
        elif self.rate_limit is not None:
            limit, period = self.rate_limit
            now = self.clock()
            window = int(now // period)
            self._window = (window, self._window[1] + 1 if self._window[0] == window else 1)
            if self._window[1] <= limit:
                return None
            if self.retry_after_header:  # rack-attack's: the rest of the period
                headers = {"Retry-After": str(int(period - now % period) or 1)}
        else:
            return None
        return Response("Retry later\n", status=429, mimetype="text/plain", headers=headers)

    def _authorize(self) -> Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        owner = self.tokens.get(token or request.values.get("access_token", ""))
        if owner is None:  # Doorkeeper's `head :unauthorized`
            challenge = _CHALLENGE.format("The access token is invalid")
            return Response(b"", status=401, headers={"WWW-Authenticate": challenge})
        if request.path != "/v2/products" and "view_sales" not in owner[1]:
            challenge = 'Bearer realm="Doorkeeper", error="insufficient_scope"'
            return Response(b"", status=403, headers={"WWW-Authenticate": challenge})
        g.seller = owner[0]
        return None

    def _sales_page(self) -> Response | tuple[Response, int]:
        rows = [s for s in self.sales.values() if s.product.seller_id == g.seller and not s.test]
        for name in ("before", "after"):
            if (value := request.values.get(name)) is None:
                continue
            try:
                day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                error = f"Invalid date format provided in field '{name}'. " + _DATES
                return jsonify(status=400, error=error), 400
            before = name == "before"
            rows = [s for s in rows if (s.created_at < day) == before]
        if email := (request.values.get("email") or "").strip():
            rows = [s for s in rows if s.buyer.email == email]
        if product_id := request.values.get("product_id"):
            rows = [s for s in rows if s.product.id == product_id]
        return self._page(rows, "sales", SALES_PER_PAGE, self._sale_json)

    def _subscribers_page(self, product_id: str) -> Response | tuple[Response, int]:
        product = self.products.get(product_id) or next(
            (p for p in self.products.values() if p.unique_permalink == product_id), None
        )
        if product is None or product.seller_id != g.seller or product.deleted:
            return jsonify(success=False, message="The product was not found.")
        subscriptions = self.subscriptions.values()
        rows = [s for s in subscriptions if s.product_id == product.id and self._active(s)]
        if (
            request.values.get("paginated") not in ("1", "true")
            and "page_key" not in request.values
        ):
            rows.sort(key=lambda s: (s.created_at, self._number(s)), reverse=True)
            return jsonify(success=True, subscribers=[self._subscriber_json(s) for s in rows])
        return self._page(rows, "subscribers", SUBSCRIBERS_PER_PAGE, self._subscriber_json)

    def _page(
        self, rows: list[Any], name: str, size: int, render: Callable[[Any], dict[str, Any]]
    ) -> Response | tuple[Response, int]:
        """Gumroad's keyset pages: newest first, then ``created_at <= key's and id < key's``."""
        rows.sort(key=lambda r: (r.created_at, self._number(r)), reverse=True)
        if page_key := request.values.get("page_key"):
            try:
                stamp, number = page_key.split("-")
                key_at = datetime.strptime(stamp, "%Y%m%d%H%M%S%f").replace(tzinfo=UTC)
                if int(number) == 0:
                    raise ValueError(page_key)
            except ValueError:
                return jsonify(status=400, error="Invalid page_key."), 400
            rows = [r for r in rows if r.created_at <= key_at and self._number(r) < int(number)]
        body: dict[str, Any] = {"success": True, name: [render(r) for r in rows[:size]]}
        if len(rows) > size:
            last = rows[size - 1]
            key = f"{last.created_at:%Y%m%d%H%M%S%f}-{self._number(last)}"
            query = {k: v for k, v in request.args.items() if k not in ("access_token", "page")}
            body["next_page_key"] = key
            body["next_page_url"] = f"{request.path}?{urlencode({**query, 'page_key': key})}"
        return jsonify(body)

    # -- JSON ------------------------------------------------------------------------------

    def _sale_json(self, sale: _Sale) -> dict[str, Any]:
        """Purchase#as_json(version: 2), the fields the docs show."""
        product, buyer, price = sale.product, sale.buyer, sale.product.price_cents
        body: dict[str, Any] = {
            **_SALE_CONSTANTS,
            "id": sale.id,
            "email": buyer.account_email or buyer.email,  # purchaser_email_or_email
            "purchase_email": buyer.email,
            "seller_id": product.seller_id,
            "daystamp": f"{sale.created_at:%-d %b %Y %-I:%M %p}",
            "created_at": f"{sale.created_at:{_STAMP}}",
            "product_id": product.id,
            "product_name": product.name,
            "product_permalink": product.unique_permalink,
            "price": price,
            "gumroad_fee": price // 10,
            "paid": price != 0,
            "subscription_duration": product.recurrence,
            "formatted_display_price": f"${price / 100:g}",
            "formatted_total_price": f"${price / 100:g}",
            "amount_refundable_in_currency": "0" if sale.refunded else f"{price / 100:g}",
            "order_id": 524459995 + sale.number,
            "is_recurring_billing": product.recurrence is not None,
            "refunded": sale.refunded,
            "partially_refunded": sale.partially_refunded,
            "chargedback": sale.disputed and not sale.dispute_won,  # chargedback_not_reversed?
            "disputed": sale.disputed,
            "dispute_won": sale.dispute_won,
        }
        # as_json drops the nil values of its main block: no full_name, no purchaser_id.
        for key, value in (("full_name", buyer.full_name), ("purchaser_id", buyer.purchaser_id)):
            if value is not None:
                body[key] = value
        if sale.subscription_id is not None:
            s = self.subscriptions[sale.subscription_id]
            body.update(
                subscription_id=s.id,
                cancelled=bool(s.cancelled_at or s.failed_at),  # cancelled_or_failed?
                dead=not self._alive(s),
                ended=s.ended_at is not None,
                free_trial_ended=None,
                free_trial_ends_on=None,
                recurring_charge=s.purchases[0] != sale.id,
            )
        return body

    def _subscriber_json(self, s: _Subscription) -> dict[str, Any]:
        """Subscription#as_json."""

        def stamp(moment: datetime | None) -> str | None:
            return f"{moment:{_STAMP}}" if moment is not None else None

        product = self.products[s.product_id]
        return {
            "id": s.id,
            "email": s.buyer.account_email or s.buyer.email,  # user's form_email, else the sale's
            "product_id": product.id,
            "product_name": product.name,
            "user_id": s.buyer.purchaser_id,
            "user_email": s.buyer.account_email,
            # purchases.for_sales_api: no ORDER BY, so MySQL's subscription_id index order,
            # which is id order: oldest charge first.
            "purchase_ids": [p for p in s.purchases if not self.sales[p].test],
            "created_at": stamp(s.created_at),
            "user_requested_cancellation_at": stamp(s.user_requested_cancellation_at),
            "charge_occurrence_count": None,
            "recurrence": product.recurrence,
            "cancelled_at": stamp(s.cancelled_at),
            "ended_at": stamp(s.ended_at),
            "failed_at": stamp(s.failed_at),
            "free_trial_ends_at": None,
            "status": self._status(s),
        }

    def _product_json(self, p: _Product) -> dict[str, Any]:
        """Link#as_json_for_api, with the view_sales counts."""
        sold = [s for s in self.sales.values() if s.product is p and not s.test]
        return {
            **_PRODUCT_CONSTANTS,
            "id": p.id,
            "name": p.name,
            "custom_permalink": p.custom_permalink,
            "short_url": f"https://seller.gumroad.com/l/{p.custom_permalink or p.unique_permalink}",
            "price": p.price_cents,
            "formatted_price": f"${p.price_cents / 100:g}",
            "deleted": p.deleted,
            "subscription_duration": p.recurrence,
            "is_tiered_membership": p.tiered,
            "recurrences": [p.recurrence] if p.tiered else None,
            "sales_count": str(len(sold)),
            "sales_usd_cents": str(len(sold) * p.price_cents),
        }

    # -- state -----------------------------------------------------------------------------

    def _active(self, s: _Subscription) -> bool:
        """Subscription.active: alive, pending cancellations included, and not a test."""
        return not s.test and self._alive(s)

    def _alive(self, s: _Subscription) -> bool:
        """Subscription#alive?: pending cancellations are alive."""
        if s.failed_at or s.ended_at:
            return False
        return s.cancelled_at is None or s.cancelled_at.timestamp() > self.clock()

    def _status(self, s: _Subscription) -> str:
        """Subscription#status: the termination reason once deactivated."""
        if s.deactivated_at is not None:
            if s.failed_at:
                return "failed_payment"
            return "fixed_subscription_period_ended" if s.ended_at else "cancelled"
        return "pending_cancellation" if self._alive(s) and s.cancelled_at else "alive"

    def _number(self, row: _Sale | _Subscription) -> int:
        return row.number if isinstance(row, _Sale) else self.sales[row.purchases[0]].number

    def _sale(
        self, product_id: str, buyer: _Buyer, at: datetime, test: bool, subscription: str | None
    ) -> str:
        self._serial += 1
        sale = _Sale(self._serial, self._id("sale"), self.products[product_id], buyer, at, test)
        sale.subscription_id = subscription
        self.sales[sale.id] = sale
        return sale.id

    def _id(self, kind: str) -> str:
        """Gumroad's external ids: 16 bytes, URL-safe base64 with its ``==`` padding."""
        self._serial += 1
        digest = hashlib.sha256(f"{kind}:{self._serial}".encode()).digest()[:16]
        return base64.urlsafe_b64encode(digest).decode()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


def _valid_post_url(post_url: str) -> bool:
    """ResourceSubscription.valid_post_url?, without resolving the host name."""
    try:
        parts = urlsplit(post_url)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or host == "localhost":
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return not all(char in "0123456789abcdef:." for char in host)
    return address.is_global
