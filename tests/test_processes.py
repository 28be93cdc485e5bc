"""The deployment contract, run for real: the Procfile's processes and `bridge run`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from bridge import discovery
from bridge.embedded import free_port, process_alive
from bridge.sandbox import SandboxServer
from bridge.sotion import SotionClient
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET
from tests.reliability.processes import MARKER_VARIABLE, marked_pids

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)


def procfile() -> dict[str, str]:
    """The Procfile's process types and their command lines."""
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if command.strip():
            commands[name.strip()] = command.strip()
    return commands


def _environment(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SOTION_", "STRIPE_", "REDIS_"))
    }
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _start(command: list[str] | str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        command,
        shell=isinstance(command, str),
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for(check: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    output = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    pytest.fail(f"timed out waiting for {what}\n{output}")


def _send(base: str, payload: dict[str, object]) -> requests.Response:
    body = se.encode(payload)
    headers = {"Stripe-Signature": se.sign(body, STRIPE_SECRET)}
    return requests.post(f"{base}/webhooks/stripe", data=body, headers=headers, timeout=10)


def _purchase(email: str) -> dict[str, object]:
    obj = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj["customer_details"]["email"] = email
    obj["payment_intent"] = f"pi_{email.split('@')[0]}"
    return se.event("checkout.session.completed", obj)


@pytest.fixture
def bridge_env(redis_url: str, sotion: SandboxServer) -> dict[str, str]:
    """The environment an operator would set, pointing at the test Redis and sandbox."""
    redis.Redis.from_url(redis_url).flushdb()
    return _environment(
        REDIS_URL=redis_url,
        SOTION_API_URL=sotion.url,
        SOTION_API_KEY=SANDBOX_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        BRIDGE_LOG_LEVEL="INFO",
    )


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; all are stopped at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        _stop(process, signal.SIGKILL)


def test_procfile_processes_turn_a_signed_event_into_a_paid_member(
    bridge_env: dict[str, str],
    sotion_api: SotionClient,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    commands = procfile()
    assert set(commands) == {"release", "web", "worker"}
    port = free_port()
    env = dict(bridge_env, PORT=str(port))
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    # The release phase runs first; a non-zero exit would stop the deploy.
    release = _start(commands["release"], env, tmp_path / "release.log")
    assert release.wait(timeout=60) == 0, (tmp_path / "release.log").read_text()
    started.append(_start(commands["web"], env, web_log))
    started.append(_start(commands["worker"], env, worker_log))
    base = f"http://127.0.0.1:{port}"
    logs = [web_log, worker_log]
    _wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 30, "web", logs)

    response = _send(base, _purchase("procfile@example.com"))
    assert response.status_code == 200
    assert response.json()["queued"] == 1

    def member_is_paid() -> bool:
        member = sotion_api.find_member_by_email("procfile@example.com")
        return member is not None and member.paid is True

    _wait_for(member_is_paid, 30, "the member in the sandbox", logs)
    bad = requests.post(
        f"{base}/webhooks/stripe", data=b"{}", headers={"Stripe-Signature": "t=1,v1=00"}
    )
    assert bad.status_code == 400
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert 'bridge_jobs_total{outcome="applied"} 1.0' in metrics
    for process in started:
        _stop(process)
        assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in worker_log.read_text()


def test_web_process_refuses_to_start_with_bad_configuration(
    bridge_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(bridge_env, PORT=str(free_port()), SOTION_API_KEY="not-a-key")
    log = tmp_path / "web.log"
    process = _start(procfile()["web"], env, log)
    try:
        process.wait(timeout=30)
    finally:
        _stop(process, signal.SIGKILL)
    assert process.returncode != 0
    assert "SOTION_API_KEY" in log.read_text()


def test_worker_process_refuses_to_start_without_sotion_key(
    bridge_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in bridge_env.items() if k != "SOTION_API_KEY"}
    result = subprocess.run(
        procfile()["worker"], shell=True, env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    assert result.returncode != 0
    assert b"SOTION_API_KEY" in result.stderr + result.stdout


@dataclass
class Runs:
    """`bridge run` processes on one data dir; every process they start carries a marker
    (an environment variable), so the clean-up finds and kills orphans too. redis-server
    overwrites its environment with its process title: its pid comes from the run record."""

    env: dict[str, str]
    data_dir: Path
    logs_dir: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    redis_pids: set[int] = field(default_factory=set)

    @property
    def base(self) -> str:
        """The web's address."""
        return f"http://127.0.0.1:{self.port}"

    def log(self, number: int) -> Path:
        """The output of the ``number``th run (from 1)."""
        return self.logs_dir / f"run{number}.log"

    def command(self, port: int | None = None) -> list[str]:
        """The `bridge run` command line."""
        return [sys.executable, "-m", "bridge.cli", "run", "--port", str(port or self.port)]

    def start(self) -> subprocess.Popen[bytes]:
        """Start `bridge run` (a session of its own, as a terminal's job is) and wait
        until its web is ready."""
        log = self.log(len(self.runs) + 1)
        process = _start(self.command(), {**self.env, MARKER_VARIABLE: self.marker}, log)
        self.runs.append(process)

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            return requests.get(f"{self.base}/readyz", timeout=1).ok

        _wait_for(ready, 30, "bridge run", [log])
        self.record()
        return process

    def record(self) -> discovery.RunRecord:
        """The run record of the running bridge."""
        record = discovery.read_record(self.data_dir)
        assert record is not None and record.redis_pid is not None
        self.redis_pids.add(record.redis_pid)
        return record

    def processes(self) -> set[int]:
        """Every live process the runs started, orphans included."""
        alive = {pid for pid in self.redis_pids if process_alive(pid)}
        return set(marked_pids(self.marker)) | alive

    def kill_all(self) -> None:
        """SIGKILL every process the runs started and wait until they are gone."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.runs:
            process.wait(timeout=10)
        _wait_for(lambda: not self.processes(), 10, "the processes to go", [])


@pytest.fixture
def runs(sotion: SandboxServer, tmp_path: Path) -> Iterator[Runs]:
    """`bridge run` on a data dir of the test's own with an embedded Redis; every process
    is killed at the end."""
    env = _environment(
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
        SOTION_API_URL=sotion.url,
        SOTION_API_KEY=SANDBOX_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
    )
    started = Runs(env, tmp_path / "data", tmp_path)
    yield started
    started.kill_all()


def _bridge(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *arguments],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bridge_run_uses_an_embedded_redis_whose_data_survives_a_restart(
    runs: Runs, sotion_api: SotionClient, tmp_path: Path
) -> None:
    payload = _purchase("embedded@example.com")
    first = runs.start()
    assert _send(runs.base, payload).json()["queued"] == 1
    _wait_for(
        lambda: sotion_api.find_member_by_email("embedded@example.com") is not None,
        30,
        "the member",
        [runs.log(1)],
    )
    _stop(first, signal.SIGINT)
    assert first.returncode == 0, runs.log(1).read_text()[-2000:]
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or (
        tmp_path / "data" / "redis" / "appendonlydir"
    ).exists()

    second = runs.start()
    # The dedupe key written before the restart is still there: the redelivery is a duplicate.
    again = _send(runs.base, payload).json()
    assert again["duplicates"] == 1 and again["queued"] == 0
    _stop(second, signal.SIGINT)
    assert len([m for m in sotion_api.iter_members() if m.email == "embedded@example.com"]) == 1


def test_commands_in_another_process_find_the_embedded_redis_of_bridge_run(
    runs: Runs,
) -> None:
    runs.start()
    # A subscription whose buyer no earlier event named is parked, in the run's Redis.
    obj = se.fixture("customer_subscription_created")["data"]["object"]
    assert _send(runs.base, se.event("customer.subscription.created", obj)).ok
    command_env = {k: v for k, v in runs.env.items() if k != "REDIS_URL"}

    def parked() -> subprocess.CompletedProcess[str] | None:
        result = _bridge(command_env, "jobs", "parked")
        assert result.returncode == 0, result.stderr
        return result if "customer.subscription.created" in result.stdout else None

    _wait_for(parked, 30, "the parked event in `bridge jobs parked`", [runs.log(1)])
    failed = _bridge(command_env, "jobs", "failed")
    assert (failed.returncode, failed.stdout.strip()) == (0, "no failed jobs"), failed.stderr


def test_with_no_bridge_running_commands_print_one_line_and_exit_1(tmp_path: Path) -> None:
    env = _environment(BRIDGE_DATA_DIR=str(tmp_path / "data"))
    result = _bridge(env, "jobs", "failed")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: no Redis: set REDIS_URL, or start the bridge with `bridge run` "
        f"(none is running for data dir {tmp_path / 'data'})"
    ]


def test_a_second_bridge_run_on_the_same_data_dir_is_refused_while_the_first_runs(
    runs: Runs,
) -> None:
    first = runs.start()
    second = subprocess.run(
        runs.command(port=free_port()),
        env=runs.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"Error: a bridge is already running on data dir {runs.data_dir} (pid {first.pid}): "
        "stop it first, or give this one another BRIDGE_DATA_DIR"
    ]
    assert first.poll() is None
    assert requests.get(f"{runs.base}/readyz", timeout=5).ok
    assert runs.record().pid == first.pid


@pytest.mark.parametrize(
    "sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name
)
def test_a_stop_signal_stops_every_process_of_bridge_run_and_the_next_one_starts(
    runs: Runs, sig: int
) -> None:
    first = runs.start()
    children = runs.processes() - {first.pid}
    record = runs.record()
    # gunicorn's master and its two workers, the worker and its scheduler, redis-server.
    assert record.redis_pid in children and len(children) >= 5, children
    # As a closing terminal or Ctrl-C does: the signal goes to the job's process group.
    os.killpg(first.pid, sig)
    assert first.wait(timeout=30) == 0, runs.log(1).read_text()[-3000:]
    _wait_for(lambda: not runs.processes(), 5, "no process left", [runs.log(1)])
    assert discovery.read_record(runs.data_dir) is None

    second = runs.start()
    assert runs.record().redis_pid not in children
    _stop(second)
    assert second.returncode == 0, runs.log(2).read_text()[-3000:]


def test_after_a_sigkill_the_next_run_stops_the_redis_left_behind_and_keeps_its_data(
    runs: Runs,
) -> None:
    payload = _purchase("killed@example.com")
    first = runs.start()
    assert _send(runs.base, payload).json()["queued"] == 1
    left = runs.record().redis_pid
    assert left is not None
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    # The web and the worker stop by themselves (the kernel tells them: PR_SET_PDEATHSIG);
    # the redis-server is left for the next run.
    _wait_for(lambda: runs.processes() == {left}, 35, "only redis-server left", [runs.log(1)])

    second = runs.start()
    assert process_alive(left) is False
    assert runs.record().redis_pid != left
    # The dedupe key written before the kill is still there: the redelivery is a duplicate.
    again = _send(runs.base, payload).json()
    assert again["duplicates"] == 1 and again["queued"] == 0
    _stop(second)
    assert second.returncode == 0, runs.log(2).read_text()[-3000:]
