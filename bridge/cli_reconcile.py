"""`bridge backfill` and `bridge reconcile`: the providers' APIs, into the ledger and Sotion."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bridge import discovery, logs
from bridge.settings import Settings, SettingsError
from bridge.sotion import SotionError
from bridge.sources import CursorError
from bridge.sources.pacing import RateLimitExhaustedError
from bridge.stripe_api import ProviderAPIError

if TYPE_CHECKING:  # the worker side is imported when a command runs
    from workers.reconcile import Reconciler, Report

# No provider's purchase is older: a --since before it is a typo.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
PROVIDERS = ("stripe", "lemonsqueezy", "gumroad")
# The API key each provider's reads need.
_KEYS = {
    "stripe": "STRIPE_API_KEY",
    "lemonsqueezy": "LEMONSQUEEZY_API_KEY",
    "gumroad": "GUMROAD_ACCESS_TOKEN",
}


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "not an ISO 8601 date or time, e.g. 2026-11-30T08:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-11-30T08:00:00Z or +01:00")
    if not EARLIEST <= moment <= datetime.now(UTC):
        raise click.BadParameter("must be between 2000-01-01 and now")
    return moment.timestamp()


@click.command()
@click.argument("provider", type=click.Choice([*PROVIDERS, "all"]), default="all")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option(
    "--adopt-paid",
    is_flag=True,
    help="Members paid by hand who have an active purchase become the bridge's to un-pay "
    "when it ends (migrating from Sotion's own paid membership).",
)
@click.option("--restart", is_flag=True, help="Forget where an interrupted backfill stopped.")
def backfill(provider: str, dry_run: bool, adopt_paid: bool, restart: bool) -> None:
    """Bring every current customer of the providers into the ledger and Sotion.

    Lists every subscription and order each provider's API has (PROVIDER, default all
    configured), then creates the missing members in bulk and patches the ones that
    differ. Interrupted, it continues where it stopped; run again, it writes nothing.
    """
    reconciler, providers, console = _prepare(provider)
    if restart and not dry_run:
        try:
            reconciler.restart(providers)
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis is unreachable ({type(exc).__name__})") from exc
    _execute(
        console,
        "backfill",
        lambda progress: reconciler.backfill(
            providers, dry_run=dry_run, adopt_paid=adopt_paid, progress=progress
        ),
    )


@click.command()
@click.option(
    "--provider", type=click.Choice([*PROVIDERS, "all"]), default="all", show_default=True
)
@click.option(
    "--since",
    callback=_since,
    help="Re-read changes since this ISO 8601 time [default: the last reconcile].",
)
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
def reconcile(provider: str, since: float | None, dry_run: bool) -> None:
    """Re-read what changed at the providers and repair every member that differs.

    Changes are merged into the ledger as webhooks are (stale ones are dropped, events
    already delivered are left to their job), then every member whose Sotion state
    differs from the ledger is repaired, including changes made by hand to what the
    bridge owns. The worker runs this every BRIDGE_RECONCILE_INTERVAL minutes.
    """
    reconciler, providers, console = _prepare(provider)
    _execute(
        console,
        "reconcile",
        lambda progress: reconciler.reconcile(
            providers, since=since, dry_run=dry_run, progress=progress
        ),
    )


def _prepare(provider: str) -> tuple[Reconciler, list[str], Console]:
    from workers import runtime

    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.secret_values())
        current = runtime.build(settings, discovery.connect(settings))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    except SotionError as exc:
        raise click.ClickException(f"Sotion: {exc}") from exc
    except ValueError as exc:  # a provider key no API client can send (never echoed)
        raise click.ClickException(str(exc)) from exc
    reconciler = current.reconciler
    wanted = list(PROVIDERS) if provider == "all" else [provider]
    providers = [p for p in wanted if p in reconciler.sources]
    if provider != "all" and not providers:
        raise click.ClickException(f"{provider}: set {_KEYS[provider]} to read its API")
    if not providers:
        keys = ", ".join(_KEYS.values())
        raise click.ClickException(f"no provider API is configured: set one of {keys}")
    return reconciler, providers, Console(width=160)


def _execute(
    console: Console, kind: str, work: Callable[[Callable[[str, int], None]], Report]
) -> None:
    from workers.lease import LeaseBusyError, LeaseLostError
    from workers.reconcile import ReconcileBusyError

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(source: str, count: int) -> None:
            if source not in tasks:
                label = "Sotion members" if source == "sotion" else f"{source} objects"
                tasks[source] = bars.add_task(label, total=None)
            bars.update(tasks[source], completed=count)

        try:
            report = work(progress)
        except ReconcileBusyError as exc:
            raise click.ClickException(str(exc)) from exc
        except CursorError as exc:
            raise click.ClickException(f"{exc}: run `bridge backfill --restart`") from exc
        except (
            ProviderAPIError,
            RateLimitExhaustedError,
            SotionError,
            LeaseLostError,
            LeaseBusyError,
        ) as exc:
            raise click.ClickException(f"{kind} stopped: {exc} (run it again to continue)") from exc
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis is unreachable ({type(exc).__name__})") from exc
    _print(console, report)
    if report.sync.failures:
        sys.exit(1)


def _print(console: Console, report: Report) -> None:
    title = f"{report.kind}{' (dry run: nothing written)' if report.dry_run else ''}"
    sources = Table(
        "provider", "objects read", "ledger changes", "API calls", "skipped", title=title
    )
    for item in report.providers:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(item.skipped.items())) or "-"
        resumed = " (resumed)" if item.resumed else ""
        sources.add_row(
            item.provider + resumed,
            f"{item.observed:,}",
            f"{item.merged:,}",
            f"{item.calls:,}",
            skipped,
        )
    console.print(sources)
    if report.sync.changes:
        verb = "would change" if report.dry_run else "changed"
        members = Table("member", verb, title="Sotion")
        for change in report.sync.changes:
            members.add_row(change.email, " ".join(change.actions))
        console.print(members)
    for failure in report.sync.failures:
        console.print(f"[red]failed[/] {failure}")
    calls = ", ".join(f"{kind} {n}" for kind, n in sorted(report.sync.calls.items())) or "none"
    verb = "would change" if report.dry_run else "changed"
    adopted = f", {report.sync.adopted} paid-by-hand adopted" if report.sync.adopted else ""
    console.print(
        f"{report.sync.members:,} member(s) compared, {len(report.sync.changes):,} {verb}"
        f"{adopted}, {len(report.sync.failures)} failed; Sotion calls: {calls}; "
        f"{report.seconds:.1f} s"
    )
