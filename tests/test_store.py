"""The worker's Redis store: member records (with who set what) and the email lock."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from workers import store as store_module
from workers import worker as worker_module
from workers.lease import LeaseBusyError, LeaseLostError
from workers.records import MemberRecord
from workers.store import PREFIX, Store

EMAIL = "buyer@example.com"
MEMBER_ID = "00000000-0000-4000-8000-000000000001"


def test_member_record_of_an_unknown_email_is_empty(redis_conn: redis.Redis) -> None:
    assert Store(redis_conn).member_record(EMAIL) == MemberRecord()
    assert MemberRecord() == MemberRecord(
        id=None, bridge_blocked=False, bridge_paid=False, groups=frozenset()
    )


def test_member_record_survives_a_save(redis_conn: redis.Redis) -> None:
    store = Store(redis_conn)
    record = MemberRecord(
        id=MEMBER_ID, bridge_blocked=True, bridge_paid=True, groups=frozenset({"g_b", "g_a"})
    )

    store.save_member_record(EMAIL, record)

    assert store.member_record(EMAIL) == record


def test_member_record_saved_without_an_id_forgets_the_cached_one(
    redis_conn: redis.Redis,
) -> None:
    store = Store(redis_conn)
    store.save_member_record(EMAIL, MemberRecord(id=MEMBER_ID, bridge_paid=True))

    store.save_member_record(EMAIL, MemberRecord(bridge_paid=True))

    assert store.member_record(EMAIL) == MemberRecord(bridge_paid=True)


def test_member_record_written_before_paid_was_tracked_reads_as_bridge_paid(
    redis_conn: redis.Redis,
) -> None:
    # What the previous release wrote: no bridge_paid field (the bridge set paid then).
    redis_conn.hset(
        f"{PREFIX}member:{EMAIL}",
        mapping={"id": MEMBER_ID, "bridge_blocked": "0", "groups": '["g_a"]'},
    )

    assert Store(redis_conn).member_record(EMAIL) == MemberRecord(
        id=MEMBER_ID, bridge_blocked=False, bridge_paid=True, groups=frozenset({"g_a"})
    )


def test_member_record_saying_someone_else_paid_them_reads_so(redis_conn: redis.Redis) -> None:
    store = Store(redis_conn)
    store.save_member_record(EMAIL, MemberRecord(id=MEMBER_ID, bridge_paid=False))

    assert store.member_record(EMAIL).bridge_paid is False


def test_email_lock_yields_the_lease_it_holds_on_the_emails_lock_key(
    redis_conn: redis.Redis,
) -> None:
    lock = f"{PREFIX}lock:{EMAIL}"

    with Store(redis_conn).email_lock(EMAIL) as lease:
        assert redis_conn.get(lock) == lease.token.encode()
        assert 0 < redis_conn.pttl(lock) <= store_module.LOCK_TIMEOUT_SECONDS * 1000
        lease.ensure()  # still ours: writes may go ahead

    assert redis_conn.exists(lock) == 0


def test_email_lock_whose_lease_was_lost_refuses_the_next_write(redis_conn: redis.Redis) -> None:
    lock = f"{PREFIX}lock:{EMAIL}"
    with Store(redis_conn).email_lock(EMAIL) as lease:
        redis_conn.delete(lock)  # expired while its holder stalled
        redis_conn.set(lock, "another-holders-token")

        with pytest.raises(LeaseLostError):
            lease.ensure()

    assert redis_conn.get(lock) == b"another-holders-token"  # leaving it took nothing


def test_email_lock_left_by_a_dead_run_is_waited_out_not_taken_over(
    redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dead run's lease, as it left it: nobody renews it, it expires on its own.
    monkeypatch.setattr(store_module, "LOCK_WAIT_SECONDS", 5)
    lock = f"{PREFIX}lock:{EMAIL}"
    redis_conn.set(lock, "dead-run", px=600)
    started = time.monotonic()

    with Store(redis_conn).email_lock(EMAIL) as lease:
        waited = time.monotonic() - started
        assert redis_conn.get(lock) == lease.token.encode()

    assert 0.4 <= waited < 2


def test_email_lock_held_by_another_job_is_busy_after_the_wait(
    redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "LOCK_WAIT_SECONDS", 0.3)
    store = Store(redis_conn)
    entered = threading.Event()
    leave = threading.Event()

    def hold() -> None:
        with store.email_lock(EMAIL):
            entered.set()
            leave.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(5)
        with pytest.raises(LeaseBusyError), store.email_lock(EMAIL):
            pass
    finally:
        leave.set()
        holder.join(5)


def test_email_locks_of_two_emails_do_not_wait_for_each_other(redis_conn: redis.Redis) -> None:
    store = Store(redis_conn)
    with store.email_lock(EMAIL):
        started = time.monotonic()
        with store.email_lock("other@example.com"):
            assert time.monotonic() - started < 1


def test_a_waiting_job_outlasts_a_dead_holders_lease() -> None:
    # Otherwise a crash would cost every job waiting for the email a retry.
    assert store_module.LOCK_WAIT_SECONDS > store_module.LOCK_TIMEOUT_SECONDS


def test_a_dead_holders_lease_expires_before_its_job_can_run_again() -> None:
    # A killed job runs again only once its execution's heartbeat has expired, at least
    # HEARTBEAT_GRACE_SECONDS after the death; its lease is gone by then (nothing takes
    # a lease over any more, so a longer lease would hold up the re-run).
    assert store_module.LOCK_TIMEOUT_SECONDS <= worker_module.HEARTBEAT_GRACE_SECONDS
