"""Parked events (workers/parking.py) end to end: a Stripe subscription event whose buyer
is not known yet waits, parked, for an event that teaches the buyer's email; only such an
event wakes it; a provider's resend is a duplicate while it waits and repairs it once it
has failed for good.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import redis
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bridge.admin import failed_jobs
from bridge.intake import DEDUPE_PREFIX, DEDUPE_TTL_SECONDS
from bridge.providers import stripe
from bridge.queues import RESYNC_JOB
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests.conftest import drain
from tests.stripe_events import event
from tests.test_stripe_flow import (
    EMAIL,
    SUBSCRIPTION,
    T0,
    JSONObject,
    checkout_subscription,
    deliver,
    invoice,
    job_of,
    member_of,
    post,
    subscription,
)
from workers import runtime as worker_runtime
from workers.parking import PARKED_JOB_PREFIX, parked_events

ENTITLEMENT = f"stripe:{SUBSCRIPTION}"


def park_subscription(client: FlaskClient, queue: Queue) -> tuple[JSONObject, str]:
    """Deliver a customer.subscription.created nobody can tie to an email yet and run it:
    its payload and the id of the job it is parked as."""
    payload = event("customer.subscription.created", subscription(), created=T0)
    assert post(client, payload)["queued"] == 1
    drain(queue)
    (parked,) = parked_events(queue)
    assert parked.job_id.startswith(PARKED_JOB_PREFIX)
    return payload, parked.job_id


def status(queue: Queue, job_id: str) -> JobStatus:
    """A job's status as Redis has it now."""
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    return job.get_status(refresh=True)


def run_due_jobs(queue: Queue) -> None:
    """What a worker's scheduler does: enqueue the scheduled jobs that are due, run them."""
    worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    worker.work(burst=True, with_scheduler=True)


@contextmanager
def monitored(connection: redis.Redis) -> Iterator[list[str]]:
    """Every command Redis runs inside the block, in order (Redis's MONITOR)."""
    commands: list[str] = []
    ready = threading.Event()
    sentinel = "PING monitored-end"

    def watch() -> None:
        with connection.monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                if entry["command"] == sentinel:
                    return
                commands.append(entry["command"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(5)
    time.sleep(0.2)  # MONITOR is on once Redis has answered it
    try:
        yield commands
    finally:
        connection.execute_command(*sentinel.split())
        watcher.join(5)


def transactions(commands: list[str]) -> list[list[str]]:
    """The commands of each MULTI ... EXEC block, in order."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for command in commands:
        if command == "MULTI":
            current = []
        elif command == "EXEC" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(command)
    return blocks


# -- what wakes a parked event ------------------------------------------------------------


def test_event_that_teaches_no_email_neither_wakes_nor_fails_the_parked_event(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    _, parked_id = park_subscription(client, queue)

    # A failed renewal naming the same customer and subscription, but no email.
    deliver(client, "invoice.payment_failed", invoice(email=None, paid=False), created=T0 + 10)
    drain(queue)

    assert [parked.job_id for parked in parked_events(queue)] == [parked_id]
    assert status(queue, parked_id) == JobStatus.SCHEDULED
    assert failed_jobs(queue) == []
    assert sotion_api.find_member_by_email(EMAIL) is None

    # The checkout names the buyer: that wakes it, and it applies.
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0 + 20)
    drain(queue)

    assert parked_events(queue) == []
    assert status(queue, parked_id) == JobStatus.FINISHED
    assert member_of(sotion_api).paid is True
    assert runtime.store.entitlements(EMAIL)[ENTITLEMENT].products  # the subscription's


def test_waking_moves_the_parked_job_to_the_queue_in_one_transaction(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
) -> None:
    _, parked_id = park_subscription(client, queue)
    (checkout,) = stripe.parse(
        event("checkout.session.completed", checkout_subscription(), created=T0 + 20)
    )
    runtime.store.learn(checkout, EMAIL, ENTITLEMENT)  # the checkout's job got this far
    scheduled = queue.scheduled_job_registry.key

    with monitored(redis_conn) as commands:
        woken = runtime.parking.wake(checkout)

    assert woken == [parked_id]
    moves = [block for block in transactions(commands) if f"ZREM {scheduled} {parked_id}" in block]
    assert len(moves) == 1, commands
    (move,) = moves
    assert f"LPUSH {queue.key} {parked_id}" in move, move  # at the front of the queue
    assert any(c.startswith("SREM") and c.endswith(parked_id) for c in move), move
    assert status(queue, parked_id) == JobStatus.QUEUED
    assert parked_id not in queue.scheduled_job_registry.get_job_ids(cleanup=False)

    assert runtime.parking.wake(checkout) == []  # woken once only
    assert queue.job_ids == [parked_id]


# -- a provider's resend -------------------------------------------------------------------


def test_resend_of_a_parked_event_is_a_duplicate_while_it_waits(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
) -> None:
    payload, parked_id = park_subscription(client, queue)
    dedupe = f"{DEDUPE_PREFIX}stripe:{payload['id']}"

    assert redis_conn.get(dedupe) == parked_id.encode()  # the resend finds the parked job
    assert 0 < redis_conn.ttl(dedupe) <= DEDUPE_TTL_SECONDS  # and it is still forgotten

    answer = post(client, payload)

    assert (answer["queued"], answer["duplicates"]) == (0, 1)
    assert queue.count == 0
    assert [parked.job_id for parked in parked_events(queue)] == [parked_id]


def test_resend_of_a_parked_event_that_failed_at_its_deadline_is_accepted_and_applied(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    settings: Settings,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
) -> None:
    # Parked for one second, and nothing names the buyer in that time.
    worker_runtime.configure(dataclasses.replace(settings, park_hours=1 / 3600), redis_conn)
    payload, parked_id = park_subscription(client, queue)
    (parked,) = parked_events(queue)
    assert parked.deadline is not None
    while time.time() < parked.deadline.timestamp() + 0.05:
        time.sleep(0.05)
    run_due_jobs(queue)
    assert status(queue, parked_id) == JobStatus.FAILED
    reasons = {failed.id: failed.reason for failed in failed_jobs(queue)}
    assert "no event named the buyer" in reasons[parked_id]

    # The buyer becomes known, then Stripe resends the event: it is accepted again.
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0 + 20)
    drain(queue)
    answer = post(client, payload)
    drain(queue)

    assert answer["queued"] == 1
    resent = job_of(queue, str(payload["id"]))
    assert resent.id != parked_id
    assert resent.get_status() == JobStatus.FINISHED
    assert runtime.store.entitlements(EMAIL)[ENTITLEMENT].products  # the subscription's
    assert member_of(sotion_api).paid is True


# -- listing -------------------------------------------------------------------------------


def test_parked_events_lists_only_parked_jobs_however_many_retries_are_scheduled_before(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
) -> None:
    _, parked_id = park_subscription(client, queue)
    # Jobs waiting for a retry share the scheduled registry, due long before the parked one.
    soon = datetime.now(UTC) + timedelta(minutes=5)
    for number in range(3):
        queue.enqueue_at(soon, RESYNC_JOB, f"retrying{number}@example.com")

    listed = parked_events(queue, limit=1)

    assert [parked.job_id for parked in listed] == [parked_id]
    assert len(queue.scheduled_job_registry.get_job_ids(cleanup=False)) == 4
