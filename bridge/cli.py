"""The `bridge` command line."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType

import click
import redis
import requests
from rich.console import Console
from rich.table import Table

from bridge import admin, cli_reconcile, logs, runner
from bridge.products import load_catalog
from bridge.queues import bridge_queue, connect
from bridge.sandbox import SandboxConfig, SandboxServer
from bridge.sandbox.config import API_KEY_PREFIX
from bridge.sandbox.errors import SandboxError
from bridge.sandbox.ratelimit import RateLimit
from bridge.settings import Settings, SettingsError
from bridge.sotion import SotionError, client_from_settings

# The key of the sandbox that `bridge run --sandbox` starts.
SANDBOX_KEY = "so_sandbox"


@click.group()
def main() -> None:
    """Payment-provider webhooks to Sotion memberships."""


def _check_key(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(API_KEY_PREFIX):
        raise click.BadParameter(f"must start with {API_KEY_PREFIX!r}", ctx, param)
    return value


def _check_rate_limit(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            RateLimit.parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from exc
    return value


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--key", default="so_test", show_default=True, callback=_check_key, help="API key (so_...)."
)
@click.option(
    "--rate-limit", callback=_check_rate_limit, help='Per-key limit "N/S", e.g. "100/10".'
)
@click.option("--latency", default=0.0, type=click.FloatRange(min=0), help="Seconds per request.")
@click.option(
    "--fault-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of requests failing."
)
@click.option(
    "--hang-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How long a scripted hang stalls.",
)
@click.option(
    "--state-file", type=click.Path(dir_okay=False), help="Persist the data to this JSON file."
)
@click.option("--legacy-key", help="Serve the legacy API with this key (needs --legacy-site-id).")
@click.option("--legacy-site-id", help="Site id of the legacy API.")
@click.option("--seed", type=int, help="Seed ids and random faults for reproducible runs.")
@click.option("--site-title", default="Sandbox site", show_default=True)
@click.option(
    "--seed-scope-group",
    "scope_groups",
    multiple=True,
    metavar="NAME",
    help="Create this scope group at start (repeatable).",
)
def sandbox(
    host: str,
    port: int,
    key: str,
    rate_limit: str | None,
    latency: float,
    fault_rate: float,
    hang_seconds: float,
    state_file: str | None,
    legacy_key: str | None,
    legacy_site_id: str | None,
    seed: int | None,
    site_title: str,
    scope_groups: tuple[str, ...],
) -> None:
    """Run a local fake of Sotion's API until interrupted."""
    if (legacy_key is None) != (legacy_site_id is None):
        raise click.UsageError("--legacy-key and --legacy-site-id go together")
    config = SandboxConfig(
        api_key=key,
        rate_limit=rate_limit,
        latency=latency,
        fault_rate=fault_rate,
        hang_seconds=hang_seconds,
        state_file=state_file,
        legacy_key=legacy_key,
        legacy_site_id=legacy_site_id,
        site_title=site_title,
        seed=seed,
    )
    try:
        server = SandboxServer(config, host=host, port=port, log_requests=True)
        for name in scope_groups:
            server.state.ensure_scope_group(name)
    except (ValueError, SandboxError) as exc:
        raise click.ClickException(str(exc)) from exc
    # A service manager stops us with SIGTERM: treat it like Ctrl-C so shutdown is clean.
    signal.signal(signal.SIGTERM, _interrupt)
    server.serve_forever(ready=_announce)
    click.echo("Sotion sandbox stopped")


def _announce(server: SandboxServer) -> None:
    click.echo(f"Sotion sandbox listening on {server.url}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# -- the bridge ----------------------------------------------------------------------------


def _settings() -> Settings:
    """Settings from the environment; a bad value ends the command naming the variable."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the web.")
@click.option("--port", type=click.IntRange(1, 65535), help="Web port [default: $PORT or 8000].")
@click.option("--sandbox", "use_sandbox", is_flag=True, help="Use a local Sotion sandbox.")
@click.option("--sandbox-port", default=8090, show_default=True, type=click.IntRange(0, 65535))
def run(host: str, port: int | None, use_sandbox: bool, sandbox_port: int) -> None:
    """Start web and worker (and an embedded Redis when REDIS_URL is unset)."""
    logs.configure(os.environ.get("BRIDGE_LOG_LEVEL", "INFO"))
    web_port = port or int(os.environ.get("PORT") or 8000)
    environ: dict[str, str] = dict(os.environ)
    server: SandboxServer | None = None
    if use_sandbox:
        data_dir = Path(environ.get("BRIDGE_DATA_DIR") or ".bridge")
        data_dir.mkdir(parents=True, exist_ok=True)
        config = SandboxConfig(api_key=SANDBOX_KEY, state_file=str(data_dir / "sandbox.json"))
        server = SandboxServer(config, port=sandbox_port).start()
        environ = runner.sandbox_environment(environ, server.url, SANDBOX_KEY)
        click.echo(f"Sotion sandbox on {server.url} (state: {server.root_url}/_sandbox/state)")
    click.echo(f"bridge web on http://{host}:{web_port} (Ctrl-C stops everything)")
    try:
        code = runner.run(environ, host=host, port=web_port)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if server is not None:
            server.stop()
    sys.exit(code)


@main.command()
@click.option("--burst", is_flag=True, help="Stop once the queue is empty.")
def worker(burst: bool) -> None:
    """Run one RQ worker with its scheduler on the bridge's queue."""
    from workers.work_loop import WorkerLoopError
    from workers.work_loop import run as run_worker

    settings = _settings()
    logs.configure(settings.log_level, settings.secret_values())
    try:
        run_worker(settings, burst=burst)
    except (SettingsError, WorkerLoopError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
def check() -> None:
    """Validate the configuration and check that Redis and Sotion answer."""
    settings = _settings()
    console = Console()
    failures = 0
    if settings.redis_url is None:
        console.print("redis: [yellow]REDIS_URL unset[/] (bridge run starts an embedded one)")
    else:
        try:
            connect(settings).ping()
            console.print("redis: [green]ok[/]")
        except redis.RedisError as exc:
            failures += 1
            console.print(f"redis: [red]unreachable[/] ({type(exc).__name__})")
    try:
        sotion = client_from_settings(settings)
        site = sotion.site()
        console.print(f"sotion: [green]ok[/] site {site.id} ({site.domain or '-'})")
        if settings.products_file is not None:
            from workers.groups import resolve_groups

            catalog = resolve_groups(load_catalog(settings.products_file), sotion)
            console.print(
                f"products: [green]ok[/] {len(catalog.rules)} rule(s), "
                f"{len(catalog.group_references())} group(s) found in Sotion"
            )
    except (SettingsError, SotionError) as exc:
        failures += 1
        console.print(f"sotion: [red]{exc}[/]")
    providers = {
        "stripe": bool(settings.stripe_webhook_secrets),
        "lemonsqueezy": bool(settings.lemonsqueezy_webhook_secrets),
        "gumroad": bool(settings.gumroad_webhook_token),
    }
    for name, enabled in providers.items():
        console.print(f"{name}: {'[green]enabled[/]' if enabled else '[yellow]disabled[/]'}")
    if failures:
        sys.exit(1)


main.add_command(cli_reconcile.backfill)
main.add_command(cli_reconcile.reconcile)


@main.group()
def jobs() -> None:
    """Inspect and replay the bridge's jobs."""


@jobs.command("failed")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def jobs_failed(limit: int) -> None:
    """List failed jobs with the reason each one failed."""
    queue = bridge_queue(connect(_settings()))
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

    queue = bridge_queue(connect(_settings()))
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
    queue = bridge_queue(connect(_settings()))
    ids = list(job_ids) or queue.failed_job_registry.get_job_ids(cleanup=False)
    replayed, missing = admin.replay(queue, ids)
    click.echo(f"replayed {len(replayed)} job(s)")
    if missing:
        click.echo(f"not failed or unknown: {', '.join(missing)}", err=True)
        sys.exit(1)


@main.group()
def demo() -> None:
    """Send signed test webhooks to a running bridge."""


@demo.command("stripe")
@click.option("--email", required=True, help="The buyer's email.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The bridge.")
@click.option("--secret", envvar="STRIPE_WEBHOOK_SECRET", default=runner.SANDBOX_STRIPE_SECRET)
def demo_stripe(email: str, url: str, secret: str) -> None:
    """A test-mode checkout.session.completed for EMAIL, signed with the secret."""
    now = int(time.time())
    session_id = f"cs_test_{uuid.uuid4().hex}"
    event = {
        "id": f"evt_test_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": "checkout.session.completed",
        "created": now,
        "livemode": False,
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "mode": "payment",
                "payment_status": "paid",
                "status": "complete",
                "payment_intent": f"pi_test_{uuid.uuid4().hex[:24]}",
                "customer_details": {"email": email, "name": None},
            }
        },
    }
    body = json.dumps(event).encode()
    signed = f"{now}.".encode() + body
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    try:
        response = requests.post(
            url.rstrip("/") + "/webhooks/stripe",
            data=body,
            headers={"Stripe-Signature": f"t={now},v1={signature}"},
            timeout=10,
        )
    except requests.RequestException as exc:
        raise click.ClickException(f"the bridge did not answer: {exc}") from exc
    click.echo(f"{response.status_code} {response.text.strip()}")
    if response.status_code >= 300:
        sys.exit(1)


if __name__ == "__main__":
    main()
