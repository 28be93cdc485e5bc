"""`bridge connect stripe|lemonsqueezy|gumroad`: register the bridge's webhook URL with the
provider's API, with exactly the events the bridge handles. Run again, it changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import click

from bridge import connect as core
from bridge import logs
from bridge.connect import ConnectError, Outcome
from bridge.settings import Settings, SettingsError

_EXIT_CODES = """
\b
Exit codes:
  0  registered, already as wanted, or (--dry-run) the plan printed
  1  the provider refused the key (401), was unreachable, or refused the change
  2  a bad --url or --store, or a variable to set (the line names it)
"""
_URL_HELP = "The bridge's public base URL (https; plain http only for localhost)."
_DRY_RUN_HELP = "Read only: print what would change, write nothing."


class _ProviderFailure(click.ClickException):
    """One error line: the provider refused, or did not answer (exit 1)."""

    exit_code = 1


class _ConfigFailure(click.ClickException):
    """One error line: something to fix here, in the command line or a variable (exit 2)."""

    exit_code = 2


def _failure(message: str, exit_code: int) -> click.ClickException:
    """The one-line error that exits with ``exit_code`` (1 or 2)."""
    return (_ConfigFailure if exit_code == 2 else _ProviderFailure)(message)


@click.group(epilog=_EXIT_CODES)
def connect() -> None:
    """Register this bridge's webhook URL with a provider's API.

    Each subcommand creates what is missing, updates what drifted and otherwise changes
    nothing, so running it again is safe. A signing secret the run creates is printed
    once: put it in the bridge's environment.
    """


@connect.command(epilog=_EXIT_CODES)
@click.option("--url", "url", required=True, help=_URL_HELP)
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
def stripe(url: str, dry_run: bool) -> None:
    """A Stripe webhook endpoint with the bridge's 14 event types (STRIPE_API_KEY).

    A new endpoint's signing secret (whsec_...) is printed once, for STRIPE_WEBHOOK_SECRET;
    an existing one whose events differ, or that is disabled, is updated.
    """
    from bridge import connect_stripe

    base, settings = _prepare(url)
    key = _require(settings.stripe_api_key, "stripe")
    _run(
        lambda: connect_stripe.connect(
            key,
            base,
            api_base=settings.stripe_api_base,
            dry_run=dry_run,
            configured_secret=bool(settings.stripe_webhook_secrets),
        )
    )


@connect.command(epilog=_EXIT_CODES)
@click.option("--url", "url", required=True, help=_URL_HELP)
@click.option("--store", help="The store's id (needed when the key has several stores).")
@click.option(
    "--new-secret",
    is_flag=True,
    help="Give the webhook a newly generated secret, printed once (an existing webhook's "
    "secret cannot be read back).",
)
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
def lemonsqueezy(url: str, store: str | None, new_secret: bool, dry_run: bool) -> None:
    """A Lemon Squeezy webhook with the bridge's 13 events (LEMONSQUEEZY_API_KEY).

    Its secret is LEMONSQUEEZY_WEBHOOK_SECRET when set (never printed), else a generated
    one, printed once. An existing webhook whose events differ is updated, with the
    configured secret when there is one.
    """
    from bridge import connect_lemonsqueezy

    base, settings = _prepare(url)
    key = _require(settings.lemonsqueezy_api_key, "lemonsqueezy")
    if store is not None and not (store.isascii() and store.isdigit()):
        raise _failure("--store must be a store's numeric id", 2)
    configured = settings.lemonsqueezy_webhook_secrets
    _run(
        lambda: connect_lemonsqueezy.connect(
            key,
            base,
            secret=configured[0] if configured else None,
            store=store,
            api_base=settings.lemonsqueezy_api_base,
            dry_run=dry_run,
            new_secret=new_secret,
        )
    )


@connect.command(epilog=_EXIT_CODES)
@click.option("--url", "url", required=True, help=_URL_HELP)
@click.option("--dry-run", is_flag=True, help=_DRY_RUN_HELP)
def gumroad(url: str, dry_run: bool) -> None:
    """Gumroad resource subscriptions for all 8 resources (GUMROAD_ACCESS_TOKEN).

    They post to the ping URL with GUMROAD_WEBHOOK_TOKEN in it (never printed); the
    resources already subscribed to that URL are left as they are.
    """
    from bridge import connect_gumroad

    base, settings = _prepare(url)
    token = _require(settings.gumroad_access_token, "gumroad")
    _run(
        lambda: connect_gumroad.connect(
            token,
            base,
            webhook_token=settings.gumroad_webhook_token,
            api_base=settings.gumroad_api_base,
            dry_run=dry_run,
        )
    )


def _prepare(url: str) -> tuple[str, Settings]:
    try:
        base = core.base_url(url)
        settings = Settings.from_env()
    except ConnectError as exc:
        raise _failure(str(exc), exc.exit_code) from exc
    except SettingsError as exc:
        raise _failure(str(exc), 2) from exc
    # Warnings only (the SDKs log every request at INFO), through the redacting handler.
    logs.configure("WARNING", settings.secret_values())
    return base, settings


def _require(value: str | None, provider: str) -> str:
    if not value:
        raise _failure(f"set {core.API_KEYS[provider]} to register the {provider} webhook", 2)
    return value


def _run(work: Callable[[], Outcome]) -> None:
    try:
        outcome = work()
    except ConnectError as exc:
        raise _failure(str(exc), exc.exit_code) from exc
    _print(outcome)


def _print(outcome: Outcome) -> None:
    scope = f" ({outcome.scope})" if outcome.scope else ""
    click.echo(f"{outcome.provider}{scope}: {core.shown(outcome.url)}")
    would = "would " if outcome.dry_run else ""
    for plan in outcome.plans:
        click.echo(f"  {_line(outcome.provider, plan, would)}")
    if outcome.new_secret:
        variable = core.SECRET_VARIABLES[outcome.provider]
        click.echo("")
        click.echo("The new signing secret (shown once), for the bridge's environment:")
        click.echo(f"  {variable}={outcome.new_secret}")
    for note in outcome.notes:
        click.echo(f"note: {note}")
    if outcome.dry_run:
        summary = "dry run: nothing written" + ("" if outcome.changed else ", nothing to change")
    else:
        summary = "done" if outcome.changed else "nothing to change"
    click.echo(summary)


def _line(provider: str, plan: core.Plan, would: str) -> str:
    if provider == "gumroad":
        resource = plan.events[0]
        if plan.action == "create":
            made = f" ({plan.endpoint_id})" if plan.endpoint_id else ""
            return f"{resource}: {would}subscribe{'' if would else 'd'}{made}"
        return f"{resource}: already subscribed ({plan.endpoint_id})"
    thing = "endpoint" if provider == "stripe" else "webhook"
    count = f"{len(plan.events)} events"
    if plan.action == "create":
        made = f" {plan.endpoint_id}" if plan.endpoint_id else ""
        return f"{would}create{'' if would else 'd'} {thing}{made} with {count}"
    if plan.action == "update":
        verb = "would update" if would else "updated"
        return f"{verb} {thing} {plan.endpoint_id}: {'; '.join(plan.changes)}"
    return f"{thing} {plan.endpoint_id}: enabled, exactly the {count}"
