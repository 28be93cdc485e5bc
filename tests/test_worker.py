"""The worker's supervise loop (workers/worker.py ``run``) against the real test Redis: it
starts RQ's work loop again after a Redis outage, stops on a signal, and gives up with an
error when the loop keeps quitting at once although Redis answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from rq import Queue

from bridge.cli import main
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET
from workers import runtime as worker_runtime
from workers import work_loop
from workers.work_loop import MAX_QUICK_RESTARTS, WorkerLoopError, run
from workers.worker import BridgeWorker

Loop = Callable[[BridgeWorker, int], bool]


@pytest.fixture
def loops(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Loop], list[float]]]:
    """Replace RQ's work loop with ``loop(worker, number)``; returns the waits between loops.

    The waits are recorded instead of slept, so a test of many restarts takes no time.
    """

    def install(loop: Loop) -> list[float]:
        waits: list[float] = []
        calls = [0]

        def work(self: BridgeWorker, **options: Any) -> bool:
            calls[0] += 1
            return loop(self, calls[0])

        monkeypatch.setattr(BridgeWorker, "work", work)
        clock = SimpleNamespace(monotonic=time.monotonic, sleep=waits.append)
        monkeypatch.setattr(work_loop, "time", clock)
        return waits

    yield install
    worker_runtime.reset()


def test_loop_that_keeps_quitting_while_redis_answers_ends_in_an_error(
    settings: Settings, redis_conn: redis.Redis, loops: Callable[[Loop], list[float]]
) -> None:
    numbers: list[int] = []

    def quits_at_once(worker: BridgeWorker, number: int) -> bool:
        numbers.append(number)
        return False  # no signal, no Redis error: RQ's loop just ended

    waits = loops(quits_at_once)

    with pytest.raises(WorkerLoopError, match="Redis answers"):
        run(settings)

    assert numbers == list(range(1, MAX_QUICK_RESTARTS + 2))  # 6 loops
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0]  # backing off between them, capped


def test_stop_signal_ends_the_loop_normally(
    settings: Settings, redis_conn: redis.Redis, loops: Callable[[Loop], list[float]]
) -> None:
    def stopped_by_a_signal(worker: BridgeWorker, number: int) -> bool:
        worker.stop_signalled = True
        return True

    waits = loops(stopped_by_a_signal)

    assert run(settings) is True
    assert waits == []


def test_loop_is_started_again_after_redis_went_away(
    settings: Settings, redis_conn: redis.Redis, loops: Callable[[Loop], list[float]]
) -> None:
    def outage_then_stop(worker: BridgeWorker, number: int) -> bool:
        if number <= 3:
            raise redis.ConnectionError("Connection refused")
        worker.stop_signalled = True
        return False

    waits = loops(outage_then_stop)

    assert run(settings) is False
    assert waits == [0.5, 1.0, 2.0]


def test_worker_command_reports_a_loop_that_keeps_quitting_in_one_line_and_fails(
    redis_url: str, sotion: SandboxServer, loops: Callable[[Loop], list[float]]
) -> None:
    loops(lambda worker, number: False)
    env = {
        "REDIS_URL": redis_url,
        "SOTION_API_URL": sotion.url,
        "SOTION_API_KEY": SANDBOX_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    }

    result = CliRunner().invoke(main, ["worker"], env=env)

    assert result.exit_code == 1
    assert result.exception is not None and isinstance(result.exception, SystemExit)
    # The log lines of the restarts, then one line saying why, and no traceback.
    assert result.output.strip().splitlines()[-1] == (
        "Error: the RQ work loop keeps stopping although Redis answers"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("pause", [0, 0.3])
def test_the_pubsub_thread_stops_within_a_few_seconds_of_unsubscribing(
    queue: Queue, pause: float
) -> None:
    # RQ's own thread, once it has read the confirmation of its unsubscribe before it is
    # told to stop, waits 60 s for a subscription that never comes; so did its worker.
    worker = BridgeWorker([queue], connection=queue.connection)
    worker.subscribe()
    assert worker.pubsub is not None
    time.sleep(pause)
    worker.pubsub.unsubscribe()
    time.sleep(0.3)  # the thread reads the confirmation first (the race, made certain)
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(timeout=5)  # far inside Heroku's 30 s grace; RQ's took 60
    assert not stopping.is_alive()
    assert worker.pubsub_thread is not None and not worker.pubsub_thread.is_alive()
