"""``bridge status``: whether the bridge is doing its job, read from its Redis."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bridge import admin, cli_json, discovery
from bridge.settings import Settings, SettingsError
from bridge.status import API_VARIABLES, status_report
from bridge.status_model import (
    BudgetState,
    LastEvent,
    ProviderState,
    QueueState,
    ReconcileState,
    StatusReport,
)

# Exit codes (stated in --help).
EXIT_HEALTHY = 0
EXIT_ATTENTION = 1
EXIT_UNAVAILABLE = 2


class UnavailableError(click.ClickException):
    """A configuration error or an unreachable Redis: one line, exit 2."""

    exit_code = EXIT_UNAVAILABLE


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(as_json: bool) -> None:
    """Workers, queues, retries, failed and parked jobs, the Sotion rate budget, each
    provider's last event and its outcome, and the last reconciles.

    \b
    Exit codes:
      0  healthy
      1  needs attention: no worker alive, failed or parked jobs, workers
         suspended, or the Sotion rate budget spent
      2  configuration error, or Redis unreachable (REDIS_URL, or the
         embedded Redis of a running `bridge run`)
    """
    settings = _settings()
    try:
        connection = discovery.connect(settings)
    except SettingsError as exc:
        raise UnavailableError(_naming_redis(settings, str(exc))) from exc
    try:
        report = status_report(connection, settings, datetime.now(UTC))
    finally:
        connection.close()
    if report.redis_unreachable:
        raise UnavailableError(_naming_redis(settings, report.problems[0].message))
    if as_json:
        click.echo(cli_json.dumps(as_dict(report)))
    else:
        _print(Console(highlight=False), report)
    if not report.healthy:
        sys.exit(EXIT_ATTENTION)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise UnavailableError(str(exc)) from exc


def _naming_redis(settings: Settings, message: str) -> str:
    """The error names where the Redis came from (never the URL: it may hold a password)."""
    if settings.redis_url is not None:
        return message.replace("Redis is unreachable", "Redis at REDIS_URL is unreachable", 1)
    return message


def as_dict(report: StatusReport) -> dict[str, object]:
    """The report as JSON-ready values (times stay datetimes: ``cli_json`` writes them)."""
    values = dataclasses.asdict(report)
    values["redis_unreachable"] = report.redis_unreachable
    return values


# -- the rich rendering ----------------------------------------------------------------


def _print(console: Console, report: StatusReport) -> None:
    now = report.checked_at
    verdict = "healthy" if report.healthy else "needs attention"
    colour = "green" if report.healthy else "yellow"
    console.print(f"bridge status at {_time(now)} UTC: [bold {colour}]{verdict}[/]")
    for problem in report.problems:
        console.print(f"  ! {escape(problem.message)}")
    dry = report.dry_run
    planned = f"{dry.writes:,} Sotion write(s) planned and not sent" if dry.writes else ""
    if dry.on:
        console.print(f"dry run: [yellow]ON[/] (BRIDGE_DRY_RUN){': ' + planned if planned else ''}")
    else:
        console.print(f"dry run: off{' (earlier dry runs: ' + planned + ')' if planned else ''}")
    console.print()
    if report.workers:
        workers = Table("worker", "state", "host / pid", "heartbeat", "job", title="Workers")
        for worker in report.workers:
            age = worker.heartbeat_age_seconds
            workers.add_row(
                escape(worker.name),
                escape(worker.state),
                escape(f"{worker.hostname or '-'} / {worker.pid or '-'}"),
                f"{_seconds(age)} ago" if age is not None else "-",
                escape(worker.current_job or "-"),
            )
        console.print(workers)
    else:
        console.print("workers: none alive")
    if report.queue is not None:
        console.print(_queue_table(report.queue, now))
    if report.budget is not None:
        console.print(f"Sotion rate budget: {_budget(report.budget, now)}")
    console.print("Providers:")
    console.print(_providers_table(report.providers, now))
    if report.reconcile is not None:
        console.print(f"reconcile: {_reconcile(report.reconcile, now)}")


def _queue_table(queue: QueueState, now: datetime) -> Table:
    table = Table("jobs", "count", "note", title="Queue")
    next_retry = f"next {_when(queue.next_retry_at, now)}" if queue.next_retry_at else ""
    table.add_row("queued", f"{queue.queued:,}", "suspended" if queue.suspended else "")
    table.add_row("running", f"{queue.started:,}", "")
    table.add_row("scheduled retries", f"{queue.scheduled_retries:,}", next_retry)
    table.add_row("failed", f"{queue.failed:,}", "bridge jobs failed" if queue.failed else "")
    table.add_row("parked", f"{queue.parked:,}", "bridge jobs parked" if queue.parked else "")
    table.add_row("scheduled re-syncs", f"{queue.scheduled_resyncs:,}", "")
    return table


def _budget(budget: BudgetState, now: datetime) -> str:
    if not budget.known:
        return "not known (no Sotion answer recorded in the last hour)"
    of = f" of {budget.limit:,}" if budget.limit is not None else ""
    if budget.reset_at is None:
        return "window over: a new one opens at the next call"
    if budget.exhausted:
        return f"spent{of}, resets {_when(budget.reset_at, now)}"
    return f"{budget.remaining:,}{of} left, resets {_when(budget.reset_at, now)}"


def _providers_table(providers: tuple[ProviderState, ...], now: datetime) -> Table:
    table = Table.grid(padding=(0, 2))
    for provider in providers:
        api = "set" if provider.api_configured else f"unset ({API_VARIABLES[provider.name]})"
        event = provider.last_event
        if event is None:
            last = "last event: none recorded"
        else:
            received = _when(event.received_at, now) if event.received_at else "time unknown"
            last = f"last event: {received}, job {event.job_id}: {_outcome(event, now)}"
        reconciled = (
            _when(provider.last_reconcile_at, now) if provider.last_reconcile_at else "never"
        )
        table.add_row(
            f"[bold]{provider.name}[/]",
            escape(
                f"webhooks {'enabled' if provider.enabled else 'disabled'}, API key {api}\n"
                f"{last}\nlast reconcile: {reconciled}"
            ),
        )
    return table


def _outcome(event: LastEvent, now: datetime) -> str:
    text = event.outcome
    if event.followed_job is not None:
        waiting = event.outcome == admin.PARKED
        text += f" ({'as' if waiting else 'parked as'} {event.followed_job})"
    if event.next_attempt_at is not None:
        label = "until" if event.outcome == admin.PARKED else "next"
        text += f", {label} {_when(event.next_attempt_at, now)}"
    if event.reason:
        text += f": {event.reason}"
    return text


def _reconcile(reconcile: ReconcileState, now: datetime) -> str:
    if reconcile.interval_minutes <= 0:
        schedule = "not scheduled (BRIDGE_RECONCILE_INTERVAL is 0)"
    else:
        due = f", next {_when(reconcile.next_at, now)}" if reconcile.next_at else ""
        schedule = f"every {reconcile.interval_minutes:g} min{due}"
    running = "running now" if reconcile.running else "not running"
    line = (
        f"{schedule}; {running}; scheduled runs: {reconcile.runs_done:,} done, "
        f"{reconcile.runs_failed:,} failed, {reconcile.repairs:,} member(s) repaired"
    )
    last = reconcile.last
    if last is not None:
        when = _when(last.started_at, now) if last.started_at else "at an unknown time"
        dry = " (dry run)" if last.dry_run else ""
        line += (
            f"; last: {last.kind}{dry} {when}, {last.changed:,} of {last.members:,} "
            f"member(s) changed, {last.failures:,} failure(s)"
        )
    return line


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _when(moment: datetime | None, now: datetime) -> str:
    """``2026-12-04 18:50:02 (3 min ago)`` or ``(in 42 s)``, in UTC as every time shown."""
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    relative = f"in {_seconds(delta)}" if delta > 0 else f"{_seconds(-delta)} ago"
    return f"{_time(moment)} ({relative})"


def _seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
