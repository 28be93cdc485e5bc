"""``bridge run``: web and worker on one machine, with an embedded Redis if none is given."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from bridge.discovery import RunLock, new_record, read_record, remove_record, write_record
from bridge.embedded import EmbeddedRedis, process_alive, stop_stray
from bridge.orphans import die_with_parent
from bridge.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# The key of the Sotion sandbox that `bridge run --sandbox` starts (public: sandbox only).
SANDBOX_SOTION_KEY = "so_sandbox"
# The Stripe signing secret `bridge run --sandbox` uses unless one is set.
SANDBOX_STRIPE_SECRET = "whsec_sandboxOnlyPublicNotASecret000"
# The same for Lemon Squeezy's signing secret and Gumroad's ping token (public: sandbox only).
SANDBOX_LEMONSQUEEZY_SECRET = "ls_sandboxOnlyPublicNotASecret000"
SANDBOX_GUMROAD_TOKEN = "gr_sandboxOnlyPublicNotASecret000000000"
# Seconds children get to finish their current work after SIGTERM: the worker's own
# grace for its running job (workers/worker.py) and gunicorn's, plus a margin.
GRACE_SECONDS = 28
# A further stop signal within this many seconds of the first is the same stop; a later
# one cuts the children's grace short.
DUPLICATE_SIGNAL_SECONDS = 1.0


def gunicorn_command(host: str, port: int) -> list[str]:
    """The web process, as the Procfile runs it."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:bridge.gunicorn_conf",
        "--bind",
        f"{host}:{port}",
        "--workers",
        "2",
        # No gunicorn access log: the app logs requests with the Gumroad token masked.
        "bridge.app:create_app()",
    ]


def worker_command() -> list[str]:
    """The worker process, as the Procfile runs it."""
    return [sys.executable, "-m", "bridge.cli", "worker"]


def run(
    environ: Mapping[str, str],
    *,
    host: str,
    port: int,
    lock: RunLock,
    sandbox_url: str | None = None,
) -> int:
    """Start Redis (if needed), web and worker; stop them all when one stops or on a signal.

    The caller holds ``lock``, the data dir's: no other run can start or stop a server
    of this data dir meanwhile, and the run record written here is this run's alone.
    """
    env = dict(environ)
    settings = Settings.from_env(env)
    if settings.sotion_api_key is None:
        raise SettingsError("SOTION_API_KEY is required (or use --sandbox to try it locally)")
    data_dir = Path(settings.data_dir)
    if lock.data_dir.resolve() != data_dir.resolve():
        raise ValueError(f"the lock held is {lock.path}, not the one of {data_dir}")
    redis_dir = data_dir / "redis"
    embedded: EmbeddedRedis | None = None
    children: list[subprocess.Popen[bytes]] = []
    with _StopSignals() as signals:
        try:
            _stop_leftover(data_dir, redis_dir)
            if settings.redis_url is None:
                embedded = EmbeddedRedis(redis_dir, remember_port=True).start()
                env["REDIS_URL"] = embedded.url
                log.info("embedded redis started url=%s data=%s", embedded.url, redis_dir)
            record = new_record(
                f"http://{host}:{port}",
                redis_url=embedded.url if embedded else None,
                redis_pid=embedded.pid if embedded else None,
                redis_dir=redis_dir,
                sandbox_url=sandbox_url,
            )
            write_record(data_dir, record)
            if not signals.received:
                # Sessions of their own: the terminal's signals (Ctrl-C, SIGHUP when it
                # closes) reach this process only, which stops the children in order; if
                # it is killed outright, the kernel stops them (Linux).
                for command in (gunicorn_command(host, port), worker_command()):
                    children.append(
                        subprocess.Popen(
                            command,
                            env=env,
                            start_new_session=True,
                            preexec_fn=die_with_parent(),
                        )
                    )
            while not signals.received and all(child.poll() is None for child in children):
                time.sleep(0.2)
        finally:
            _terminate(children, signals)
            if embedded is not None:
                embedded.stop()
            remove_record(data_dir)
    codes = [child.returncode for child in children]
    return 0 if signals.received else next((code for code in codes if code), 1)


def _stop_leftover(data_dir: Path, redis_dir: Path) -> None:
    """Stop the embedded Redis of a run that was killed (SIGKILL) before it could.

    A new server is started rather than the old one adopted: a process this run did not
    start cannot be waited for, nor counted on to have this version's settings, and its
    clean shutdown keeps every write (the append-only file).
    """
    record = read_record(data_dir)
    if record is None:
        return
    if record.redis_pid is not None and record.redis_url is not None:
        stop_stray(record.redis_pid, record.redis_url, redis_dir)
    remove_record(data_dir)


class _StopSignals:
    """SIGHUP, SIGINT and SIGTERM, counted while the run lasts (then restored)."""

    SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.count = 0
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def received(self) -> bool:
        """Whether a stop was asked for."""
        return self.count > 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.count and time.monotonic() - self._first < DUPLICATE_SIGNAL_SECONDS:
            return  # the same stop (a closing terminal: SIGHUP from the kernel and the shell)
        if not self.count:
            self._first = time.monotonic()
        self.count += 1

    def __enter__(self) -> _StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _terminate(children: list[subprocess.Popen[bytes]], signals: _StopSignals) -> None:
    """SIGTERM each child, give them their grace (cut short by a further signal), then
    SIGKILL whatever is left in their process groups (a gunicorn worker, the scheduler)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    stops = max(signals.count, 1)
    deadline = time.monotonic() + GRACE_SECONDS
    while any(child.poll() is None for child in children):
        if time.monotonic() > deadline or signals.count > stops:
            break
        time.sleep(0.05)
    for child in children:
        # Each child leads its own group, so this reaches its descendants (a gunicorn
        # worker, the RQ scheduler) if any outlived it, and nothing else.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def sandbox_settings(settings: Settings) -> Settings:
    """``settings`` as the running ``bridge run --sandbox`` of this data dir has them, when
    they name no Sotion key: the other commands (`bridge member`) then read its sandbox."""
    url = running_sandbox(settings) if settings.sotion_api_key is None else None
    if url is None:
        return settings
    return dataclasses.replace(settings, sotion_api_key=SANDBOX_SOTION_KEY, sotion_api_url=url)


def running_sandbox(settings: Settings) -> str | None:
    """The Sotion sandbox's API of the ``bridge run --sandbox`` alive on this data dir."""
    record = read_record(Path(settings.data_dir))
    if record is None or record.sandbox_url is None or not process_alive(record.pid):
        return None
    return record.sandbox_url


def sandbox_environment(environ: Mapping[str, str], sotion_url: str, key: str) -> dict[str, str]:
    """The environment for ``bridge run --sandbox``: Sotion is the local sandbox."""
    env = dict(environ)
    env["SOTION_API_URL"] = sotion_url
    env["SOTION_API_KEY"] = key
    env.pop("SOTION_API_FLAVOR", None)
    # A known demo secret, only in sandbox mode, so signed test events can be sent at once.
    env.setdefault("STRIPE_WEBHOOK_SECRET", SANDBOX_STRIPE_SECRET)
    env.setdefault("LEMONSQUEEZY_WEBHOOK_SECRET", SANDBOX_LEMONSQUEEZY_SECRET)
    env.setdefault("GUMROAD_WEBHOOK_TOKEN", SANDBOX_GUMROAD_TOKEN)
    env.setdefault("BRIDGE_ACCEPT_TEST_EVENTS", "true")
    return env
