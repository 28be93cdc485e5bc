"""The email lease against the real test Redis: exclusive, renewed while held, lost by the
dead, and checked by its holder before each write."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from workers.lease import Lease, LeaseBusyError, LeaseLostError

KEY = "bridge:lock:buyer@example.com"
# Short enough for the tests to outlive it a few times, long enough for a loaded machine.
TTL = 0.6


def lease(connection: redis.Redis, *, ttl: float = TTL, wait: float = 0.0) -> Lease:
    """A lease on ``KEY``."""
    return Lease(connection, KEY, ttl=ttl, wait=wait, label="b***@example.com")


def stop_renewing(held: Lease) -> None:
    """What a SIGKILL (or a stall) does to a holder: its renewer stops, nothing gives it up."""
    held._stop.set()
    assert held._renewer is not None
    held._renewer.join(timeout=5)
    assert not held._renewer.is_alive()


def wait_until_gone(connection: redis.Redis, timeout: float = 5.0) -> None:
    """Wait for ``KEY`` to expire."""
    deadline = time.monotonic() + timeout
    while connection.exists(KEY):
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.02)


@pytest.fixture
def holders() -> Iterator[list[Lease]]:
    """Leases a test acquires by hand; released at the end if still held."""
    made: list[Lease] = []
    yield made
    for held in made:
        held.release()


def take(connection: redis.Redis, holders: list[Lease], *, ttl: float = TTL) -> Lease:
    """Acquire a lease on ``KEY`` by hand; the ``holders`` fixture releases it at the end."""
    held = lease(connection, ttl=ttl)
    held.acquire()
    holders.append(held)
    return held


def test_lease_is_exclusive_between_two_holders(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    first = take(redis_conn, holders)

    with pytest.raises(LeaseBusyError):
        lease(redis_conn).acquire()
    assert redis_conn.get(KEY) == first.token.encode()


def test_released_lease_can_be_taken_at_once(redis_conn: redis.Redis) -> None:
    with lease(redis_conn):
        pass

    assert redis_conn.exists(KEY) == 0
    with lease(redis_conn) as second:
        assert redis_conn.get(KEY) == second.token.encode()


def test_lease_of_a_holder_that_stops_renewing_frees_within_its_ttl(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    dead = take(redis_conn, holders)
    stop_renewing(dead)
    stopped = time.monotonic()

    with lease(redis_conn, wait=5) as other:
        waited = time.monotonic() - stopped
        assert redis_conn.get(KEY) == other.token.encode()

    assert waited < TTL + 0.5


def test_lease_left_in_redis_by_a_dead_process_frees_within_its_ttl(
    redis_conn: redis.Redis,
) -> None:
    redis_conn.set(KEY, "token-of-a-dead-run", px=int(TTL * 1000))
    started = time.monotonic()

    with pytest.raises(LeaseBusyError):
        lease(redis_conn).acquire()
    with lease(redis_conn, wait=5):
        waited = time.monotonic() - started

    assert waited < TTL + 0.5


def test_renewal_keeps_the_lease_held_past_its_ttl_while_the_block_runs(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    attempts: list[bool] = []
    with lease(redis_conn) as held:
        deadline = time.monotonic() + 1.5  # 2.5 TTLs
        while time.monotonic() < deadline:
            other = lease(redis_conn)
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
        with lease(redis_conn, wait=5):
            got.append(time.monotonic())

    with lease(redis_conn):
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
    take(redis_conn, holders)
    started = time.monotonic()

    with pytest.raises(LeaseBusyError) as caught:
        lease(redis_conn, wait=0.4).acquire()

    waited = time.monotonic() - started
    assert 0.4 <= waited < 1.5
    assert caught.value.retryable is True


def test_lease_taken_by_another_while_held_is_marked_lost_and_not_renewed(
    redis_conn: redis.Redis, holders: list[Lease], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.lease")
    old = take(redis_conn, holders)
    redis_conn.delete(KEY)  # its TTL ran out between two renewals (a stalled Redis, say)
    other = take(redis_conn, holders)

    time.sleep(TTL)  # past a renewal of the old holder

    assert old.lost is True
    assert other.lost is False
    assert redis_conn.get(KEY) == other.token.encode()
    assert 0 < redis_conn.pttl(KEY) <= TTL * 1000  # the old holder did not extend it
    assert "lease was lost" in caplog.text
    assert "buyer@example.com" not in caplog.text  # log lines name the label, never the key


def test_release_of_a_lost_lease_leaves_the_new_holders_lease_alone(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    old = lease(redis_conn)
    old.acquire()
    stop_renewing(old)
    wait_until_gone(redis_conn)
    other = take(redis_conn, holders)

    old.release()

    assert redis_conn.get(KEY) == other.token.encode()


# -- ensure(): the holder checks the lease before each write ------------------------------


def test_ensure_passes_while_the_lease_is_held_and_renewed(redis_conn: redis.Redis) -> None:
    with lease(redis_conn) as held:
        held.ensure()
        time.sleep(2.5 * TTL)  # only the renewals keep it
        held.ensure()

        assert held.lost is False
        assert redis_conn.get(KEY) == held.token.encode()


def test_ensure_raises_once_the_lease_expired_and_another_holder_took_it(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    stalled = take(redis_conn, holders)
    stop_renewing(stalled)  # the holder stalls past its TTL
    with lease(redis_conn, wait=5) as other:
        with pytest.raises(LeaseLostError) as caught:
            stalled.ensure()

        assert caught.value.retryable is True
        assert stalled.lost is True
        assert redis_conn.get(KEY) == other.token.encode()  # checking took nothing from it
        with pytest.raises(LeaseLostError):
            stalled.ensure()  # and it stays lost


def test_ensure_raises_once_the_lease_key_was_deleted(
    redis_conn: redis.Redis, holders: list[Lease]
) -> None:
    held = take(redis_conn, holders, ttl=30)
    held.ensure()

    redis_conn.delete(KEY)

    with pytest.raises(LeaseLostError):
        held.ensure()
    assert held.lost is True
    assert redis_conn.exists(KEY) == 0  # a lost lease is never taken back by checking it
