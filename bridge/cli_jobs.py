"""``bridge jobs``: the failed and parked jobs, one job in detail, and replaying or
deleting failed ones."""

from __future__ import annotations

import sys
from datetime import datetime

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rq import Queue

from bridge import admin, discovery
from bridge.queues import bridge_queue
from bridge.redact import mask_email
from bridge.settings import Settings, SettingsError


def settings_or_exit() -> Settings:
    """Settings from the environment; a bad value ends the command naming the variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def jobs() -> None:
    """Inspect, replay and delete the bridge's jobs.

    Exit codes: 0 done, 1 an unknown job id or a configuration error, 2 a usage error.
    """


def _queue() -> Queue:
    """The bridge's queue on its Redis: REDIS_URL, else the one `bridge run` started."""
    try:
        return bridge_queue(discovery.connect(settings_or_exit()))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@jobs.command("failed")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--email", help="Only the jobs of this buyer's events.")
def jobs_failed(limit: int, email: str | None) -> None:
    """List failed jobs with the buyer (masked) and the reason each one failed."""
    queue = _queue()
    rows = admin.failed_jobs(queue, limit=limit, email=email)
    if not rows:
        click.echo(f"no failed jobs for {email}" if email else "no failed jobs")
        return
    table = Table("job", "event", "email", "failed at", "reason")
    for row in rows:
        table.add_row(
            escape(row.id),
            escape(row.description),
            escape(mask_email(row.email)),
            _time(row.ended_at),
            escape(row.reason),
        )
    Console(width=200, highlight=False).print(table)


@jobs.command("show")
@click.argument("job_id")
def jobs_show(job_id: str) -> None:
    """One job in detail: its event, status, retries, times and failure (redacted).

    Exit codes: 0 shown, 1 no such job.
    """
    info = admin.job_info(_queue(), job_id)
    if info is None:
        click.echo(f"no such job: {job_id}", err=True)
        sys.exit(1)
    failures = info.failures
    ran = info.status in (admin.APPLIED, admin.RUNNING)  # the attempt that did not fail
    attempts = f"up to {info.retries + 1}" if failures is None else str(failures + ran)
    rows = [
        ("job", info.id),
        ("provider", info.provider or "-"),
        ("event type", info.event_type or "-"),
        ("dedupe key", info.dedupe_key or "-"),
        ("email", mask_email(info.email)),
        ("entitlement", info.entitlement or "-"),
        ("status", info.status),
        ("attempts", attempts),
        ("retries left", f"{info.retries_left or 0} of {info.retries}"),
        ("enqueued at", _time(info.enqueued_at)),
        ("started at", _time(info.started_at)),
        ("ended at", _time(info.ended_at)),
    ]
    if info.next_attempt_at is not None:
        label = "deadline" if info.status == admin.PARKED else "next attempt"
        rows.append((label, _time(info.next_attempt_at)))
    if info.parked_as:
        rows.append(("parked as", info.parked_as))
    if info.actions:
        rows.append(("sotion calls", ", ".join(info.actions)))
    if info.reason:
        rows.append(("reason", info.reason))
    for label, value in rows:
        click.echo(f"{label + ':':<14}{value}")
    if info.traceback:
        click.echo("traceback (redacted):")
        click.echo(info.traceback.rstrip())


@jobs.command("parked")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def jobs_parked(limit: int) -> None:
    """List events waiting for an event that names their buyer, with the reason."""
    from workers.parking import parked_events

    queue = _queue()
    rows = parked_events(queue, limit=limit)
    if not rows:
        click.echo("no parked events")
        return
    table = Table("job", "event", "parked at", "fails at", "reason")
    for row in rows:
        table.add_row(
            row.job_id,
            row.description,
            row.parked_at.strftime("%Y-%m-%d %H:%M:%S") if row.parked_at else "-",
            row.deadline.strftime("%Y-%m-%d %H:%M:%S") if row.deadline else "-",
            row.reason,
        )
    Console(width=200).print(table)


@jobs.command("replay")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every failed job.")
def jobs_replay(job_ids: tuple[str, ...], replay_all: bool) -> None:
    """Put failed jobs back on the queue (applying an event twice changes nothing)."""
    if not job_ids and not replay_all:
        raise click.UsageError("name JOB_IDs or pass --all")
    queue = _queue()
    ids = list(job_ids) or queue.failed_job_registry.get_job_ids(cleanup=False)
    replayed, missing = admin.replay(queue, ids)
    click.echo(f"replayed {len(replayed)} job(s)")
    if missing:
        click.echo(f"not failed or unknown: {', '.join(missing)}", err=True)
        sys.exit(1)


@jobs.command("purge")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "purge_all", is_flag=True, help="Delete every failed job.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def jobs_purge(job_ids: tuple[str, ...], purge_all: bool, yes: bool) -> None:
    """Delete failed jobs for good (a provider's redelivery of their events is accepted
    again). Asks first unless --yes.

    Exit codes: 0 deleted, 1 a JOB_ID not failed or unknown (or the question declined).
    """
    if not job_ids and not purge_all:
        raise click.UsageError("name JOB_IDs or pass --all")
    queue = _queue()
    ids = list(job_ids) or queue.failed_job_registry.get_job_ids(cleanup=False)
    if not ids:
        click.echo("no failed jobs")
        return
    if not yes:
        click.confirm(f"delete {len(ids)} failed job(s)?", abort=True)
    deleted, missing = admin.purge(queue, ids)
    click.echo(f"deleted {len(deleted)} failed job(s)")
    if missing:
        click.echo(f"not failed or unknown: {', '.join(missing)}", err=True)
        sys.exit(1)


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"
