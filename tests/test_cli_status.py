"""`bridge status`: what it prints, its JSON, and its exit codes (0 healthy, 1 needs
attention, 2 configuration error or Redis unreachable), run as an operator runs it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker, Worker

from bridge import runner
from bridge.app import create_app
from bridge.cli import main
from bridge.embedded import free_port
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import RateLimit
from tests import commands
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET, drain, registered_worker
from tests.reconcile.providers import Bridge, base_env
from tests.stripe_events import event
from tests.test_status import purchase
from tests.test_stripe_flow import T0, post, subscription
from workers import runtime as worker_runtime
from workers.budget import SharedBudget
from workers.schedule import NEXT_KEY


@pytest.fixture
def bridge(redis_url: str, redis_conn: redis.Redis, sotion: SandboxServer) -> Bridge:
    """`bridge ...` in-process with only the variables an operator would set."""
    return Bridge({**base_env(redis_url, sotion.url), "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET})


@pytest.fixture
def worker(queue: Queue) -> Iterator[SimpleWorker]:
    """An idle RQ worker registered on the bridge's queue, as a running one is."""
    with registered_worker(queue, "worker-1") as registered:
        yield registered


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_help_states_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["status", "--help"])
    assert result.exit_code == 0
    assert "Exit codes:" in result.output
    assert "0  healthy" in result.output
    assert "1  needs attention: no worker alive, failed or parked jobs" in result.output
    assert "2  configuration error, or Redis unreachable" in result.output


def test_healthy_bridge_exits_0_showing_the_worker_and_the_applied_purchase(
    bridge: Bridge,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    worker: SimpleWorker,
) -> None:
    job_id = purchase(client, queue)
    drain(queue)

    outcome = bridge.run("status", COLUMNS="200")
    assert outcome.code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert lines[0].startswith("bridge status at ") and lines[0].endswith(" UTC: healthy")
    assert "dry run: off" in lines
    (row,) = [line for line in lines if "worker-1" in line]
    assert "idle" in row and "s ago" in row
    assert f"job {job_id}: applied" in outcome.output
    assert "webhooks enabled, API key unset (STRIPE_API_KEY)" in outcome.output
    assert "webhooks disabled, API key unset (LEMONSQUEEZY_API_KEY)" in outcome.output
    assert "last reconcile: never" in outcome.output
    assert "\x1b[" not in outcome.output  # no colour codes where no terminal is


def test_failed_job_exits_1_naming_it_and_its_reason(
    bridge: Bridge,
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    worker: SimpleWorker,
) -> None:
    worker_runtime.configure(dataclasses.replace(settings, sotion_api_key="so_wrong"), redis_conn)
    job_id = purchase(client, queue)
    drain(queue)

    outcome = bridge.run("status", COLUMNS="200")
    assert outcome.code == 1, outcome.output
    lines = outcome.output.splitlines()
    assert lines[0].endswith(" UTC: needs attention")
    assert lines[1] == "  ! 1 failed job(s): see `bridge jobs failed`"
    (last,) = [line for line in lines if "last event:" in line and job_id in line]
    assert f"job {job_id}: failed: " in last and "AuthError" in last


def test_no_worker_alive_exits_1(bridge: Bridge, queue: Queue) -> None:
    outcome = bridge.run("status")
    assert outcome.code == 1, outcome.output
    assert "  ! no worker alive: queued events wait until one runs" in outcome.output
    assert "workers: none alive" in outcome.output


def test_parked_event_exits_1(
    bridge: Bridge,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    worker: SimpleWorker,
) -> None:
    payload = event("customer.subscription.created", subscription(), created=T0)
    assert post(client, payload)["queued"] == 1
    drain(queue)

    outcome = bridge.run("status", COLUMNS="200")
    assert outcome.code == 1, outcome.output
    assert "  ! 1 parked event(s) wait for their buyer: see `bridge jobs parked`" in (
        outcome.output
    )
    assert ": parked (as parked-" in outcome.output


def test_json_report_with_a_retry_waiting_and_a_budget(
    bridge: Bridge,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion: SandboxServer,
    worker: SimpleWorker,
) -> None:
    patient = create_app(dataclasses.replace(settings, retry_base_seconds=60)).test_client()
    sotion.faults.inject("503", count=1)
    job_id = purchase(patient, queue)
    drain(queue)
    # Later than any window the sandbox's answers reported: the budget keeps the newest.
    reset = int(time.time()) + 3000
    SharedBudget(redis_conn).record(RateLimit(limit=100, remaining=7, reset_at=reset))
    queue.connection.hset("bridge:last-event", "gumroad", f"gumroad-long-gone|{T0}")

    outcome = bridge.run("status", "--json")
    assert outcome.code == 0, outcome.output  # a retry is no failure
    report = json.loads(outcome.output)
    assert (report["healthy"], report["problems"], report["redis_unreachable"]) == (
        True,
        [],
        False,
    )
    assert [w["name"] for w in report["workers"]] == ["worker-1"]
    assert report["queue"]["scheduled_retries"] == 1
    stripe, lemonsqueezy, gumroad = report["providers"]
    assert stripe["last_event"]["job_id"] == job_id
    assert stripe["last_event"]["outcome"] == "retrying"
    due = datetime.fromisoformat(stripe["last_event"]["next_attempt_at"])
    assert due == datetime.fromisoformat(report["queue"]["next_retry_at"])
    assert due.timestamp() > time.time() + 20
    assert lemonsqueezy["last_event"] is None
    assert gumroad["last_event"]["outcome"] == "expired"
    budget = report["budget"]
    assert (budget["known"], budget["remaining"], budget["limit"], budget["exhausted"]) == (
        True,
        7,
        100,
        False,
    )
    assert datetime.fromisoformat(budget["reset_at"]).timestamp() == reset
    assert report["dry_run"] == {"on": False, "writes": 0, "by_action": {}}


def test_json_of_a_bridge_needing_attention_exits_1_with_the_problem_codes(
    bridge: Bridge, queue: Queue
) -> None:
    outcome = bridge.run("status", "--json")
    assert outcome.code == 1
    assert [p["code"] for p in json.loads(outcome.output)["problems"]] == ["no_worker"]


def test_dry_run_is_shown(bridge: Bridge, queue: Queue, worker: SimpleWorker) -> None:
    outcome = bridge.run("status", BRIDGE_DRY_RUN="true")
    assert outcome.code == 0, outcome.output
    assert "dry run: ON (BRIDGE_DRY_RUN)" in outcome.output


def test_closed_redis_port_exits_2_with_one_line_naming_redis_url(bridge: Bridge) -> None:
    outcome = bridge.run("status", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert outcome.code == 2
    assert one_line(outcome.output) == "Error: Redis at REDIS_URL is unreachable (ConnectionError)"


def test_no_redis_url_and_no_bridge_running_exits_2(bridge: Bridge, tmp_path: Path) -> None:
    data = tmp_path / "data"
    outcome = bridge.run("status", REDIS_URL=None, BRIDGE_DATA_DIR=str(data))
    assert outcome.code == 2
    assert one_line(outcome.output) == (
        "Error: no Redis: set REDIS_URL, or start the bridge with `bridge run` "
        f"(none is running for data dir {data})"
    )


def test_bad_configuration_exits_2_naming_the_variable(bridge: Bridge) -> None:
    outcome = bridge.run("status", BRIDGE_RECONCILE_INTERVAL="hourly")
    assert outcome.code == 2
    assert one_line(outcome.output).startswith("Error: BRIDGE_RECONCILE_INTERVAL")


def test_unreachable_redis_in_a_real_process_prints_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    env = commands.environment(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = commands.bridge("status", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: Redis at REDIS_URL is unreachable (ConnectionError)"
    ]


def test_a_running_worker_process_is_alive_in_the_status_of_another_process(
    redis_url: str, redis_conn: redis.Redis, sotion: SandboxServer, tmp_path: Path
) -> None:
    env = commands.environment(
        REDIS_URL=redis_url, SOTION_API_KEY=SANDBOX_KEY, SOTION_API_URL=sotion.url
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            runner.worker_command(),
            env=env,
            cwd=tmp_path,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        # Up and through its first maintenance pass (which schedules the reconcile).
        while not (Worker.all(connection=redis_conn) and redis_conn.exists(NEXT_KEY)):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        result = commands.bridge("status", "--json", env=env, cwd=tmp_path)
    finally:
        # Not a test of stopping: a worker stopped seconds after its start may take RQ's
        # 60 s pub/sub wait to exit (see QuietWorker in tests/test_status.py).
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: it and its scheduler
            process.wait(timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    (alive,) = report["workers"]
    assert alive["pid"] == process.pid
    assert alive["heartbeat_age_seconds"] < 30
    # Its maintenance pass schedules the reconcile, an interval ahead.
    assert report["reconcile"]["next_at"] is not None
