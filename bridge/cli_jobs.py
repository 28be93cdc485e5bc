"""``bridge jobs``: the failed and parked jobs, and replaying failed ones."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table
from rq import Queue

from bridge import admin, discovery
from bridge.queues import bridge_queue
from bridge.settings import Settings, SettingsError


def settings_or_exit() -> Settings:
    """Settings from the environment; a bad value ends the command naming the variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def jobs() -> None:
    """Inspect and replay the bridge's jobs."""


def _queue() -> Queue:
    """The bridge's queue on its Redis: REDIS_URL, else the one `bridge run` started."""
    try:
        return bridge_queue(discovery.connect(settings_or_exit()))
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@jobs.command("failed")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def jobs_failed(limit: int) -> None:
    """List failed jobs with the reason each one failed."""
    queue = _queue()
    rows = admin.failed_jobs(queue, limit=limit)
    if not rows:
        click.echo("no failed jobs")
        return
    table = Table("job", "event", "failed at", "reason")
    for row in rows:
        ended = row.ended_at.strftime("%Y-%m-%d %H:%M:%S") if row.ended_at else "-"
        table.add_row(row.id, row.description, ended, row.reason)
    Console(width=200).print(table)


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
