"""The intake lists each queued event under its buyer and records each provider's last event."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

import redis
from rq import Queue

from bridge import activity
from bridge.events import EntitlementState, MembershipEvent
from bridge.intake import DEDUPE_TTL_SECONDS, Intake
from bridge.intake_script import LAST_EVENT_KEY, MEMBER_EVENTS_MAX, member_events_key
from bridge.retry import RetryPolicy
from tests.job_states import fail_for_good

POLICY = RetryPolicy(attempts=2, base_seconds=0)


def _event(event_id: str, email: str | None = "Buyer@Example.com") -> MembershipEvent:
    return MembershipEvent(
        provider="stripe",
        event_id=event_id,
        event_type="checkout.session.completed",
        occurred_at=1_760_000_000.0,
        email=email,
        entitlement=f"stripe:pi_{event_id}",
        state=EntitlementState.ACTIVE,
    )


def _listed(connection: redis.Redis, email: str) -> list[str]:
    return [raw.decode() for raw in connection.zrange(member_events_key(email), 0, -1)]


def test_a_queued_event_is_listed_under_its_lowercased_email_with_the_dedupe_ttl(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    before = time.time()
    (job_id,) = Intake(queue, POLICY).submit([_event("evt_1")]).queued

    key = member_events_key("buyer@example.com")
    assert key == "bridge:member-events:buyer@example.com"
    ((member, score),) = redis_conn.zrange(key, 0, -1, withscores=True)
    assert member.decode() == job_id
    assert before - 1 <= score <= time.time() + 1
    assert DEDUPE_TTL_SECONDS - 60 <= redis_conn.ttl(key) <= DEDUPE_TTL_SECONDS


def test_a_duplicate_or_an_event_without_email_is_not_listed(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    (first,) = intake.submit([_event("evt_1")]).queued
    assert intake.submit([_event("evt_1")]).duplicates == ["stripe:evt_1"]
    intake.submit([_event("evt_2", email=None)])

    assert _listed(redis_conn, "buyer@example.com") == [first]
    assert redis_conn.keys("bridge:member-events:*") == [b"bridge:member-events:buyer@example.com"]


def test_the_index_keeps_only_the_newest_events(queue: Queue, redis_conn: redis.Redis) -> None:
    intake = Intake(queue, POLICY)
    queued: list[str] = []
    for batch in range(3):
        events = [_event(f"evt_{batch}_{i}") for i in range(MEMBER_EVENTS_MAX // 2 + 10)]
        queued += intake.submit(events).queued

    listed = _listed(redis_conn, "buyer@example.com")
    assert len(listed) == MEMBER_EVENTS_MAX
    assert set(listed) <= set(queued)
    assert queued[-1] in listed and queued[0] not in listed


def test_a_delivery_records_its_provider_last_event_as_job_and_time(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    before = int(time.time())
    result = intake.receive("stripe", [_event("evt_a"), _event("evt_b")])

    raw = redis_conn.hget(LAST_EVENT_KEY, "stripe")
    assert raw is not None
    job_id, _, at = raw.decode().partition("|")
    assert job_id == result.queued[-1]
    assert before <= int(at) <= time.time() + 1

    # A redelivery is received too: the last event names the job that holds it.
    intake.receive("stripe", [_event("evt_a")])
    assert redis_conn.hget(LAST_EVENT_KEY, "stripe").decode().startswith(result.queued[0] + "|")  # type: ignore[union-attr]
    # A submit (a backfill, a bench) is no delivery: nothing recorded for it.
    intake.submit([replace(_event("evt_c"), provider="gumroad")])
    assert redis_conn.hkeys(LAST_EVENT_KEY) == [b"stripe"]


def test_a_redelivery_replacing_a_dead_job_is_listed_and_recorded(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    (dead,) = intake.receive("stripe", [_event("evt_dead")]).queued
    fail_for_good(queue, dead)

    (again,) = intake.receive("stripe", [_event("evt_dead")]).queued

    assert again != dead
    assert _listed(redis_conn, "buyer@example.com")[-1] == again
    assert redis_conn.hget(LAST_EVENT_KEY, "stripe").decode().startswith(again + "|")  # type: ignore[union-attr]


def test_a_webhook_duplicate_is_counted_in_this_hours_activity_in_the_same_call(
    queue: Queue, redis_conn: redis.Redis
) -> None:
    intake = Intake(queue, POLICY)
    intake.receive("stripe", [_event("evt_1")])
    intake.receive("stripe", [_event("evt_1"), _event("evt_1")])
    intake.submit([_event("evt_1")])  # a reconcile's, no delivery: not charted

    hour = activity.last_hours(redis_conn, datetime.now(UTC), hours=1)[0]
    assert hour.counts == {("stripe", "duplicate"): 2}
    key = activity.hour_key(datetime.now(UTC))
    assert 0 < redis_conn.ttl(key) <= activity.KEEP_SECONDS
