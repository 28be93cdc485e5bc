"""``bridge jobs failed|show|purge``: buyers masked, failures redacted, deletions counted."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from rq import Queue
from rq.job import JobStatus
from rq.results import Result

from bridge.app import create_app
from bridge.cli import main
from bridge.intake import DEDUPE_PREFIX
from bridge.intake_script import member_events_key
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from tests.conftest import drain
from tests.test_inspect import T0, inject_faults, stripe_purchase, stripe_subscription
from workers import runtime as worker_runtime

# What a stored failure may carry that `jobs show` must never print.
SECRET = "whsec_leakedsecret0123456789"


@pytest.fixture
def failing(
    settings: Settings, redis_conn: redis.Redis, sotion: SandboxServer
) -> Iterator[FlaskClient]:
    """A bridge without retries against a sandbox failing every create: jobs fail for good."""
    no_retries = dataclasses.replace(settings, retry_attempts=0)
    worker_runtime.configure(no_retries, redis_conn)
    inject_faults(sotion, "503", 50, "POST")
    yield create_app(no_retries).test_client()
    worker_runtime.reset()


def test_failed_jobs_are_filtered_by_email_with_the_email_masked(
    failing: FlaskClient, queue: Queue, env: dict[str, str]
) -> None:
    alice = stripe_purchase(failing, "alice@example.com", intent="pi_alice")
    bob = stripe_purchase(failing, "bob@example.org", intent="pi_bob")
    drain(queue)
    assert queue.failed_job_registry.count == 2
    runner = CliRunner()

    everyone = runner.invoke(main, ["jobs", "failed"], env=env)
    only_alice = runner.invoke(main, ["jobs", "failed", "--email", "Alice@Example.com"], env=env)
    nobody = runner.invoke(main, ["jobs", "failed", "--email", "carol@example.com"], env=env)

    assert everyone.exit_code == 0, everyone.output
    assert alice in everyone.output and bob in everyone.output
    assert "a***@example.com" in everyone.output and "b***@example.org" in everyone.output
    assert "alice@example.com" not in everyone.output and "bob@example.org" not in everyone.output
    assert "503" in everyone.output
    assert only_alice.exit_code == 0, only_alice.output
    assert alice in only_alice.output and bob not in only_alice.output
    assert nobody.output.strip() == "no failed jobs for carol@example.com"


def test_show_prints_the_job_with_its_failure_redacted(
    failing: FlaskClient, queue: Queue, env: dict[str, str]
) -> None:
    job_id = stripe_purchase(failing, "shown@example.com", intent="pi_shown", name="Zed Quux")
    job = queue.fetch_job(job_id)
    assert job is not None
    # Failed as a worker fails it, with a text naming the buyer, their name and a secret
    # (as a careless exception message might): stored as is, printed redacted.
    queue.remove(job)
    job.ended_at = datetime.now(UTC)
    job.set_status(JobStatus.FAILED)
    job.save()
    queue.failed_job_registry.add(job, ttl=3600)
    Result.create_failure(
        job,
        ttl=3600,
        exc_string=(
            "Traceback (most recent call last):\n"
            '  File "workers/jobs.py", line 1, in apply\n'
            f"ValueError: shown@example.com (Zed Quux) rejected with {SECRET}"
        ),
    )

    result = CliRunner().invoke(main, ["jobs", "show", job_id], env=env)

    assert result.exit_code == 0, result.output
    out = result.output
    for line in (
        f"job:          {job_id}",
        "provider:     stripe",
        "event type:   checkout.session.completed",
        "email:        s***@example.com",
        "entitlement:  stripe:pi_shown",
        "status:       failed",
        "retries left: 0 of 0",
        "attempts:     up to 1",
    ):
        assert line in out, out
    assert "dedupe key:   stripe:evt_" in out
    assert "enqueued at:  20" in out and "ended at:     20" in out
    assert "traceback (redacted):" in out and "ValueError: s***@example.com" in out
    assert "shown@example.com" not in out and "Zed Quux" not in out and SECRET not in out


def test_show_or_purge_of_an_unknown_job_is_one_line_and_exit_1(
    env: dict[str, str], queue: Queue
) -> None:
    shown = CliRunner().invoke(main, ["jobs", "show", "no-such-job"], env=env)
    purged = CliRunner().invoke(main, ["jobs", "purge", "no-such-job", "--yes"], env=env)

    assert shown.exit_code == 1
    assert shown.output.strip() == "no such job: no-such-job"
    assert purged.exit_code == 1
    assert "deleted 0 failed job(s)" in purged.output
    assert "not failed or unknown: no-such-job" in purged.output


def test_purge_asks_first_and_deletes_only_when_confirmed(
    failing: FlaskClient, queue: Queue, env: dict[str, str], redis_conn: redis.Redis
) -> None:
    job_id = stripe_purchase(failing, "purged@example.com", intent="pi_purged")
    drain(queue)
    job = queue.fetch_job(job_id)
    assert job is not None
    dedupe = DEDUPE_PREFIX + job.meta["dedupe_key"]
    runner = CliRunner()

    declined = runner.invoke(main, ["jobs", "purge", job_id], env=env, input="n\n")
    assert declined.exit_code == 1
    assert "delete 1 failed job(s)?" in declined.output and "Aborted" in declined.output
    assert queue.failed_job_registry.get_job_ids() == [job_id]

    confirmed = runner.invoke(main, ["jobs", "purge", job_id], env=env, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "deleted 1 failed job(s)" in confirmed.output
    assert queue.failed_job_registry.count == 0
    assert queue.fetch_job(job_id) is None
    # The provider's redelivery is accepted again; the buyer's index no longer names it.
    assert redis_conn.get(dedupe) is None
    assert redis_conn.zscore(member_events_key("purged@example.com"), job_id) is None
    replayed = runner.invoke(main, ["jobs", "replay", job_id], env=env)
    assert replayed.exit_code == 1


def test_purge_all_with_yes_deletes_every_failed_job_without_asking(
    failing: FlaskClient, queue: Queue, env: dict[str, str]
) -> None:
    for n in range(3):
        stripe_purchase(failing, f"all{n}@example.com", intent=f"pi_all_{n}")
    drain(queue)
    assert queue.failed_job_registry.count == 3

    result = CliRunner().invoke(main, ["jobs", "purge", "--all", "--yes"], env=env)

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "deleted 3 failed job(s)"
    assert queue.failed_job_registry.count == 0
    again = CliRunner().invoke(main, ["jobs", "purge", "--all"], env=env)
    assert again.exit_code == 0 and again.output.strip() == "no failed jobs"


def test_purge_without_ids_or_all_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["jobs", "purge"], env=env)
    assert result.exit_code == 2
    assert "--all" in result.output


def test_show_of_an_applied_job_lists_its_sotion_calls(
    client: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, env: dict[str, str]
) -> None:
    job_id = stripe_purchase(client, "fine@example.com", intent="pi_fine")
    drain(queue)

    result = CliRunner().invoke(main, ["jobs", "show", job_id], env=env)

    assert result.exit_code == 0, result.output
    assert "status:       applied" in result.output
    assert "attempts:     1" in result.output
    assert "sotion calls: create:paid=True" in result.output
    assert "fine@example.com" not in result.output


def test_show_of_a_parked_event_names_its_parked_job_and_deadline(
    client: FlaskClient, queue: Queue, runtime: worker_runtime.Runtime, env: dict[str, str]
) -> None:
    # A subscription naming only a customer no event has named yet: parked.
    job_id = stripe_subscription(client, "cus_parked", "sub_parked", created=T0)
    drain(queue)

    result = CliRunner().invoke(main, ["jobs", "show", job_id], env=env)

    assert result.exit_code == 0, result.output
    assert "status:       parked" in result.output
    assert "deadline:     20" in result.output
    assert "parked as:    parked-" in result.output
