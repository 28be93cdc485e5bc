"""The `bridge` command line."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import click
from rich.console import Console
from rich.markup import escape

from bridge import (
    cli_connect,
    cli_inspect,
    cli_jobs,
    cli_reconcile,
    cli_status,
    cli_trigger,
    discovery,
    logs,
    runner,
    startup,
)
from bridge.embedded import EmbeddedRedisError
from bridge.products import load_catalog
from bridge.queues import connect
from bridge.redact import redact
from bridge.sandbox import SandboxConfig, SandboxServer
from bridge.sandbox.config import API_KEY_PREFIX
from bridge.sandbox.errors import SandboxError
from bridge.sandbox.ratelimit import RateLimit
from bridge.settings import ENV_FILE_VARIABLE, Settings, SettingsError, load_env_file
from bridge.sotion import SotionError, client_from_settings

# The key of the sandbox that `bridge run --sandbox` starts.
SANDBOX_KEY = runner.SANDBOX_SOTION_KEY
# Where the group callback leaves the env file it read (click's per-run metadata).
_ENV_FILE_META = "bridge.env_file"


@click.group()
@click.version_option(
    package_name=startup.DISTRIBUTION, prog_name="bridge", message="%(prog)s %(version)s"
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="Read variables from this file instead of ./.env [env: BRIDGE_ENV_FILE].",
)
def main(env_file: str | None) -> None:
    """Payment-provider webhooks to Sotion memberships.

    Every command reads ./.env (or --env-file) first; a variable already set in the
    environment keeps its value.
    """
    try:
        loaded = load_env_file(env_file)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.get_current_context().meta[_ENV_FILE_META] = loaded
    if env_file is not None and loaded is not None:
        # The processes this one starts (`bridge run`) read the same file.
        os.environ[ENV_FILE_VARIABLE] = str(loaded.resolve())


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
    data_dir = Path(environ.get("BRIDGE_DATA_DIR") or ".bridge")
    try:
        lock = discovery.RunLock(data_dir).acquire()
    except discovery.AlreadyRunningError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"data dir {data_dir}: {exc.strerror}") from exc
    with lock:
        server: SandboxServer | None = None
        try:
            if use_sandbox:
                config = SandboxConfig(
                    api_key=SANDBOX_KEY, state_file=str(data_dir / "sandbox.json")
                )
                try:
                    server = SandboxServer(config, port=sandbox_port).start()
                except OSError as exc:
                    message = f"sandbox port {sandbox_port}: {exc.strerror}"
                    raise click.ClickException(message) from exc
                environ = runner.sandbox_environment(environ, server.url, SANDBOX_KEY)
                click.echo(
                    f"Sotion sandbox on {server.url} (state: {server.root_url}/_sandbox/state)"
                )
            click.echo(f"bridge web on http://{host}:{web_port} (Ctrl-C stops everything)")
            sandbox_url = server.url if server is not None else None
            code = runner.run(environ, host=host, port=web_port, lock=lock, sandbox_url=sandbox_url)
        except (SettingsError, EmbeddedRedisError) as exc:
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

    settings = cli_jobs.settings_or_exit()
    logs.configure(settings.log_level, settings.secret_values())
    try:
        # REDIS_URL unset: the embedded Redis of the `bridge run` on this data dir.
        settings = dataclasses.replace(settings, redis_url=discovery.locate(settings))
        run_worker(settings, burst=burst)
    except (SettingsError, startup.StartupError, WorkerLoopError) as exc:
        raise click.ClickException(redact(str(exc))) from exc


@main.command()
def check() -> None:
    """Validate the configuration and check that Redis and Sotion answer."""
    from workers.groups import resolve_groups

    settings = cli_jobs.settings_or_exit()
    console = Console()
    env_file = click.get_current_context().meta.get(_ENV_FILE_META)
    where = f"variables from {env_file}" if env_file else "environment only, no ./.env"
    console.print(f"config: [green]ok[/] ({escape(str(where))})")
    if settings.dry_run:
        console.print("dry run: [yellow]on[/] (BRIDGE_DRY_RUN: Sotion writes are not sent)")
    failures = 0
    if settings.redis_url is None:
        settings = _running_redis(settings, console)
    if settings.redis_url is not None:
        connection = connect(settings)
        try:
            startup.check_redis(connection, settings.redis_url)
            console.print("redis: [green]ok[/]")
        except startup.StartupError as exc:
            failures += 1
            # The worker's line without its "redis " (the label says it).
            console.print(f"redis: [red]{escape(str(exc).removeprefix('redis '))}[/]")
        finally:
            connection.close()
    sotion = None
    try:
        sotion = client_from_settings(settings)
        site = startup.check_sotion(settings, sotion)
        console.print(f"sotion: [green]ok[/] site {site.id} ({escape(site.domain or '-')})")
    except (SettingsError, startup.StartupError) as exc:
        failures += 1
        if sotion is not None:
            sotion.close()
            sotion = None
        console.print(f"sotion: [red]{escape(redact(str(exc)))}[/]")
    if settings.products_file is not None:
        try:
            catalog = load_catalog(settings.products_file)
            if sotion is None:
                found = "groups not checked: Sotion did not answer"
            else:
                with startup.quiet_sotion():
                    resolve_groups(catalog, sotion)
                found = f"{len(catalog.group_references())} group(s) found in Sotion"
            console.print(f"products: [green]ok[/] {len(catalog.rules)} rule(s), {found}")
        except (SettingsError, SotionError) as exc:
            failures += 1
            console.print(f"products: [red]{escape(redact(str(exc)))}[/]")
    for state in startup.providers(settings):
        if state.enabled:
            path = startup.WEBHOOK_PATHS[state.name]
            console.print(
                f"{state.name}: [green]enabled[/] at {escape(path)} ({escape(state.detail)})"
            )
        else:
            console.print(f"{state.name}: [yellow]disabled[/] ({escape(state.detail)})")
    if sotion is not None:
        sotion.close()
    if failures:
        sys.exit(1)


def _running_redis(settings: Settings, console: Console) -> Settings:
    """REDIS_URL unset: the embedded Redis of a running `bridge run`, when there is one."""
    try:
        url = discovery.locate(settings)
    except SettingsError:
        console.print("redis: [yellow]REDIS_URL unset[/] (bridge run starts an embedded one)")
        return settings
    console.print(f"redis: embedded, of the bridge running on {escape(str(settings.data_dir))}")
    return dataclasses.replace(settings, redis_url=url)


main.add_command(cli_reconcile.backfill)
main.add_command(cli_reconcile.reconcile)


main.add_command(cli_jobs.jobs)
main.add_command(cli_inspect.member)
main.add_command(cli_trigger.trigger)
main.add_command(cli_connect.connect)
main.add_command(cli_status.status)


if __name__ == "__main__":
    main()
