"""The bridge's processes run as an operator runs them, in a directory of the test's own
(so no ``.env`` but the test's is read) and with none of the caller's bridge variables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from bridge import runner
from bridge.embedded import free_port

BIN = str(Path(sys.executable).parent)
# Variables of the caller's environment that must not leak into the command's.
_OWN_PREFIXES = ("SOTION_", "STRIPE_", "REDIS_", "BRIDGE_", "LEMONSQUEEZY_", "GUMROAD_")
_OWN_NAMES = ("PORT", "WEB_CONCURRENCY")
# gunicorn's own first line, logged before its on_starting hook runs.
_GUNICORN_STARTING = re.compile(r"^\[[^\]]+\] \[\d+\] \[INFO\] Starting gunicorn ")


def environment(**variables: str) -> dict[str, str]:
    """The caller's environment without the bridge's variables, plus ``variables``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_OWN_PREFIXES) and name not in _OWN_NAMES
    }
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = "250"  # rich wraps at the terminal width: one message, one line
    env.update(variables)
    return env


def bridge(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``bridge ARGS`` (the console script the Procfile runs) to its end."""
    return subprocess.run(
        [str(Path(BIN) / "bridge"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def worker(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the worker process as ``bridge run`` and the Procfile start it, to its end."""
    return subprocess.run(
        [*runner.worker_command(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Every line the command printed, stdout then stderr, blank ones left out."""
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def without_gunicorn_start(output: list[str]) -> list[str]:
    """``output`` without gunicorn's "Starting gunicorn" line (it precedes any hook)."""
    return [line for line in output if not _GUNICORN_STARTING.match(line)]


class Web:
    """The web process (gunicorn, as ``bridge run`` and the Procfile start it)."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.base = f"http://127.0.0.1:{self.port}"
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                runner.gunicorn_command("127.0.0.1", self.port),
                env=env,
                cwd=cwd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def lines(self) -> list[str]:
        """What the process has printed so far."""
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def wait(self, timeout: float = 30) -> int:
        """Its exit code, once it has exited."""
        return self.process.wait(timeout=timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll ``/readyz`` until it answers 200 (every worker booted or not, one has)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("the web exited:\n" + "\n".join(self.lines()))
            try:
                if requests.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError("the web never became ready:\n" + "\n".join(self.lines()))

    def stop(self) -> None:
        """Stop it at once (SIGQUIT: gunicorn's quick shutdown; graceful shutdown is not
        what these tests are about), SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def web(env: dict[str, str], cwd: Path) -> Iterator[Web]:
    """A running web process, stopped at the end."""
    process = Web(env, cwd, cwd / "web.log")
    try:
        yield process
    finally:
        process.stop()
