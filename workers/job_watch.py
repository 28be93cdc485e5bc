"""A thread beside one running job: what a forking worker's parent does while its horse
runs, for a worker that runs its jobs itself (``workers/worker.py``).

It heartbeats the job every ``every`` seconds, so a worker that dies mid-job has its job
recovered within seconds, and once the job has run ``stuck_after`` seconds it calls
``on_stuck`` (the worker exits: the job is stuck where its timeout cannot reach it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


class JobWatch:
    """Watches one job from ``start()`` to ``stop()``."""

    def __init__(
        self,
        job_id: str,
        *,
        beat: Callable[[], None],
        on_stuck: Callable[[float], None],
        every: float,
        stuck_after: float | None,
    ) -> None:
        self._job_id = job_id
        self._beat = beat
        self._on_stuck = on_stuck
        self._every = every
        self._started = time.monotonic()
        self._stuck_at = None if stuck_after is None else self._started + stuck_after
        self._stopped = threading.Event()
        # Held while a heartbeat is sent: stop() waits for it, so none lands after the job.
        self._sending = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"job {job_id}", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the job is over); returns once no heartbeat is being sent."""
        self._stopped.set()
        with self._sending:
            pass

    def _run(self) -> None:
        while True:
            wait = self._every
            if self._stuck_at is not None:
                wait = max(min(wait, self._stuck_at - time.monotonic()), 0.0)
            if self._stopped.wait(wait):
                return
            with self._sending:
                if self._stopped.is_set():
                    return
                if self._stuck_at is not None and time.monotonic() >= self._stuck_at:
                    self._stuck_at = None  # (on_stuck does not return, but once is enough)
                    self._on_stuck(time.monotonic() - self._started)
                try:
                    self._beat()
                except redis.RedisError as exc:  # Redis is away: the job's own calls will say
                    log.warning("heartbeat failed job=%s (%s)", self._job_id, type(exc).__name__)
