"""The operator commands: inspecting and replaying failed jobs, sending a demo event."""

from __future__ import annotations

import dataclasses

import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from rq import Queue

from bridge.cli import main
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests import stripe_events as se
from tests.conftest import STRIPE_SECRET, drain
from workers import runtime as worker_runtime


def _subscription_without_known_email(client: FlaskClient) -> None:
    """A subscription event whose customer no earlier event named (fails without parking)."""
    obj = se.fixture("customer_subscription_created")["data"]["object"]
    body = se.encode(se.event("customer.subscription.created", obj))
    response = client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)}
    )
    assert response.status_code == 200


def test_failed_jobs_are_listed_with_their_reason_and_replayed(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    env: dict[str, str],
    settings: Settings,
    redis_conn: redis.Redis,
    sotion_api: SotionClient,
) -> None:
    # Parking off: the event fails for good at once instead of waiting for its buyer.
    worker_runtime.configure(dataclasses.replace(settings, park_hours=0), redis_conn)
    _subscription_without_known_email(client)
    drain(queue)
    assert queue.failed_job_registry.count == 1
    runner = CliRunner()

    listed = runner.invoke(main, ["jobs", "failed"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "customer.subscription.created" in listed.output
    assert "STRIPE_API_KEY" in listed.output

    # Teach the bridge the customer's email, then replay: the job now applies.
    checkout = se.fixture("checkout_session_completed_subscription")["data"]["object"]
    checkout["customer"] = "cus_TA4eA8GQAss9bI"
    checkout["customer_details"]["email"] = "replayed@example.com"
    body = se.encode(se.event("checkout.session.completed", checkout))
    client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)}
    )
    drain(queue)
    replayed = runner.invoke(main, ["jobs", "replay", "--all"], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 job(s)" in replayed.output
    drain(queue)
    assert queue.failed_job_registry.count == 0
    member = sotion_api.find_member_by_email("replayed@example.com")
    assert member is not None and member.paid is True
    assert runner.invoke(main, ["jobs", "failed"], env=env).output.strip() == "no failed jobs"


def test_replaying_an_unknown_job_says_so_and_fails(
    env: dict[str, str], redis_conn: redis.Redis
) -> None:
    result = CliRunner().invoke(main, ["jobs", "replay", "no-such-job"], env=env)
    assert result.exit_code == 1
    assert "no-such-job" in result.output


def test_replay_without_ids_or_all_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["jobs", "replay"], env=env)
    assert result.exit_code == 2
    assert "--all" in result.output


def test_commands_refuse_bad_configuration_naming_the_variable(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["jobs", "failed"], env=dict(env, REDIS_URL="http://x"))
    assert result.exit_code == 1
    assert "REDIS_URL" in result.output


def test_worker_command_fails_naming_a_missing_sotion_key(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["worker", "--burst"], env=dict(env, SOTION_API_KEY=""))
    assert result.exit_code == 1
    assert "SOTION_API_KEY" in result.output


def test_worker_command_in_burst_mode_applies_queued_events(
    client: FlaskClient, queue: Queue, env: dict[str, str], sotion_api: SotionClient
) -> None:
    obj = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj["customer_details"]["email"] = "burst@example.com"
    body = se.encode(se.event("checkout.session.completed", obj))
    client.post(
        "/webhooks/stripe", data=body, headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)}
    )
    result = CliRunner().invoke(main, ["worker", "--burst"], env=env)
    worker_runtime.reset()
    assert result.exit_code == 0, result.output
    member = sotion_api.find_member_by_email("burst@example.com")
    assert member is not None and member.paid is True
