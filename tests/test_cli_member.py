"""``bridge member EMAIL``: the report printed, as JSON, and its exit codes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from rq import Queue

from bridge import discovery, runner
from bridge.cli import main
from bridge.embedded import free_port
from bridge.sandbox import SandboxServer
from tests import commands
from tests.conftest import SANDBOX_KEY, drain
from tests.test_inspect import stripe_purchase
from workers import runtime as worker_runtime


def test_member_prints_the_purchase_its_applied_job_the_paid_member_and_the_verdict(
    client: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, env: dict[str, str]
) -> None:
    job_id = stripe_purchase(client, "cli@example.com")
    drain(queue)

    result = CliRunner().invoke(main, ["member", "CLI@example.com"], env=env)

    assert result.exit_code == 0, result.output
    out = result.output
    assert "cli@example.com" in out
    assert "Stripe payment pi_inspect_1" in out and "active" in out
    assert job_id in out and "applied" in out and "create:paid=True" in out
    assert "paid=true status=active" in out
    assert "has access: Stripe payment pi_inspect_1 active since" in out


def test_member_json_carries_the_same_report(
    client: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, env: dict[str, str]
) -> None:
    job_id = stripe_purchase(client, "json@example.com")
    drain(queue)

    result = CliRunner().invoke(main, ["member", "json@example.com", "--json"], env=env)

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["known"] is True and data["has_access"] is True
    assert data["entitlements"][0]["key"] == "stripe:pi_inspect_1"
    assert data["entitlements"][0]["since"].startswith("20")  # ISO 8601
    assert data["events"][0]["id"] == job_id and data["events"][0]["status"] == "applied"
    assert data["sotion"]["member"]["paid"] is True
    assert data["verdict"].startswith("has access")


def test_member_of_an_unknown_email_says_why_and_exits_1(env: dict[str, str], queue: Queue) -> None:
    result = CliRunner().invoke(main, ["member", "stranger@example.com"], env=env)

    assert result.exit_code == 1
    assert "no event received" in result.output
    assert "sotion: no member with this email" in result.output


def test_member_with_sotion_unreachable_reports_it_in_one_line_and_exits_0(
    client: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, env: dict[str, str]
) -> None:
    stripe_purchase(client, "offline@example.com")
    drain(queue)
    closed = f"http://127.0.0.1:{free_port()}/api/v1"

    result = CliRunner().invoke(
        main, ["member", "offline@example.com"], env=dict(env, SOTION_API_URL=closed)
    )

    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("sotion:")]
    assert line.startswith("sotion: could not be read: ")
    assert "Traceback" not in result.output
    assert "has access per the ledger" in result.output


def test_member_with_redis_unreachable_is_one_line_and_exits_2(env: dict[str, str]) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"

    result = CliRunner().invoke(main, ["member", "a@example.com"], env=dict(env, REDIS_URL=closed))

    assert result.exit_code == 2
    assert "Redis is unreachable" in result.output
    assert "Traceback" not in result.output


def test_member_refuses_what_is_not_an_email(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["member", "not-an-email"], env=env)

    assert result.exit_code == 2
    assert "not an email address" in result.output


def test_member_as_a_process_exits_1_for_nothing_known_and_2_without_a_redis(
    redis_url: str, sotion: SandboxServer, tmp_path: Path, queue: Queue
) -> None:
    env = commands.environment(
        REDIS_URL=redis_url, SOTION_API_URL=sotion.url, SOTION_API_KEY=SANDBOX_KEY
    )
    unknown = commands.bridge("member", "ghost@example.com", env=env, cwd=tmp_path)
    no_redis = commands.bridge(
        "member",
        "ghost@example.com",
        env=commands.environment(BRIDGE_DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
    )

    assert unknown.returncode == 1, unknown.stderr
    assert "no entitlement recorded for this email" in unknown.stdout
    assert no_redis.returncode == 2
    (line,) = commands.lines(no_redis)
    assert "no Redis: set REDIS_URL" in line


def test_member_reads_the_sandbox_of_a_running_bridge_run_sandbox(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    env: dict[str, str],
    sotion: SandboxServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under `bridge run --sandbox` the Sotion key and URL live in that run's environment
    # only; another shell's `bridge member` finds them in the run record.
    stripe_purchase(client, "sandboxed@example.com")
    drain(queue)
    monkeypatch.setattr(runner, "SANDBOX_SOTION_KEY", SANDBOX_KEY)  # the test sandbox's key
    data_dir = tmp_path / "data"
    record = discovery.new_record(
        "http://127.0.0.1:8000", redis_dir=data_dir, sandbox_url=sotion.url
    )
    discovery.write_record(data_dir, dataclasses.replace(record, pid=os.getpid()))
    shell = {k: v for k, v in env.items() if not k.startswith("SOTION_")}
    shell["BRIDGE_DATA_DIR"] = str(data_dir)

    result = CliRunner().invoke(main, ["member", "sandboxed@example.com"], env=shell)

    assert result.exit_code == 0, result.output
    assert "paid=true status=active" in result.output
    assert "has access: Stripe payment pi_inspect_1 active since" in result.output
    discovery.remove_record(data_dir)
    without = CliRunner().invoke(main, ["member", "sandboxed@example.com"], env=shell)
    assert "SOTION_API_KEY is not set" in without.output
