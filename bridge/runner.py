"""``bridge run``: web and worker on one machine, with an embedded Redis if none is given."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from bridge.embedded import EmbeddedRedis
from bridge.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# The Stripe signing secret `bridge run --sandbox` uses unless one is set.
SANDBOX_STRIPE_SECRET = "whsec_sandboxOnlyPublicNotASecret000"
# Seconds children get to finish their current work after SIGTERM: the worker's own
# grace for its running job (workers/worker.py) and gunicorn's, plus a margin.
GRACE_SECONDS = 28


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


def run(environ: Mapping[str, str], *, host: str, port: int) -> int:
    """Start Redis (if needed), web and worker; stop them all when one stops or on a signal."""
    env = dict(environ)
    settings = Settings.from_env(env)
    if settings.sotion_api_key is None:
        raise SettingsError("SOTION_API_KEY is required (or use --sandbox to try it locally)")
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(Path(settings.data_dir) / "redis").start()
        env["REDIS_URL"] = embedded.url
        log.info("embedded redis started url=%s data=%s", embedded.url, embedded.data_dir)
    children = [
        subprocess.Popen(gunicorn_command(host, port), env=env),
        subprocess.Popen(worker_command(), env=env),
    ]
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _terminate(children)
        if embedded is not None:
            embedded.stop()
    codes = [child.returncode for child in children]
    return 0 if stopping else next((code for code in codes if code), 1)


def _terminate(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def sandbox_environment(environ: Mapping[str, str], sotion_url: str, key: str) -> dict[str, str]:
    """The environment for ``bridge run --sandbox``: Sotion is the local sandbox."""
    env = dict(environ)
    env["SOTION_API_URL"] = sotion_url
    env["SOTION_API_KEY"] = key
    env.pop("SOTION_API_FLAVOR", None)
    # A known demo secret, only in sandbox mode, so signed test events can be sent at once.
    env.setdefault("STRIPE_WEBHOOK_SECRET", SANDBOX_STRIPE_SECRET)
    env.setdefault("BRIDGE_ACCEPT_TEST_EVENTS", "true")
    return env
