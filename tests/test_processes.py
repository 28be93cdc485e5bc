"""The deployment contract, run for real: the Procfile's processes and `bridge run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests

from bridge.embedded import free_port
from bridge.sandbox import SandboxServer
from bridge.sotion import SotionClient
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET

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
    assert set(commands) == {"web", "worker"}
    port = free_port()
    env = dict(bridge_env, PORT=str(port))
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
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


def test_bridge_run_uses_an_embedded_redis_whose_data_survives_a_restart(
    sotion: SandboxServer,
    sotion_api: SotionClient,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    port = free_port()
    env = _environment(
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
        SOTION_API_URL=sotion.url,
        SOTION_API_KEY=SANDBOX_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
    )
    command = [sys.executable, "-m", "bridge.cli", "run", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    payload = _purchase("embedded@example.com")

    first_log = tmp_path / "run1.log"
    first = _start(command, env, first_log)
    started.append(first)
    _wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 30, "bridge run", [first_log])
    assert _send(base, payload).json()["queued"] == 1
    _wait_for(
        lambda: sotion_api.find_member_by_email("embedded@example.com") is not None,
        30,
        "the member",
        [first_log],
    )
    _stop(first, signal.SIGINT)
    assert first.returncode == 0, first_log.read_text()[-2000:]
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or (
        tmp_path / "data" / "redis" / "appendonlydir"
    ).exists()

    second_log = tmp_path / "run2.log"
    second = _start(command, env, second_log)
    started.append(second)
    _wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 30, "restart", [second_log])
    # The dedupe key written before the restart is still there: the redelivery is a duplicate.
    again = _send(base, payload).json()
    assert again["duplicates"] == 1 and again["queued"] == 0
    _stop(second, signal.SIGINT)
    assert len([m for m in sotion_api.iter_members() if m.email == "embedded@example.com"]) == 1
