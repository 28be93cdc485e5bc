"""Real bridge worker processes for fault tests.

Start `bridge worker` processes, find the one running a job, signal every process of that
"dyno" the way a platform does, watch the Sotion sandbox's traffic, and clean up every
process a test started, orphans included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Worker
from rq.serializers import JSONSerializer

from bridge.sandbox import SandboxServer

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
# What the Procfile's `worker: bridge worker` runs.
WORKER_COMMAND = [sys.executable, "-m", "bridge.cli", "worker"]
# Every process a test starts carries this variable with a value unique to the test; its
# children (the scheduler, a forking worker's horses) inherit it, so the clean-up finds
# them even once orphaned.
MARKER_VARIABLE = "BRIDGE_FAULT_TEST_RUN"


def now() -> float:
    """The monotonic clock every measurement of these tests uses."""
    return time.monotonic()


def say(*parts: object) -> None:
    """Print a figure of the test at once (pytest -s shows it; failures show it too)."""
    print(*parts, flush=True)


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without any bridge setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SOTION_", "STRIPE_", "REDIS_", "BRIDGE_", "LEMONSQUEEZY_"))
        and not k.startswith(("GUMROAD_", "RQ_"))
    }
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (from /proc; empty once it is gone)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def marked_pids(marker: str) -> list[int]:
    """Every live process whose environment carries ``MARKER_VARIABLE=marker``."""
    wanted = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in variables:
            found.append(int(entry.name))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class WorkerProcess:
    """One `bridge worker` process (a session of its own, like a dyno)."""

    label: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The worker's pid (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the worker process is still running."""
        return self.popen.poll() is None

    def horses(self) -> list[int]:
        """Its work horses, if it forks any: children in a process group of their own."""
        found = []
        for child in children(self.pid):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(child) == child:
                    found.append(child)
        return found

    def signal_dyno(self, sig: int) -> None:
        """Send ``sig`` to every process of this worker, as a platform's stop or kill does.

        The worker runs its jobs itself and shares its process group with its scheduler;
        a forking worker's horses, each in a group of its own, are signalled too.
        """
        horses = self.horses()
        _signal_group(self.pid, sig)
        for horse in horses:
            _signal_group(horse, sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, waiting up to ``timeout`` seconds (None if still running)."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        """Everything the worker logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Fleet:
    """The worker processes of one test; ``stop_all`` kills each one and its descendants."""

    env: dict[str, str]
    logs_dir: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, label: str | None = None, **extra_env: str) -> WorkerProcess:
        """Start one `bridge worker` process with the fleet's environment."""
        label = label or f"worker{len(self.workers) + 1}"
        log = self.logs_dir / f"{label}.log"
        env = {**self.env, **extra_env, MARKER_VARIABLE: self.marker}
        with log.open("wb") as handle:
            popen = subprocess.Popen(
                WORKER_COMMAND,
                env=env,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(label, popen, log)
        self.workers.append(worker)
        return worker

    def by_pid(self, pid: int) -> WorkerProcess | None:
        """The worker of this fleet with this pid."""
        return next((w for w in self.workers if w.pid == pid), None)

    def logs(self) -> list[Path]:
        """The log files of every worker started."""
        return [worker.log for worker in self.workers]

    def stop_all(self) -> None:
        """SIGKILL every process the fleet started (orphaned horses too) and reap them."""
        for worker in self.workers:
            _signal_group(worker.pid, signal.SIGKILL)
        for pid in marked_pids(self.marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.popen.wait(timeout=10)
        deadline = now() + 10
        while marked_pids(self.marker) and now() < deadline:
            time.sleep(0.05)


def tails(logs: Iterable[Path], size: int = 4000) -> str:
    """The end of each log, for a failure message."""
    parts = []
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        parts.append(f"--- {log.name}\n{text[-size:]}")
    return "\n".join(parts)


def wait_until(
    check: Callable[[], Any], timeout: float, what: str, logs: Iterable[Path] = ()
) -> Any:
    """Poll ``check`` until it returns something truthy (which is returned); fail after
    ``timeout`` seconds with the tail of ``logs``."""
    deadline = now() + timeout
    while True:
        try:
            result = check()
        except redis.ConnectionError:
            result = None
        if result:
            return result
        if now() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{tails(logs)}")
        time.sleep(0.05)


@dataclass(frozen=True)
class RunningJob:
    """Who runs a job: the RQ worker's name and pid."""

    worker_name: str
    pid: int


def worker_running(connection: redis.Redis, job_id: str) -> RunningJob | None:
    """The RQ worker whose current execution is ``job_id``, if any."""
    for worker in Worker.all(connection=connection, serializer=JSONSerializer):
        if worker.get_current_job_id() == job_id and worker.pid:
            return RunningJob(worker.name, worker.pid)
    return None


def live_worker_count(connection: redis.Redis) -> int:
    """How many RQ workers are registered (each registers once its loop runs)."""
    return len(Worker.all(connection=connection, serializer=JSONSerializer))


# -- the sandbox's traffic ---------------------------------------------------------------


@dataclass
class Call:
    """One request the sandbox received: when it arrived and when it was answered."""

    method: str
    path: str
    arrived: float
    status: int | None = None
    answered: float | None = None

    def in_flight_at(self, moment: float) -> bool:
        """Whether the request had arrived and was not answered yet at ``moment``."""
        return self.arrived <= moment and (self.answered is None or self.answered > moment)


class Traffic:
    """WSGI middleware in front of the sandbox: every request with its answer's status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Record the request's arrival, then its status when the app answers."""
        call = Call(environ["REQUEST_METHOD"], environ["PATH_INFO"], now())
        with self._lock:
            self._calls.append(call)

        def recording_start(status: str, headers: Any, exc_info: Any = None) -> Any:
            call.status = int(status.split()[0])
            call.answered = now()
            return start_response(status, headers, exc_info)

        body: Iterable[bytes] = self.app(environ, recording_start)
        return body

    def calls(self, method: str | None = None) -> list[Call]:
        """The requests received so far (of one method), oldest first, without the workers'
        start-up check of the key (``GET /site``): the calls of jobs."""
        with self._lock:
            return [
                c
                for c in self._calls
                if (method is None or c.method == method) and not c.path.endswith("/site")
            ]

    def creates(self) -> list[Call]:
        """The member creations (POST /members) received so far."""
        return [c for c in self.calls("POST") if c.path.rstrip("/").endswith("/members")]


def watch(server: SandboxServer) -> Traffic:
    """Put a Traffic recorder in front of a sandbox's app."""
    traffic = Traffic(server.app.wsgi_app)
    server.app.wsgi_app = traffic  # type: ignore[method-assign]
    return traffic
