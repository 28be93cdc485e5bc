"""``bridge trigger``: send a signed sample event to a running bridge (``stripe trigger``)."""

from __future__ import annotations

import os
import sys
import time

import click
import redis
from rich.console import Console
from rich.markup import escape
from rq import Queue

from bridge import discovery, trigger_wait
from bridge import trigger as core
from bridge.errors import BridgeError
from bridge.products import Catalog, load_catalog
from bridge.providers import gumroad, stripe
from bridge.queues import bridge_queue
from bridge.samples import PROVIDERS, SAMPLES, Sample, check_purchase, purchase_key
from bridge.settings import Settings, SettingsError

# Seconds --wait waits for the job's outcome by default.
DEFAULT_TIMEOUT = 10.0

# What to do next, by the job's state.
HINTS = {
    "parked": (
        "the bridge applies it once an event names the buyer: send a purchase for this "
        "email first (Stripe: checkout.session.completed; a dispute also needs invoice.paid, "
        "which names the charge); `bridge jobs parked` lists it meanwhile"
    ),
    "queued": "no worker took it yet: is `bridge run` (or `bridge worker`) running?",
    "failed": "`bridge jobs failed` shows it; `bridge jobs replay JOB_ID` runs it again",
}


class ConfigError(click.ClickException):
    """A usage or configuration error: one line, exit code 2."""

    exit_code = 2


@click.command("trigger")
@click.argument("provider", required=False)
@click.argument("event", required=False)
@click.option("--email", help="The buyer's email (the Sotion member it is about).")
@click.option("--product", help="Product id (Stripe price_/prod_, LS product or variant, Gumroad).")
@click.option("--purchase", help="Purchase id to act on [default: one per email and product].")
@click.option("--live", is_flag=True, help="A live-mode event (default: test mode).")
@click.option("--url", help="The bridge [default: the running `bridge run`, else :$PORT].")
@click.option(
    "--wait/--no-wait",
    default=None,
    help="Wait for the job's outcome [default: when the bridge's Redis answers].",
)
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds --wait waits.",
)
@click.option("--list", "listing", is_flag=True, help="List every provider's sample events.")
def trigger(
    provider: str | None,
    event: str | None,
    email: str | None,
    product: str | None,
    purchase: str | None,
    live: bool,
    url: str | None,
    wait: bool | None,
    timeout: float,
    listing: bool,
) -> None:
    """Send a signed sample PROVIDER EVENT to the bridge, as the provider would.

    Signed with the bridge's own secrets (STRIPE_WEBHOOK_SECRET, LEMONSQUEEZY_WEBHOOK_SECRET,
    GUMROAD_WEBHOOK_TOKEN; the sandbox's for Stripe under `bridge run --sandbox`). Events
    for one email and product act on one purchase: a checkout, then a cancellation, end
    it. Test mode unless --live. `bridge trigger --list` lists the events.

    Exit codes: 0 accepted (and applied, when waiting); 1 refused, ignored, failed or the
    bridge unreachable; 2 usage or configuration error.
    """
    console = Console(highlight=False, soft_wrap=True)
    if listing:
        _print_list()
        return
    chosen = _chosen(provider, event)
    if not email or "@" not in email:
        raise ConfigError("--email is required: the buyer's email address")
    settings = _settings()
    catalog = _catalog(settings)
    product = core.product_for(chosen.provider, product, catalog)
    try:
        purchase = (
            check_purchase(chosen.provider, purchase)
            if purchase
            else purchase_key(chosen.provider, email, product)
        )
    except ValueError as exc:
        raise ConfigError(f"--purchase: {exc}") from exc
    base_url = url or core.default_url(settings, os.environ.get("PORT"))
    try:
        key = core.secret(chosen.provider, settings, sandbox=core.sandbox_running(settings))
    except core.ConfigurationError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        delivery = core.build(
            chosen,
            email=email,
            purchase=purchase,
            product=product,
            live=live,
            secret=key,
            now=time.time(),
            seller_id=settings.gumroad_seller_id,
        )
    except BridgeError as exc:  # what the bridge's own parser refuses, it would refuse too
        raise ConfigError(f"this sample cannot be sent: {exc}") from exc
    queue = _queue(settings, wait)
    mode = "test mode" if delivery.test_mode else "live mode"
    console.print(
        f"sending {escape(chosen.provider)} {escape(chosen.event)} ({mode}) for "
        f"{escape(email)}: purchase {escape(purchase)}, product {escape(product)}, "
        f"to {escape(base_url.rstrip('/') + delivery.shown_path)}"
    )
    for note in _notes(delivery, catalog, live):
        console.print(f"note: {escape(note)}")
    unlisted = core.unlisted(delivery, catalog)
    if unlisted:
        console.print(f"[yellow]warning:[/] {escape(unlisted)}")
    try:
        answer = core.send(delivery, base_url)
    except core.UnreachableError as exc:
        raise click.ClickException(str(exc)) from exc
    if not answer.accepted:
        console.print(f"bridge: [red]{answer.status}[/] {escape(answer.reason or '')}")
        sys.exit(1)
    console.print(f"bridge: [green]{answer.status}[/] {escape(_summary(answer))}")
    if queue is None or not answer.jobs:
        sys.exit(1 if unlisted else 0)
    outcomes = trigger_wait.wait(queue, answer.jobs, timeout=timeout)
    for found in outcomes:
        detail = unlisted if found.state == "ignored" and unlisted else found.detail
        colour = "green" if found.state == "applied" else "red"
        console.print(f"worker: [{colour}]{found.state}[/] {escape(detail)}")
        if found.state in HINTS:
            console.print(f"hint: {escape(HINTS[found.state])}")
    sys.exit(0 if all(found.state == "applied" for found in outcomes) else 1)


def _print_list() -> None:
    """One line per sample (plain text: names never cut, whatever the terminal's width)."""
    width = max(len(name) for events in SAMPLES.values() for name in events)
    for provider, events in SAMPLES.items():
        for name, chosen in events.items():
            click.echo(f"{provider:<13} {name:<{width}}  {chosen.effect}")


def _chosen(provider: str | None, event: str | None) -> Sample:
    if not provider:
        raise ConfigError(f"PROVIDER is required: one of {', '.join(PROVIDERS)} (or --list)")
    if provider in SAMPLES and not event:
        raise ConfigError(f"EVENT is required: one of {', '.join(SAMPLES[provider])} (or --list)")
    try:
        return core.sample(provider, event or "")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc


def _catalog(settings: Settings) -> Catalog | None:
    if settings.products_file is None:
        return None
    try:
        return load_catalog(settings.products_file)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc


def _queue(settings: Settings, wait: bool | None) -> Queue | None:
    """The bridge's queue to wait on: with --wait it must answer, by default it may not."""
    if wait is False:
        return None
    try:
        return bridge_queue(discovery.connect(settings))
    except (SettingsError, redis.RedisError) as exc:
        if wait:
            raise ConfigError(f"--wait: {exc}") from exc
        return None


def _notes(delivery: core.Delivery, catalog: Catalog | None, live: bool) -> list[str]:
    notes = []
    if delivery.provider == gumroad.PROVIDER and not live and not delivery.test_mode:
        notes.append("Gumroad marks only sale pings as test: this one is applied as live")
    if (
        delivery.provider == stripe.PROVIDER
        and catalog is not None
        and not delivery.products
        and delivery.event.startswith("checkout.session.")
    ):
        notes.append(
            "Stripe Checkout events name no product: under BRIDGE_PRODUCTS the subscription "
            "learns its price from customer.subscription.created (send it too)"
        )
    return notes


def _summary(answer: core.Answer) -> str:
    body = answer.body
    parts = [f"queued {body.get('queued', 0)}"]
    if body.get("duplicates"):
        parts.append(f"duplicate {body['duplicates']} (the bridge had this event already)")
    if answer.jobs:
        parts.append("job " + ", ".join(answer.jobs))
    return "; ".join(parts)
