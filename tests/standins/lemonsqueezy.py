"""Lemon Squeezy's REST API for subscriptions and orders, as its public docs describe it.

- docs.lemonsqueezy.com/api/getting-started/requests: ``Authorization: Bearer {api_key}``,
  the JSON:API ``Accept``, page-based pagination (``page[number]``, ``page[size]``: default
  10, at most 100), URL-encoded ``links`` (``first``, ``last``, ``next``, ``prev``; no
  ``next`` on the last page) and ``meta.page`` (``currentPage``, ``from``, ``lastPage``,
  ``perPage``, ``to``, ``total``).
- docs.lemonsqueezy.com/api ("Rate limiting"): 300 calls a minute; ``X-Ratelimit-Limit``
  and ``X-Ratelimit-Remaining`` on successful responses; ``429 Too Many Requests`` beyond.
- docs.lemonsqueezy.com/api/getting-started/responses: every 4xx carries a JSON:API
  ``errors`` array; the 401 body is the one the API sends (``"detail": "Unauthenticated."``).
- .../api/orders/list-all-orders, .../api/subscriptions/list-all-subscriptions: newest
  first (``sort=-createdAt``); ``GET /v1/orders/:id``, ``/v1/subscriptions/:id``; the
  objects' attributes as in shared/fixtures/lemonsqueezy (the-order-object, ...).
Chosen here, not in the docs: a ``page[size]`` over 100 or a page below 1 gets a 400
JSON:API error; a 429 carries ``Retry-After`` (seconds left in the minute, as Laravel's
throttle sends: the API's error bodies are Laravel's) unless ``retry_after=False``.
The documented ``filter[...]`` parameters are not served: the source lists everything.
Stores (``GET /v1/stores``, seeded by :meth:`LemonSqueezyStandIn.add_store`) and webhooks
(docs.lemonsqueezy.com/api/webhooks: list, retrieve, create with ``url``, ``events``,
``secret`` and the store relationship, update, delete; the secret never shown) follow
lemonsqueezy.js (src/webhooks); their 409/415/422 wording is chosen here.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, g, request

# The first object's created_at (2023-11-14T22:13:20Z); each change moves the clock 1 s on.
EPOCH = 1_700_000_000.0
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
ORDER_STATUSES = ("pending", "failed", "paid", "refunded", "partial_refund", "fraudulent")
SUBSCRIPTION_STATUSES = (
    "on_trial", "active", "paused", "past_due", "unpaid", "cancelled", "expired"
)  # fmt: skip
_RELATIONSHIPS = {
    "subscriptions": ("store", "customer", "order", "order-item", "product", "variant",
                      "subscription-items", "subscription-invoices"),
    "orders": ("store", "customer", "order-items", "subscriptions", "license-keys",
               "discount-redemptions"),
    "stores": ("products", "orders", "subscriptions", "discounts", "license-keys", "webhooks"),
    "webhooks": ("store",),
}  # fmt: skip
# The events a webhook may subscribe to (lemonsqueezy.js src/webhooks/types.ts, and the
# docs' help/webhooks#event-types).
WEBHOOK_EVENTS = frozenset({
    "order_created", "order_refunded", "subscription_created", "subscription_updated",
    "subscription_cancelled", "subscription_resumed", "subscription_expired",
    "subscription_paused", "subscription_unpaused", "subscription_payment_success",
    "subscription_payment_failed", "subscription_payment_recovered",
    "subscription_payment_refunded", "license_key_created", "license_key_updated",
    "affiliate_activated",
})  # fmt: skip
# A webhook secret shorter than this is refused (chosen here: the docs name no bound).
MIN_WEBHOOK_SECRET = 6
_DAY = 86_400.0


@dataclass(frozen=True)
class Call:
    """One request the stand-in answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int


class LemonSqueezyStandIn:
    """Stores, products, variants, orders and subscriptions, served as Lemon Squeezy does."""

    def __init__(
        self,
        api_key: str,
        *,
        per_minute: int = 300,
        retry_after: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.per_minute = per_minute
        self.retry_after = retry_after
        self.calls: list[Call] = []
        self.now = EPOCH  # the store's clock: created_at / updated_at
        self._clock = clock
        self._lock = threading.RLock()
        self._window: tuple[float, int] | None = None  # (start, calls in it)
        self._forced: list[int | None] = []  # queued 429s, each with its Retry-After
        self._next_id = 0
        self._variants: dict[int, tuple[int, int]] = {}  # variant -> (product, store)
        self._objects: dict[str, dict[int, dict[str, Any]]] = {"subscriptions": {}, "orders": {}}
        self._objects.update(stores={}, webhooks={})
        # A webhook's secret: set by the API, never shown by it.
        self.webhook_secrets: dict[int, str] = {}
        self.app = self._create_app()

    # -- seeding ----------------------------------------------------------------------

    def add_variant(self, *, store_id: int | None = None) -> int:
        """A new variant of a new product (in ``store_id``, else a new store)."""
        with self._lock:
            store = store_id if store_id is not None else self._id()
            product, variant = self._id(), self._id()
            self._variants[variant] = (product, store)
            return variant

    def add_order(
        self,
        email: str,
        *,
        variant_id: int | None = None,
        status: str = "paid",
        name: str = "Dan R",
        test_mode: bool = False,
        customer_id: int | None = None,
    ) -> int:
        """A new order of one item; its status any of ORDER_STATUSES."""
        with self._lock:
            variant = variant_id if variant_id is not None else self.add_variant()
            product, store = self._variants[variant]
            order_id, stamp = self._id(), self._stamp()
            self._objects["orders"][order_id] = {
                "store_id": store, "customer_id": customer_id or self._id(),
                "identifier": str(uuid.UUID(int=order_id)), "order_number": order_id,
                "user_name": name, "user_email": email, "currency": "USD", "subtotal": 999,
                "tax": 0, "total": 999, "total_usd": 999, "status": "paid",
                "status_formatted": "Paid", "refunded": False, "refunded_at": None,
                "refunded_amount": 0, "total_formatted": "$9.99",
                "first_order_item": {
                    "id": order_id, "order_id": order_id, "product_id": product,
                    "variant_id": variant, "product_name": "Membership",
                    "variant_name": "Default", "price": 999, "created_at": stamp,
                    "updated_at": stamp, "test_mode": test_mode,
                },
                "urls": {"receipt": f"https://app.lemonsqueezy.com/my-orders/{order_id}"},
                "created_at": stamp, "updated_at": stamp, "test_mode": test_mode,
            }  # fmt: skip
            if status != "paid":
                self.set_order_status(order_id, status, tick=False)
            return order_id

    def add_subscription(
        self,
        email: str,
        *,
        variant_id: int | None = None,
        status: str = "active",
        pause_mode: str | None = None,
        name: str = "Dan R",
        test_mode: bool = False,
    ) -> int:
        """A new subscription and the paid order that started it; status any of
        SUBSCRIPTION_STATUSES (``pause_mode`` "free"/"void" when paused)."""
        with self._lock:
            order_id = self.add_order(email, variant_id=variant_id, name=name, test_mode=test_mode)
            order = self._objects["orders"][order_id]
            item = order["first_order_item"]
            subscription_id, stamp = self._id(), self._stamp()
            self._objects["subscriptions"][subscription_id] = {
                "store_id": order["store_id"], "customer_id": order["customer_id"],
                "order_id": order_id, "order_item_id": item["id"],
                "product_id": item["product_id"], "variant_id": item["variant_id"],
                "product_name": "Membership", "variant_name": "Default", "user_name": name,
                "user_email": email, "status": "active", "status_formatted": "Active",
                "card_brand": "visa", "card_last_four": "4242", "pause": None,
                "cancelled": False, "trial_ends_at": None, "billing_anchor": 1,
                "first_subscription_item": None, "urls": {},
                "renews_at": _iso(self.now + 30 * _DAY), "ends_at": None,
                "created_at": stamp, "updated_at": stamp, "test_mode": test_mode,
            }  # fmt: skip
            if status != "active":
                self.set_status(subscription_id, status, pause_mode=pause_mode, tick=False)
            return subscription_id

    def set_status(
        self, subscription_id: int, status: str, *, pause_mode: str | None = None, tick: bool = True
    ) -> None:
        """Move a subscription to ``status``, keeping pause, cancelled and the dates in step."""
        if status not in SUBSCRIPTION_STATUSES:
            raise ValueError(f"not a subscription status: {status}")
        with self._lock:
            sub = self._objects["subscriptions"][subscription_id]
            stamp = self._stamp() if tick else sub["updated_at"]
            sub.update(status=status, status_formatted=status.replace("_", " ").capitalize())
            paused = status == "paused"
            sub["pause"] = {"mode": pause_mode or "void", "resumes_at": None} if paused else None
            sub["trial_ends_at"] = _iso(self.now + 7 * _DAY) if status == "on_trial" else None
            if status == "cancelled":
                sub.update(cancelled=True, ends_at=sub["renews_at"])
            elif status == "expired":
                sub["ends_at"] = sub["ends_at"] or stamp
            else:
                sub.update(cancelled=False, ends_at=None)
            sub["updated_at"] = stamp

    def cancel(self, subscription_id: int) -> None:
        """The customer cancels: access continues until ``ends_at``."""
        self.set_status(subscription_id, "cancelled")

    def expire(self, subscription_id: int) -> None:
        """The subscription ends."""
        self.set_status(subscription_id, "expired")

    def set_order_status(self, order_id: int, status: str, *, tick: bool = True) -> None:
        """Move an order to ``status``; refunds set ``refunded``, ``refunded_at`` and amount."""
        if status not in ORDER_STATUSES:
            raise ValueError(f"not an order status: {status}")
        with self._lock:
            order = self._objects["orders"][order_id]
            stamp = self._stamp() if tick else order["updated_at"]
            refunds = {"refunded": order["total"], "partial_refund": order["total"] // 2}
            order.update(
                status=status,
                status_formatted=status.replace("_", " ").capitalize(),
                refunded=status == "refunded",
                refunded_at=stamp if status in refunds else None,
                refunded_amount=refunds.get(status, 0),
                updated_at=stamp,
            )

    def refund(self, order_id: int, *, partial: bool = False) -> None:
        """Refund an order in full (status ``refunded``) or in part (``partial_refund``)."""
        self.set_order_status(order_id, "partial_refund" if partial else "refunded")

    def patch(self, collection: str, object_id: int, **attributes: Any) -> None:
        """Set raw attributes, for shapes the seeding methods never make (no clock tick)."""
        with self._lock:
            self._objects[collection][object_id].update(attributes)

    def resource(self, collection: str, object_id: int, base: str = "") -> dict[str, Any]:
        """The JSON:API resource object the API lists for one object."""
        with self._lock:
            attributes = json.loads(json.dumps(self._objects[collection][object_id]))
        own = f"{base}/v1/{collection}/{object_id}"
        relationships = {
            name: {"links": {"related": f"{own}/{name}", "self": f"{own}/relationships/{name}"}}
            for name in _RELATIONSHIPS[collection]
        }
        return {
            "type": collection,
            "id": str(object_id),
            "attributes": attributes,
            "relationships": relationships,
            "links": {"self": own},
        }

    def add_store(self, name: str = "My Store") -> int:
        """A store of the key's user (``GET /v1/stores`` lists it)."""
        with self._lock:
            store_id, stamp = self._id(), self._stamp()
            slug = name.lower().replace(" ", "-")
            self._objects["stores"][store_id] = {
                "name": name, "slug": slug, "domain": f"{slug}.lemonsqueezy.com",
                "url": f"https://{slug}.lemonsqueezy.com", "avatar_url": None, "plan": "fresh",
                "country": "US", "country_nicename": "United States", "currency": "USD",
                "total_sales": 0, "total_revenue": 0, "thirty_day_sales": 0,
                "thirty_day_revenue": 0, "created_at": stamp, "updated_at": stamp,
            }  # fmt: skip
            return store_id

    def add_webhook(self, store_id: int, url: str, events: list[str], secret: str) -> int:
        """A webhook made earlier (in the dashboard, say)."""
        with self._lock:
            webhook_id, stamp = self._id(), self._stamp()
            self._objects["webhooks"][webhook_id] = {
                "store_id": store_id, "url": url, "events": list(events), "last_sent_at": None,
                "created_at": stamp, "updated_at": stamp, "test_mode": False,
            }  # fmt: skip
            self.webhook_secrets[webhook_id] = secret
            return webhook_id

    def webhooks(self) -> dict[int, dict[str, Any]]:
        """Copies of every webhook's attributes, by id, oldest first."""
        with self._lock:
            return {i: json.loads(json.dumps(a)) for i, a in self._objects["webhooks"].items()}

    def throttle(self, count: int, *, retry_after: int | None = 1) -> None:
        """Answer the next ``count`` requests 429 (``Retry-After`` omitted when None)."""
        with self._lock:
            self._forced.extend([retry_after] * count)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _stamp(self) -> str:
        self.now += 1
        return _iso(self.now)

    # -- HTTP -------------------------------------------------------------------------

    def _create_app(self) -> Flask:
        app = Flask("lemonsqueezy_standin")
        app.before_request(self._gate)
        app.after_request(self._record)
        app.add_url_rule("/v1/<collection>", view_func=self._list)
        app.add_url_rule("/v1/<collection>/<object_id>", view_func=self._read)
        app.add_url_rule("/v1/webhooks", "create_webhook", self._create_webhook, methods=["POST"])
        app.add_url_rule(
            "/v1/webhooks/<object_id>", "change_webhook", self._change_webhook,
            methods=["PATCH", "DELETE"],
        )  # fmt: skip
        return app

    def _gate(self) -> Response | None:
        """Rate limit, then authentication, then content negotiation."""
        with self._lock:
            if self._forced:
                return self._too_many(self._forced.pop(0))
            now = self._clock()
            start, used = self._window or (now, 0)
            if now - start >= 60:
                start, used = now, 0
            if used >= self.per_minute:
                self._window = (start, used)
                return self._too_many(math.ceil(start + 60 - now))
            self._window = (start, used + 1)
            g.remaining = self.per_minute - used - 1
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _errors(401, "Unauthorized", "Unauthenticated.")
        accept = request.headers.get("Accept", "*/*")
        if not any(kind in accept for kind in ("application/vnd.api+json", "*/*", "application/*")):
            return _errors(406, "Not Acceptable", "The API serves application/vnd.api+json.")
        return None

    def _too_many(self, retry_after: int | None) -> Response:
        response = _errors(429, "Too Many Requests", "Too Many Attempts.")
        response.headers["X-Ratelimit-Limit"] = str(self.per_minute)
        response.headers["X-Ratelimit-Remaining"] = "0"
        if retry_after is not None and self.retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response

    def _record(self, response: Response) -> Response:
        if 200 <= response.status_code < 300:
            response.headers["X-Ratelimit-Limit"] = str(self.per_minute)
            response.headers["X-Ratelimit-Remaining"] = str(g.get("remaining", 0))
        with self._lock:
            self.calls.append(
                Call(request.method, request.path, dict(request.args), response.status_code)
            )
        return response

    def _list(self, collection: str) -> Response:
        if collection not in self._objects:
            return _errors(404, "Not Found", "The requested resource could not be found.")
        try:
            number = int(request.args.get("page[number]", "1"))
            size = int(request.args.get("page[size]", str(DEFAULT_PAGE_SIZE)))
        except ValueError:
            number = size = 0
        if number < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            return _errors(400, "Invalid Query Parameter",
                           f"page[number] must be at least 1 and page[size] 1 to {MAX_PAGE_SIZE}.",
                           source={"parameter": "page"})  # fmt: skip
        with self._lock:
            objects = self._objects[collection]
            ids = sorted(objects, key=lambda i: (objects[i]["created_at"], i), reverse=True)
        base = request.host_url.rstrip("/")
        last = max(1, math.ceil(len(ids) / size))
        start = (number - 1) * size
        chunk = ids[start : start + size]

        def link(page: int) -> str:
            params = {"page[number]": page, "page[size]": size, "sort": "-createdAt"}
            return f"{base}/v1/{collection}?{urlencode(params)}"

        links = {"first": link(1), "last": link(last)}
        if number < last:
            links["next"] = link(number + 1)
        if number > 1:
            links["prev"] = link(number - 1)
        page = {
            "currentPage": number, "from": start + 1 if chunk else None, "lastPage": last,
            "perPage": size, "to": start + len(chunk) if chunk else None, "total": len(ids),
        }  # fmt: skip
        return _document(
            {
                "meta": {"page": page},
                "jsonapi": {"version": "1.0"},
                "links": links,
                "data": [self.resource(collection, i, base) for i in chunk],
            }
        )

    def _read(self, collection: str, object_id: str) -> Response:
        known = self._objects.get(collection, {})
        if not object_id.isdigit() or int(object_id) not in known:
            return _errors(404, "Not Found", "The requested resource could not be found.")
        base = request.host_url.rstrip("/")
        resource = self.resource(collection, int(object_id), base)
        return _document(
            {"jsonapi": {"version": "1.0"}, "links": resource["links"], "data": resource}
        )

    def _create_webhook(self) -> Response:
        try:
            data = _resource_body(None)
            attributes = data.get("attributes") or {}
            store = ((data.get("relationships") or {}).get("store") or {}).get("data") or {}
            store_id = str(store.get("id", "")) if isinstance(store, dict) else ""
            if not store_id:
                raise _Invalid(
                    422,
                    "Unprocessable Entity",
                    "The store field is required.",
                    "/data/relationships/store",
                )
            if not store_id.isdigit() or int(store_id) not in self._objects["stores"]:
                raise _Invalid(
                    422,
                    "Unprocessable Entity",
                    "The selected store is invalid.",
                    "/data/relationships/store",
                )
            for name in ("url", "events", "secret"):
                if not attributes.get(name):
                    raise _Invalid(
                        422,
                        "Unprocessable Entity",
                        f"The {name} field is required.",
                        f"/data/attributes/{name}",
                    )
            _check_webhook(attributes)
        except _Invalid as invalid:
            return invalid.response
        webhook_id = self.add_webhook(
            int(store_id), attributes["url"], attributes["events"], attributes["secret"]
        )
        return self._webhook_document(webhook_id, 201)

    def _change_webhook(self, object_id: str) -> Response:
        known = self._objects["webhooks"]
        if not object_id.isdigit() or int(object_id) not in known:
            return _errors(404, "Not Found", "The requested resource could not be found.")
        webhook_id = int(object_id)
        if request.method == "DELETE":
            with self._lock:
                del known[webhook_id]
                self.webhook_secrets.pop(webhook_id, None)
            return Response(status=204)
        try:
            attributes = _resource_body(object_id).get("attributes") or {}
            _check_webhook(attributes)
        except _Invalid as invalid:
            return invalid.response
        with self._lock:
            webhook = known[webhook_id]
            for name in ("url", "events"):
                if name in attributes:
                    webhook[name] = attributes[name]
            if "secret" in attributes:
                self.webhook_secrets[webhook_id] = attributes["secret"]
            webhook["updated_at"] = self._stamp()
        return self._webhook_document(webhook_id, 200)

    def _webhook_document(self, webhook_id: int, status: int) -> Response:
        resource = self.resource("webhooks", webhook_id, request.host_url.rstrip("/"))
        body = {"jsonapi": {"version": "1.0"}, "links": resource["links"], "data": resource}
        return _document(body, status)


class _Invalid(Exception):
    """A JSON:API error answer."""

    def __init__(self, status: int, title: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail)
        extra = {"source": {"pointer": pointer}} if pointer else {}
        self.response = _errors(status, title, detail, **extra)


def _resource_body(object_id: str | None) -> dict[str, Any]:
    """The ``data`` of a JSON:API write: the media type, the type and (PATCH) the id."""
    if "application/vnd.api+json" not in request.headers.get("Content-Type", ""):
        raise _Invalid(415, "Unsupported Media Type", "Send application/vnd.api+json.")
    body = request.get_json(silent=True, force=True)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise _Invalid(400, "Bad Request", "The request body is not a JSON:API document.")
    if data.get("type") != "webhooks":
        raise _Invalid(409, "Conflict", "The resource type is not webhooks.", "/data/type")
    if object_id is not None and str(data.get("id")) != object_id:
        raise _Invalid(409, "Conflict", "The resource id does not match the URL.", "/data/id")
    return data


def _check_webhook(attributes: dict[str, Any]) -> None:
    """The attributes a webhook write may carry, each valid."""
    url = attributes.get("url")
    if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
        raise _Invalid(
            422, "Unprocessable Entity", "The url must be a valid URL.", "/data/attributes/url"
        )
    events = attributes.get("events")
    if events is not None:
        if not isinstance(events, list) or not events:
            raise _Invalid(
                422, "Unprocessable Entity", "The events must be a list.", "/data/attributes/events"
            )
        for index, event in enumerate(events):
            if event not in WEBHOOK_EVENTS:
                raise _Invalid(
                    422,
                    "Unprocessable Entity",
                    f"The selected events.{index} is invalid.",
                    f"/data/attributes/events/{index}",
                )
    secret = attributes.get("secret")
    if secret is not None and not (isinstance(secret, str) and len(secret) >= MIN_WEBHOOK_SECRET):
        raise _Invalid(
            422,
            "Unprocessable Entity",
            f"The secret must be at least {MIN_WEBHOOK_SECRET} characters.",
            "/data/attributes/secret",
        )


def _document(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/vnd.api+json")


def _errors(status: int, title: str, detail: str, **extra: Any) -> Response:
    error = {"detail": detail, "status": str(status), "title": title, **extra}
    return _document({"jsonapi": {"version": "1.0"}, "errors": [error]}, status)


def _iso(moment: float) -> str:
    """Lemon Squeezy's timestamp format: ``2023-01-17T12:26:23.000000Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
