"""The email lease against the real test Redis: exclusive, renewed while held, lost by the dead."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from workers.lease import Lease, LeaseBusyError

KEY = "bridge:lock:buyer@example.com"
# Short enough for the tests to outlive it a few times, long enough for a loaded machine.
TTL = 0.6


def lease(
    connection: redis.Redis, *, holder: str | None = None, ttl: float = TTL, wait: float = 0.0
) -> Lease:
    """A lease on ``KEY``."""
    return Lease(connection, KEY, ttl=ttl, wait=wait, holder=holder, label="b***@example.com")


def stop_renewing(held: Lease) -> None:
    """What a SIGKILL does to a holder: its renewer stops, nothing gives the lease up."""
    held._stop.set()
    assert held._renewer is not None
    held._renewer.join(timeout=5)
    assert not held._renewer.is_alive()


@pytest.fixture
def holders() -> Iterator[list[Lease]]:
    """Leases a test acquires by hand; released at the end if still held."""
    made: list[Lease] = []
    yield made
    for held in made:
        held.release()


def test_lease_is_exclusive_between_two_holders(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    first = lease(redis_conn, holder="job-1")
    first.acquire()
    holders.append(first)

    with pytest.raises(LeaseBusyError):
        lease(redis_conn, holder="job-2").acquire()
    with pytest.raises(LeaseBusyError):
        lease(redis_conn).acquire()  # an anonymous holder too
    assert redis_conn.get(KEY) == first.token.encode()


def test_released_lease_can_be_taken_at_once(redis_conn: redis.Redis) -> None:
    with lease(redis_conn, holder="job-1"):
        pass

    assert redis_conn.exists(KEY) == 0
    with lease(redis_conn, holder="job-2") as second:
        assert redis_conn.get(KEY) == second.token.encode()


def test_same_holder_name_takes_the_lease_over_at_once(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    # A job's dead run left the lease; the job's re-run has the same name.
    dead = lease(redis_conn, holder="job-1", ttl=30)
    dead.acquire()
    holders.append(dead)
    stop_renewing(dead)

    started = time.monotonic()
    with lease(redis_conn, holder="job-1", ttl=30) as rerun:
        assert time.monotonic() - started < 1
        assert redis_conn.get(KEY) == rerun.token.encode()
        assert rerun.token != dead.token

    assert redis_conn.exists(KEY) == 0  # the re-run gave it up


def test_takeover_leaves_the_new_run_holding_when_the_old_one_releases(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    old = lease(redis_conn, holder="job-1", ttl=30)
    old.acquire()
    holders.append(old)
    rerun = lease(redis_conn, holder="job-1", ttl=30)
    rerun.acquire()
    holders.append(rerun)

    old.release()

    assert redis_conn.get(KEY) == rerun.token.encode()


def test_holder_name_that_only_starts_like_another_does_not_take_it_over(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    held = lease(redis_conn, holder="job-10")
    held.acquire()
    holders.append(held)

    with pytest.raises(LeaseBusyError):
        lease(redis_conn, holder="job-1").acquire()
    assert redis_conn.get(KEY) == held.token.encode()


def test_lease_of_a_holder_that_stops_renewing_frees_within_its_ttl(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    dead = lease(redis_conn, holder="job-1")
    dead.acquire()
    holders.append(dead)
    stop_renewing(dead)
    stopped = time.monotonic()

    with lease(redis_conn, holder="job-2", wait=5) as other:
        waited = time.monotonic() - stopped
        assert redis_conn.get(KEY) == other.token.encode()

    assert waited < TTL + 0.5


def test_lease_left_in_redis_by_a_dead_process_frees_within_its_ttl(
    redis_conn: redis.Redis,
) -> None:
    redis_conn.set(KEY, "job-dead|token", px=int(TTL * 1000))
    started = time.monotonic()

    with pytest.raises(LeaseBusyError):
        lease(redis_conn, holder="job-2").acquire()
    with lease(redis_conn, holder="job-2", wait=5):
        waited = time.monotonic() - started

    assert waited < TTL + 0.5


def test_renewal_keeps_the_lease_held_past_its_ttl_while_the_block_runs(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    attempts: list[bool] = []
    with lease(redis_conn, holder="job-1") as held:
        deadline = time.monotonic() + 1.5  # 2.5 TTLs
        while time.monotonic() < deadline:
            other = lease(redis_conn, holder="job-2")
            try:
                other.acquire()
            except LeaseBusyError:
                attempts.append(False)
            else:
                holders.append(other)
                attempts.append(True)
                break
            time.sleep(0.1)
        assert redis_conn.get(KEY) == held.token.encode()
        assert 0 < redis_conn.pttl(KEY) <= TTL * 1000
        assert held.lost is False

    assert attempts and not any(attempts)
    assert redis_conn.exists(KEY) == 0


def test_waiting_holder_gets_the_lease_once_the_block_ends(redis_conn: redis.Redis) -> None:
    got: list[float] = []

    def wait_for_it() -> None:
        with lease(redis_conn, holder="job-2", wait=5):
            got.append(time.monotonic())

    with lease(redis_conn, holder="job-1"):
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(1.0)  # past the TTL: only the renewal keeps the waiter out
        assert got == []
        released = time.monotonic()
    waiter.join(timeout=10)

    assert len(got) == 1 and got[0] >= released


def test_busy_lease_raises_after_waiting_about_wait(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    held = lease(redis_conn, holder="job-1")
    held.acquire()
    holders.append(held)
    started = time.monotonic()

    with pytest.raises(LeaseBusyError) as caught:
        lease(redis_conn, holder="job-2", wait=0.4).acquire()

    waited = time.monotonic() - started
    assert 0.4 <= waited < 1.5
    assert caught.value.retryable is True


def test_lease_taken_over_while_held_is_marked_lost_and_not_renewed(
    redis_conn: redis.Redis, holders: list[Lease], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.lease")
    old = lease(redis_conn, holder="job-1")
    old.acquire()
    holders.append(old)
    rerun = lease(redis_conn, holder="job-1")
    rerun.acquire()
    holders.append(rerun)

    time.sleep(TTL)  # past a renewal of the old run

    assert old.lost is True
    assert rerun.lost is False
    assert redis_conn.get(KEY) == rerun.token.encode()
    assert "lease was lost" in caplog.text
    assert "buyer@example.com" not in caplog.text  # log lines name the label, never the key
