"""Job functions the worker-model tests enqueue (by dotted path, as the bridge enqueues its
own) on real `bridge worker` processes and on in-process workers.

This module imports nothing of the bridge's job path at its top, so a job can tell
whether the worker imported it before the first job.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from rq import get_current_job
from rq.timeouts import JobTimeoutException

# Set by a test to let a job that swallowed its timeout go (in-process tests only).
released = threading.Event()


def report_process() -> dict[str, Any]:
    """Who runs this job: the process, its Redis connection, its Sotion session."""
    preloaded = "workers.jobs" in sys.modules and "prometheus_client" in sys.modules
    from workers import runtime

    current = runtime.current()
    session = current.sotion.transport.session  # type: ignore[attr-defined]
    # A mark on the session object itself: a forked copy of it would start again at 1.
    session.probe_jobs = getattr(session, "probe_jobs", 0) + 1
    return {
        "pid": os.getpid(),
        "preloaded": preloaded,
        "redis_client_id": current.redis.client_id(),
        "session_jobs": session.probe_jobs,
    }


def _runs(key: str) -> int:
    job = get_current_job()
    assert job is not None
    return int(job.connection.incr(key))


def time_out_first_run(key: str, seconds: float) -> int:
    """Sleep ``seconds`` on the first run (past the job's timeout), return at once on the
    next; notes in ``key:timeouts`` each JobTimeoutException that reached it."""
    runs = _runs(key)
    if runs == 1:
        try:
            time.sleep(seconds)
        except JobTimeoutException:
            job = get_current_job()
            assert job is not None
            job.connection.incr(f"{key}:timeouts")
            raise
    return runs


def swallow_timeout_first_run(key: str) -> int:
    """On the first run, catch the job's timeout and go on running (stuck, as far as the
    worker can tell) until ``released``; return at once on the next run."""
    runs = _runs(key)
    if runs == 1:
        while not released.is_set():
            try:
                released.wait(0.05)
            except JobTimeoutException:
                job = get_current_job()
                assert job is not None
                job.connection.incr(f"{key}:timeouts")
    return runs


def sleep(seconds: float) -> float:
    """Run ``seconds``."""
    time.sleep(seconds)
    return seconds
