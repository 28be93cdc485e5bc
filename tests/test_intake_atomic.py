"""Intake's one-round-trip store (bridge/intake.py): the Lua script stores what RQ's own
enqueue stores, atomically with the dedupe key and the counters, against real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue, Retry
from rq.job import Job, JobStatus

from bridge.events import MembershipEvent
from bridge.intake import BATCH_SIZE, DEDUPE_PREFIX, Intake
from bridge.metrics import METRICS_KEY
from bridge.providers import stripe
from bridge.queues import APPLY_EVENT_JOB, FAILURE_TTL, JOB_TIMEOUT, RESULT_TTL, bridge_queue
from bridge.retry import RetryPolicy
from bridge.sotion import SotionClient
from tests.conftest import STRIPE_SECRET, drain
from tests.job_states import fail_for_good
from tests.stripe_events import encode, event, fixture, sign
from workers import runtime as worker_runtime

POLICY = RetryPolicy(attempts=4, base_seconds=2.0, cap_seconds=900.0)
EMAIL = "atomic@example.com"


def _purchase(event_id: str = "evt_atomic_1", email: str = EMAIL) -> dict[str, Any]:
    """A paid one-time Checkout Session event."""
    obj = fixture("checkout_session_completed_payment")["data"]["object"]
    obj["customer_details"]["email"] = email
    return event("checkout.session.completed", obj, event_id=event_id)


def _event(event_id: str = "evt_atomic_1", email: str = EMAIL) -> MembershipEvent:
    (parsed,) = stripe.parse(_purchase(event_id, email))
    return parsed


def _post(client: Any, payload: dict[str, Any]) -> Any:
    body = encode(payload)
    headers = {"Stripe-Signature": sign(body, STRIPE_SECRET), "Content-Type": "application/json"}
    return client.post("/webhooks/stripe", data=body, headers=headers)


# -- round trips --------------------------------------------------------------------------


class RoundTrips:
    """Counts what a client sends to the real Redis: one send is one round trip."""

    def __init__(self) -> None:
        self.count = 0

    def connection_class(self) -> type[redis.Connection]:
        """A redis-py connection class that counts its sends here."""
        trips = self

        class Counting(redis.Connection):
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                trips.count += 1
                super().send_packed_command(command, check_health)

        return Counting


@pytest.fixture
def trips() -> RoundTrips:
    """A round-trip counter."""
    return RoundTrips()


@pytest.fixture
def counted_queue(redis_url: str, redis_conn: redis.Redis, trips: RoundTrips) -> Iterator[Queue]:
    """The bridge's queue on a connection whose round trips ``trips`` counts."""
    connection = redis.Redis.from_url(redis_url, connection_class=trips.connection_class())
    yield bridge_queue(connection)
    connection.close()


def _commands(connection: redis.Redis) -> dict[str, int]:
    stats: dict[str, dict[str, int]] = connection.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


def test_a_new_event_is_stored_in_one_round_trip(
    counted_queue: Queue, trips: RoundTrips, redis_conn: redis.Redis
) -> None:
    intake = Intake(counted_queue, POLICY)
    intake.submit([_event("evt_warm")])  # connects, loads the script
    before, trips.count = _commands(redis_conn), 0

    result = intake.submit([_event()])

    assert trips.count == 1
    assert len(result.queued) == 1
    issued = {
        name: calls - before.get(name, 0)
        for name, calls in _commands(redis_conn).items()
        if calls != before.get(name, 0) and name != "info"
    }
    assert issued["evalsha"] == 1
    assert not {"watch", "multi", "exec", "eval"} & issued.keys()
    assert counted_queue.job_ids == [_job_id_of(redis_conn, "evt_warm"), result.queued[0]]


def test_a_duplicate_is_answered_in_one_round_trip(counted_queue: Queue, trips: RoundTrips) -> None:
    intake = Intake(counted_queue, POLICY)
    intake.submit([_event()])
    trips.count = 0

    result = intake.submit([_event()])

    assert trips.count == 1
    assert result.duplicates == ["stripe:evt_atomic_1"]
    assert counted_queue.count == 1


def test_an_accepted_webhook_and_its_counters_take_one_round_trip(
    app: Flask, trips: RoundTrips, redis_conn: redis.Redis
) -> None:
    bridge = app.extensions["bridge"]
    bridge.redis.connection_pool.connection_class = trips.connection_class()
    client = app.test_client()
    assert _post(client, _purchase("evt_warm")).status_code == 200
    trips.count = 0

    response = _post(client, _purchase())

    assert response.status_code == 200
    assert response.json == {"received": True, "queued": 1, "duplicates": 0, "ignored": 0}
    assert trips.count == 1
    counters = redis_conn.hgetall(METRICS_KEY)
    assert counters[b"bridge_webhooks|outcome=queued,provider=stripe"] == b"2"
    assert counters[b"bridge_events|outcome=queued,provider=stripe"] == b"2"


def _job_id_of(connection: redis.Redis, event_id: str) -> str:
    value = connection.get(DEDUPE_PREFIX + f"stripe:{event_id}")
    assert value is not None
    return value.decode()


# -- the job is RQ's own ------------------------------------------------------------------


def _snapshot(connection: redis.Redis) -> dict[str, Any]:
    """Every key RQ owns: its type, its TTL and its contents (in job hashes, the two
    timestamps RQ sets as it builds and enqueues a job replaced by a marker)."""
    found: dict[str, Any] = {}
    for raw in connection.scan_iter("rq:*"):
        key = raw.decode()
        kind = connection.type(key).decode()
        value: Any
        if kind == "hash":
            value = connection.hgetall(key)
            for stamp in (b"created_at", b"enqueued_at"):
                assert value.pop(stamp, b"").endswith(b"Z"), stamp
        elif kind == "list":
            value = connection.lrange(key, 0, -1)
        elif kind == "set":
            value = connection.smembers(key)
        else:
            value = connection.dump(key)
        found[key] = (kind, connection.ttl(key), value)
    return found


def test_the_script_stores_exactly_what_rqs_enqueue_stores(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    event_ = _event()
    (job_id,) = Intake(queue, POLICY).submit([event_]).queued
    ours = Job.fetch(job_id, connection=redis_conn, serializer=queue.serializer)
    stored = _snapshot(redis_conn)
    redis_conn.flushdb()

    # What the intake did before the script: RQ's own enqueue, same arguments.
    queue.enqueue_call(
        APPLY_EVENT_JOB,
        args=(event_.to_json(),),
        job_id=job_id,
        timeout=JOB_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        retry=Retry(max=POLICY.attempts, interval=ours.retry_intervals),
        description=f"{event_.event_type} {event_.dedupe_key}",
        meta={"dedupe_key": event_.dedupe_key},
    )
    theirs = Job.fetch(job_id, connection=redis_conn, serializer=queue.serializer)

    assert stored == _snapshot(redis_conn)
    assert set(stored) == {f"rq:job:{job_id}", "rq:queue:bridge", "rq:queues"}
    for attribute in (
        "func_name", "args", "kwargs", "description", "origin", "timeout", "result_ttl",
        "failure_ttl", "retries_left", "retry_intervals", "meta", "ttl",
    ):  # fmt: skip
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert ours.get_status(refresh=False) == theirs.get_status(refresh=False) == JobStatus.QUEUED
    assert ours.enqueued_at is not None and ours.created_at is not None


def test_a_job_the_script_queued_is_run_by_an_rq_worker(
    queue: Queue, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    (job_id,) = Intake(queue, POLICY).submit([_event()]).queued

    drain(queue)

    job = queue.fetch_job(job_id)
    assert job is not None
    assert job.get_status() == JobStatus.FINISHED
    member = sotion_api.find_member_by_email(EMAIL)
    assert member is not None and member.paid is True


# -- concurrency and dead jobs -------------------------------------------------------------


def _at_once(count: int, deliver: Callable[[], list[str]]) -> list[list[str]]:
    """Run ``deliver`` from ``count`` threads released together; what each returned."""
    barrier = threading.Barrier(count)
    outcomes: list[list[str]] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        queued = deliver()
        with lock:
            outcomes.append(queued)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_concurrent_copies_of_one_event_make_one_job(queue: Queue, redis_conn: redis.Redis) -> None:
    intake = Intake(queue, POLICY)

    outcomes = _at_once(12, lambda: intake.submit([_event()]).queued)

    assert len(outcomes) == 12
    queued = [job_id for job_ids in outcomes for job_id in job_ids]
    assert len(queued) == 1
    assert queue.job_ids == queued
    assert _job_id_of(redis_conn, "evt_atomic_1") == queued[0]


def test_concurrent_redeliveries_of_an_event_whose_job_failed_make_one_new_job(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    (old_id,) = intake.submit([_event()]).queued
    fail_for_good(queue, old_id)

    outcomes = _at_once(8, lambda: intake.submit([_event()]).queued)

    queued = [job_id for job_ids in outcomes for job_id in job_ids]
    assert len(outcomes) == 8
    assert len(queued) == 1
    assert queue.job_ids == queued
    assert _job_id_of(redis_conn, "evt_atomic_1") == queued[0]
    assert queue.fetch_job(old_id) is None
    assert queue.failed_job_registry.get_job_ids() == []


@pytest.mark.parametrize("how", ["stopped", "canceled"])
def test_a_stopped_or_canceled_job_is_replaced_by_the_redelivery(
    queue: Queue, redis_conn: redis.Redis, how: str
) -> None:
    intake = Intake(queue, POLICY)
    (old_id,) = intake.submit([_event()]).queued
    job = queue.fetch_job(old_id)
    assert job is not None
    if how == "canceled":
        job.cancel()
    else:
        queue.remove(job)
        job.set_status(JobStatus.STOPPED)

    (new_id,) = intake.submit([_event()]).queued

    assert queue.job_ids == [new_id]
    assert queue.fetch_job(old_id) is None
    assert _job_id_of(redis_conn, "evt_atomic_1") == new_id


def test_a_batch_with_one_dead_job_stores_every_event_once(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    (old_id,) = intake.submit([_event("evt_dead")]).queued
    (alive_id,) = intake.submit([_event("evt_alive")]).queued
    fail_for_good(queue, old_id)

    result = intake.submit([_event("evt_new"), _event("evt_dead"), _event("evt_alive")])

    assert len(result.queued) == 2
    assert result.duplicates == ["stripe:evt_alive"]
    assert queue.job_ids == [alive_id, *result.queued]
    assert _job_id_of(redis_conn, "evt_new") == result.queued[0]
    assert _job_id_of(redis_conn, "evt_dead") == result.queued[1]
    assert queue.fetch_job(old_id) is None


def test_more_events_than_one_script_call_takes_are_all_queued(queue: Queue) -> None:
    events = [_event(f"evt_many_{n}", f"buyer{n}@example.com") for n in range(BATCH_SIZE + 1)]

    result = Intake(queue, POLICY).submit(events)

    assert len(result.queued) == BATCH_SIZE + 1
    assert queue.count == BATCH_SIZE + 1


# -- Redis restarts and refusals ------------------------------------------------------------


def test_events_are_stored_after_redis_forgot_the_script(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    intake.submit([_event("evt_before")])
    redis_conn.script_flush()  # what a restart of Redis does to its script cache

    result = intake.submit([_event("evt_after")])

    assert len(result.queued) == 1
    assert queue.count == 2
    assert _job_id_of(redis_conn, "evt_after") == result.queued[0]


@pytest.fixture
def refusing_writes(redis_conn: redis.Redis) -> Iterator[None]:
    """The test Redis answers reads but refuses every write (no replica to write to)."""
    redis_conn.config_set("min-replicas-to-write", 1)
    yield
    redis_conn.config_set("min-replicas-to-write", 0)


def test_redis_refusing_writes_is_a_503_and_nothing_is_stored(
    app: Flask, redis_conn: redis.Redis, refusing_writes: None
) -> None:
    response = _post(app.test_client(), _purchase())

    assert response.status_code == 503
    assert response.json is not None
    assert response.json["error"]["code"] == "queue_unavailable"
    assert redis_conn.keys("*") == []


def test_counters_that_cannot_be_written_never_fail_the_delivery(
    app: Flask, queue: Queue, redis_conn: redis.Redis
) -> None:
    redis_conn.set(METRICS_KEY, "not a hash")

    response = _post(app.test_client(), _purchase())

    assert response.status_code == 200
    assert response.json is not None and response.json["queued"] == 1
    assert queue.count == 1
    assert redis_conn.get(METRICS_KEY) == b"not a hash"
