"""Intake: events become RQ jobs once each, atomically with their dedupe key."""

from __future__ import annotations

import json
import math
import random
import zlib
from datetime import UTC, datetime, timedelta

import redis
from rq import Queue, Retry
from rq.job import JobStatus

from bridge.events import EntitlementState, MembershipEvent
from bridge.intake import DEDUPE_PREFIX, DEDUPE_TTL_SECONDS, Intake
from bridge.queues import APPLY_EVENT_JOB
from bridge.retry import RetryPolicy
from tests.job_states import fail_for_good

POLICY = RetryPolicy(attempts=4, base_seconds=2.0, cap_seconds=900.0)


def _event(event_id: str = "evt_intake_1", provider: str = "stripe") -> MembershipEvent:
    return MembershipEvent(
        provider=provider,
        event_id=event_id,
        event_type="checkout.session.completed",
        occurred_at=1_760_000_000.0,
        email="buyer@example.com",
        customer="cus_1",
        entitlement="stripe:pi_1",
        state=EntitlementState.ACTIVE,
        products=("price_1",),
        refs={"payment_intent": "pi_1"},
        test_mode=True,
    )


def test_one_event_becomes_one_json_job(queue: Queue, redis_conn: redis.Redis) -> None:
    event = _event()
    result = Intake(queue, POLICY).submit([event])
    assert len(result.queued) == 1
    assert result.duplicates == []
    assert queue.count == 1
    assert queue.job_ids == result.queued
    job = queue.fetch_job(result.queued[0])
    assert job is not None
    assert job.func_name == APPLY_EVENT_JOB
    assert job.args[0] == event.to_json()
    assert job.meta["dedupe_key"] == "stripe:evt_intake_1"
    # Stored with the JSON serializer, never pickle.
    raw = redis_conn.hget(job.key, "data")
    assert raw is not None
    func_name, _instance, args, _kwargs = json.loads(zlib.decompress(raw))
    assert func_name == APPLY_EVENT_JOB
    assert args == [event.to_json()]


def test_job_carries_the_retry_policy(queue: Queue) -> None:
    (job_id,) = Intake(queue, POLICY).submit([_event()]).queued
    job = queue.fetch_job(job_id)
    assert job is not None
    assert job.retries_left == POLICY.attempts
    assert len(job.retry_intervals) == POLICY.attempts
    for attempt, wait in enumerate(job.retry_intervals):
        ceiling = min(POLICY.cap_seconds, POLICY.base_seconds * 2**attempt)
        assert math.ceil(ceiling / 2) <= wait <= math.ceil(ceiling)


def test_job_without_retries_when_attempts_is_zero(queue: Queue) -> None:
    (job_id,) = Intake(queue, RetryPolicy(attempts=0)).submit([_event()]).queued
    job = queue.fetch_job(job_id)
    assert job is not None
    assert not job.retries_left
    assert not job.retry_intervals


def test_duplicate_delivery_enqueues_one_job(queue: Queue) -> None:
    intake = Intake(queue, POLICY)
    first = intake.submit([_event()])
    second = intake.submit([_event()])
    assert len(first.queued) == 1
    assert second.queued == []
    assert second.duplicates == ["stripe:evt_intake_1"]
    assert queue.count == 1


def test_duplicates_within_one_submission_enqueue_one_job(queue: Queue) -> None:
    result = Intake(queue, POLICY).submit([_event(), _event()])
    assert len(result.queued) == 1
    assert result.duplicates == ["stripe:evt_intake_1"]
    assert queue.count == 1


def test_distinct_event_ids_are_both_queued(queue: Queue) -> None:
    result = Intake(queue, POLICY).submit([_event("evt_a"), _event("evt_b")])
    assert len(result.queued) == 2
    assert result.duplicates == []
    assert queue.count == 2
    payloads = {job.args[0]["event_id"] for job in queue.jobs}
    assert payloads == {"evt_a", "evt_b"}


def test_same_event_id_from_another_provider_is_not_a_duplicate(queue: Queue) -> None:
    result = Intake(queue, POLICY).submit([_event(), _event(provider="lemonsqueezy")])
    assert len(result.queued) == 2
    assert queue.count == 2


def test_dedupe_key_names_the_job_and_lives_about_thirty_days(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    (job_id,) = Intake(queue, POLICY).submit([_event()]).queued
    key = DEDUPE_PREFIX + "stripe:evt_intake_1"
    assert redis_conn.get(key) == job_id.encode()
    ttl = redis_conn.ttl(key)
    assert DEDUPE_TTL_SECONDS - 60 <= ttl <= DEDUPE_TTL_SECONDS
    assert 29 * 24 * 3600 < ttl <= 30 * 24 * 3600


def test_event_whose_job_finished_and_expired_is_a_duplicate(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    (job_id,) = intake.submit([_event()]).queued
    job = queue.fetch_job(job_id)
    assert job is not None
    job.delete()  # the result TTL ran out: the job hash is gone, the dedupe key stays
    assert queue.count == 0
    assert redis_conn.exists(DEDUPE_PREFIX + "stripe:evt_intake_1") == 1
    result = intake.submit([_event()])
    assert result.queued == []
    assert result.duplicates == ["stripe:evt_intake_1"]
    assert queue.count == 0


def test_event_whose_job_finished_is_a_duplicate(queue: Queue) -> None:
    intake = Intake(queue, POLICY)
    (job_id,) = intake.submit([_event()]).queued
    job = queue.fetch_job(job_id)
    assert job is not None
    queue.remove(job)
    job.set_status(JobStatus.FINISHED)
    result = intake.submit([_event()])
    assert result.duplicates == ["stripe:evt_intake_1"]
    assert queue.count == 0


def test_event_whose_job_waits_for_a_retry_is_a_duplicate(queue: Queue) -> None:
    intake = Intake(queue, POLICY)
    (job_id,) = intake.submit([_event()]).queued
    job = queue.fetch_job(job_id)
    assert job is not None
    queue.remove(job)
    queue.schedule_job(job, datetime.now(UTC) + timedelta(minutes=1))
    assert job.get_status() == JobStatus.SCHEDULED
    result = intake.submit([_event()])
    assert result.duplicates == ["stripe:evt_intake_1"]
    assert queue.count == 0


def test_event_whose_job_failed_for_good_is_queued_again(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    (old_id,) = intake.submit([_event()]).queued
    fail_for_good(queue, old_id)
    assert queue.failed_job_registry.get_job_ids() == [old_id]
    result = intake.submit([_event()])
    assert len(result.queued) == 1
    (new_id,) = result.queued
    assert new_id != old_id
    assert queue.job_ids == [new_id]
    assert queue.failed_job_registry.get_job_ids() == []
    assert redis_conn.get(DEDUPE_PREFIX + "stripe:evt_intake_1") == new_id.encode()


def test_event_whose_job_was_canceled_is_queued_again(queue: Queue) -> None:
    intake = Intake(queue, POLICY)
    (old_id,) = intake.submit([_event()]).queued
    job = queue.fetch_job(old_id)
    assert job is not None
    job.cancel()
    assert queue.count == 0
    result = intake.submit([_event()])
    assert len(result.queued) == 1
    assert queue.count == 1
    assert queue.canceled_job_registry.get_job_ids() == []


def test_empty_submission_touches_nothing(queue: Queue, redis_conn: redis.Redis) -> None:
    result = Intake(queue, POLICY).submit([])
    assert result.queued == []
    assert result.duplicates == []
    assert redis_conn.keys("*") == []


# -- RetryPolicy --------------------------------------------------------------------------


def test_retry_intervals_grow_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(attempts=12, base_seconds=5.0, cap_seconds=900.0)
    waits = policy.intervals(random.Random(7))
    assert len(waits) == 12
    ceilings = [min(900.0, 5.0 * 2**n) for n in range(12)]
    assert ceilings[:4] == [5.0, 10.0, 20.0, 40.0]
    assert ceilings[-1] == 900.0
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert math.ceil(ceiling / 2) <= wait <= math.ceil(ceiling)
    assert max(waits) <= 900
    # Jitter: the waits are not simply the ceilings.
    assert any(wait < math.ceil(ceiling) for wait, ceiling in zip(waits, ceilings, strict=True))


def test_retry_intervals_are_reproducible_with_a_seed_and_jittered_without() -> None:
    policy = RetryPolicy(attempts=8, base_seconds=100.0, cap_seconds=10_000.0)
    assert policy.intervals(random.Random(1)) == policy.intervals(random.Random(1))
    assert policy.intervals(random.Random(1)) != policy.intervals(random.Random(2))


def test_retry_intervals_stay_at_the_cap() -> None:
    policy = RetryPolicy(attempts=20, base_seconds=5.0, cap_seconds=60.0)
    waits = policy.intervals(random.Random(3))
    assert all(30 <= wait <= 60 for wait in waits[4:])


def test_rq_retry_carries_the_attempts_and_intervals() -> None:
    retry = POLICY.rq_retry(random.Random(5))
    assert isinstance(retry, Retry)
    assert retry.max == POLICY.attempts
    assert retry.intervals == POLICY.intervals(random.Random(5))


def test_no_rq_retry_when_attempts_is_zero() -> None:
    assert RetryPolicy(attempts=0).rq_retry() is None
