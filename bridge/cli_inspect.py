"""``bridge member EMAIL``: everything about one buyer, and why they have or lack access."""

from __future__ import annotations

import dataclasses
import sys
from datetime import datetime
from typing import Any

import click
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bridge import admin, cli_json, discovery
from bridge.inspect import MemberReport, member_report, sotion_reader
from bridge.runner import sandbox_settings
from bridge.settings import Settings, SettingsError
from bridge.verdict import PROVIDER_NAMES


class ConfigurationError(click.ClickException):
    """A configuration or Redis problem: one line, exit 2."""

    exit_code = 2


@click.command()
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def member(email: str, as_json: bool) -> None:
    """Everything about one buyer: the purchases in the ledger, the events received and
    their jobs, the Sotion member as it is now, and why they have or lack access.

    Exit codes: 0 something is known about EMAIL, 1 nothing (no purchase, no event, no
    Sotion member), 2 a configuration or Redis error.
    """
    if "@" not in email:
        raise click.BadParameter("not an email address", param_hint="EMAIL")
    try:
        settings = Settings.from_env()
        connection = discovery.connect(settings)
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from exc
    sotion = sotion_reader(sandbox_settings(settings))
    try:
        report = member_report(connection, sotion, settings, email)
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from exc
    except redis.RedisError as exc:
        raise ConfigurationError(f"Redis is unreachable ({type(exc).__name__})") from exc
    finally:
        if sotion is not None:
            sotion.close()
        connection.close()
    if as_json:
        click.echo(cli_json.dumps(_json(report)))
    else:
        _print(report)
    sys.exit(0 if report.known else 1)


def _print(report: MemberReport) -> None:
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    console.print(f"[bold]{escape(report.email)}[/]")
    if report.dry_run:
        console.print("[yellow]Dry run is on: writes are not sent[/] (BRIDGE_DRY_RUN)")
    if report.entitlements:
        table = Table("purchase", "state", "since", "event", "job", "access", "products")
        table.title = "entitlements (ledger)"
        for e in report.entitlements:
            table.add_row(
                escape(f"{PROVIDER_NAMES.get(e.provider, e.provider)} {e.purchase}"),
                escape(e.state),
                _time(e.since),
                escape(e.event_id or "-"),
                escape(e.job_id or "-"),
                "yes" if e.grants_access and e.listed else "no" if e.listed else "unlisted",
                escape(", ".join(e.products) or "-"),
            )
        console.print(table)
    else:
        console.print("entitlements: none recorded")
    if report.events:
        table = Table("received", "job", "event", "status", "detail")
        table.title = "events and their jobs (newest first)"
        for received, job in zip(report.received, report.events, strict=True):
            table.add_row(
                _time(received),
                escape(job.id),
                escape(job.event_type or job.description or "-"),
                escape(job.status),
                escape(_detail(job)),
            )
        console.print(table)
    else:
        console.print("events: none received")
    console.print(f"sotion: {escape(_sotion_line(report))}")
    desired = report.desired
    groups = ", ".join(desired.groups) or "none"
    console.print(
        f"ledger calls for: paid={str(desired.paid).lower()} "
        f"blocked={str(desired.blocked).lower()} groups: {escape(groups)}"
    )
    colour = "green" if report.verdict.startswith("has access") else "yellow"
    console.print(f"[bold {colour}]{escape(report.verdict)}[/]")


def _detail(job: admin.JobInfo) -> str:
    if job.status == admin.RETRYING:
        return f"next attempt {_time(job.next_attempt_at)}"
    if job.status == admin.PARKED:
        return f"until {_time(job.next_attempt_at)}: {job.reason or ''}"
    if job.status == admin.FAILED:
        return job.reason or ""
    if job.status == admin.APPLIED:
        return ", ".join(job.actions) or "no Sotion call needed"
    if job.status == admin.EXPIRED:
        return "no longer kept (finished jobs are kept a week) or purged"
    return ""


def _sotion_line(report: MemberReport) -> str:
    if report.sotion.error is not None:
        return report.sotion.error
    found = report.sotion.member
    if found is None:
        return "no member with this email"
    groups = ", ".join(found.groups) or "none"
    paid = "unknown" if found.paid is None else str(found.paid).lower()
    return f"member {found.id}: paid={paid} status={found.status} groups: {groups}"


def _json(report: MemberReport) -> dict[str, Any]:
    data = dataclasses.asdict(report)
    data["known"] = report.known
    return data


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"
