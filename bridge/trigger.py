"""``bridge trigger``: send a correctly signed sample event to a running bridge.

What ``stripe trigger`` does, for the three providers: a sample from
``bridge/samples/`` is encoded and signed exactly as its provider does it, posted to
the bridge, and the bridge's answer is read back (queued, or ignored and why). With
the bridge's Redis at hand, the job's outcome is then read from RQ.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import stripe as stripe_sdk

from bridge.discovery import read_record
from bridge.embedded import process_alive
from bridge.events import MembershipEvent
from bridge.products import Catalog
from bridge.providers import gumroad, lemonsqueezy, stripe
from bridge.runner import (
    SANDBOX_GUMROAD_TOKEN,
    SANDBOX_LEMONSQUEEZY_SECRET,
    SANDBOX_STRIPE_SECRET,
    running_sandbox,
)
from bridge.samples import PROVIDERS, SAMPLES, Sample, default_product
from bridge.samples import gumroad as gumroad_samples
from bridge.settings import Settings
from bridge.web import EXPLAIN_HEADER

# The variable that holds each provider's webhook secret.
SECRET_VARIABLES = {
    stripe.PROVIDER: "STRIPE_WEBHOOK_SECRET",
    lemonsqueezy.PROVIDER: "LEMONSQUEEZY_WEBHOOK_SECRET",
    gumroad.PROVIDER: "GUMROAD_WEBHOOK_TOKEN",
}
# The web port `bridge run` uses when none is recorded or given.
DEFAULT_PORT = 8000
# (connect, read) seconds for the POST.
HTTP_TIMEOUT = (3.05, 10.0)
# What the bridge says about an ignored event, by the reason its answer gives.
IGNORED_BECAUSE = {
    "test_mode": (
        "the bridge ignored it: it is a test-mode event and the bridge does not accept them "
        "(BRIDGE_ACCEPT_TEST_EVENTS is not true there): send it with --live, or set "
        "BRIDGE_ACCEPT_TEST_EVENTS=true on the bridge (`bridge run --sandbox` does)"
    ),
    "unusable": "the bridge ignored it: its email or an id is not one a buyer can have",
}


class TriggerError(Exception):
    """Base of this module's errors: one line for the operator."""


class ConfigurationError(TriggerError):
    """Something the command needs is not configured (a secret, the products file)."""


class UnreachableError(TriggerError):
    """The bridge did not answer at the URL."""


@dataclass(frozen=True)
class Delivery:
    """One signed request, ready to post."""

    provider: str
    event: str
    path: str  # the route; for Gumroad it holds the token, so never print it
    body: bytes
    headers: dict[str, str]
    # What the bridge's own parser makes of it (checked here before sending).
    events: tuple[MembershipEvent, ...]

    @property
    def shown_path(self) -> str:
        """The route without a secret in it."""
        if self.provider == gumroad.PROVIDER:
            return "/webhooks/gumroad/***"
        return self.path

    @property
    def test_mode(self) -> bool:
        """Whether the bridge sees it as a test-mode event."""
        return any(event.test_mode for event in self.events)

    @property
    def products(self) -> tuple[str, ...]:
        """The product ids the event names, as the products file matches them."""
        return tuple(dict.fromkeys(p for event in self.events for p in event.products))


@dataclass(frozen=True)
class Answer:
    """What the bridge answered."""

    status: int
    body: dict[str, Any]
    jobs: tuple[str, ...] = ()
    reason: str | None = None  # why it was refused or ignored, when it was

    @property
    def accepted(self) -> bool:
        """A 2xx that queued the event (or had it already)."""
        return 200 <= self.status < 300 and self.reason is None


def sample(provider: str, event: str) -> Sample:
    """The sample, or ValueError naming the valid choices."""
    if provider not in SAMPLES:
        raise ValueError(f"unknown provider {provider!r}: one of {', '.join(PROVIDERS)}")
    events = SAMPLES[provider]
    if event not in events:
        raise ValueError(f"unknown {provider} event {event!r}: one of {', '.join(events)}")
    return events[event]


def sandbox_running(settings: Settings) -> bool:
    """Whether a ``bridge run --sandbox`` is alive on this data dir."""
    return running_sandbox(settings) is not None


def secret(provider: str, settings: Settings, *, sandbox: bool = False) -> str:
    """The provider's signing secret; ConfigurationError naming the variable when unset.

    ``sandbox``: the bridge is a ``bridge run --sandbox``, which has its own known
    secrets for the providers whose secret is not set.
    """
    if provider == stripe.PROVIDER:
        if settings.stripe_webhook_secrets:
            return settings.stripe_webhook_secrets[0]
        if sandbox:
            return SANDBOX_STRIPE_SECRET
    elif provider == lemonsqueezy.PROVIDER:
        if settings.lemonsqueezy_webhook_secrets:
            return settings.lemonsqueezy_webhook_secrets[0]
        if sandbox:
            return SANDBOX_LEMONSQUEEZY_SECRET
    elif provider == gumroad.PROVIDER:
        if settings.gumroad_webhook_token:
            return settings.gumroad_webhook_token
        if sandbox:
            return SANDBOX_GUMROAD_TOKEN
    variable = SECRET_VARIABLES[provider]
    raise ConfigurationError(
        f"{variable} is not set: the bridge disables /webhooks/{provider} without it, and "
        "this command signs with the same value"
    )


def default_url(settings: Settings, port: str | None = None) -> str:
    """The running ``bridge run``'s web address, else http://127.0.0.1:$PORT."""
    record = read_record(Path(settings.data_dir))
    if record is not None and process_alive(record.pid) and record.web_url:
        parts = urllib.parse.urlsplit(record.web_url)
        if parts.hostname in ("0.0.0.0", "::", ""):  # bound to all interfaces
            return parts._replace(netloc=f"127.0.0.1:{parts.port}").geturl()
        return record.web_url
    return f"http://127.0.0.1:{port or DEFAULT_PORT}"


def first_listed(catalog: Catalog, provider: str) -> str | None:
    """The first product id the products file lists for ``provider``, as ``--product`` takes it."""
    for rule in catalog.rules:
        for match_provider, product in sorted(rule.matches):
            if match_provider == provider:
                return product.partition(":")[2] if ":" in product else product
    return None


def product_for(provider: str, product: str | None, catalog: Catalog | None) -> str:
    """The product a sample names: the one given, else one the products file lists."""
    if product:
        return product
    listed = first_listed(catalog, provider) if catalog is not None else None
    return listed or default_product(provider)


def build(
    chosen: Sample,
    *,
    email: str,
    purchase: str,
    product: str,
    live: bool,
    secret: str,
    now: float,
    seller_id: str | None = None,
) -> Delivery:
    """The sample's request, encoded and signed as its provider sends it."""
    payload = chosen(email, purchase, product, live, now)
    if chosen.provider == stripe.PROVIDER:
        body = json.dumps(payload).encode()
        headers = {"Stripe-Signature": stripe_signature(body, secret, int(now))}
        path = "/webhooks/stripe"
        events = stripe.parse(stripe.load(body))
    elif chosen.provider == lemonsqueezy.PROVIDER:
        body = json.dumps(payload).encode()
        headers = {
            "X-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "X-Event-Name": chosen.provider_event,
        }
        path = "/webhooks/lemonsqueezy"
        events = lemonsqueezy.parse(lemonsqueezy.load(body))
    else:
        if "seller_id" in payload:
            payload["seller_id"] = seller_id or gumroad_samples.SELLER
        body = gumroad_samples.encode(payload)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        path = f"/webhooks/gumroad/{urllib.parse.quote(secret, safe='')}"
        events = gumroad.parse(
            gumroad.load(body, headers["Content-Type"]), seller_id=seller_id, received_at=now
        )
    headers.setdefault("Content-Type", "application/json")
    headers[EXPLAIN_HEADER] = "1"
    return Delivery(chosen.provider, chosen.event, path, body, headers, tuple(events))


def stripe_signature(body: bytes, secret: str, timestamp: int) -> str:
    """``Stripe-Signature`` for ``body``, computed by the stripe SDK (``t=…,v1=…``)."""
    header: str = stripe_sdk.WebhookSignature.generate_signature_header(
        body.decode("utf-8"), secret, timestamp=timestamp
    )
    return header


def unlisted(delivery: Delivery, catalog: Catalog | None) -> str | None:
    """Why the worker will ignore the event's product (a products file lists none of it)."""
    if catalog is None or not delivery.products:
        return None
    if catalog.rule_for(delivery.provider, delivery.products) is not None:
        return None
    shown = ", ".join(delivery.products)
    return f"product {shown} is not in BRIDGE_PRODUCTS: the worker will ignore it"


def send(delivery: Delivery, base_url: str, *, session: requests.Session | None = None) -> Answer:
    """Post the delivery; UnreachableError when nothing answers at ``base_url``."""
    url = base_url.rstrip("/") + delivery.path
    http = session or requests.Session()
    try:
        response = http.post(
            url, data=delivery.body, headers=delivery.headers, timeout=HTTP_TIMEOUT
        )
    except requests.RequestException as exc:
        raise UnreachableError(
            f"the bridge is unreachable at {base_url} ({type(exc).__name__}): start it with "
            "`bridge run`, or give its address with --url"
        ) from exc
    finally:
        if session is None:
            http.close()
    return read_answer(response.status_code, _json(response), test_mode=delivery.test_mode)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def read_answer(status: int, body: dict[str, Any], *, test_mode: bool) -> Answer:
    """The answer, with the reason the bridge refused or ignored the event if it did."""
    if not 200 <= status < 300:
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        message = str(error.get("message") or f"HTTP {status}")
        code = str(error.get("code") or "error")
        return Answer(status, body, reason=f"refused ({status} {code}): {message}")
    jobs = tuple(str(job) for job in body.get("jobs") or ())
    if body.get("queued") or body.get("duplicates"):
        return Answer(status, body, jobs=jobs)
    reasons = body.get("ignored_reasons")
    if isinstance(reasons, dict) and reasons:
        known = [
            IGNORED_BECAUSE.get(str(name), f"the bridge ignored it ({name})") for name in reasons
        ]
        return Answer(status, body, reason="; ".join(known))
    if body.get("ignored") and test_mode:
        return Answer(status, body, reason=IGNORED_BECAUSE["test_mode"])
    return Answer(status, body, reason="the bridge acknowledged it and queued nothing")
