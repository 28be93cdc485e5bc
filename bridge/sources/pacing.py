"""Pacing provider API calls: a steady rate under the provider's limit, and backing off on 429."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

# Waits after a 429 that says nothing about when to come back: 1, 2, 4 ... up to 60 s.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# How many 429s in a row a source waits out before giving up on the run.
MAX_RATE_LIMITED_TRIES = 8


class RateLimitExhaustedError(Exception):
    """The provider kept answering 429 through every back-off; try the run again later."""

    retryable = True


class Pacer:
    """Spaces calls at most ``per_minute`` a minute (one caller; thread-safe anyway)."""

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds slept so far, for reports and tests

    def wait(self) -> None:
        """Sleep until the next call is allowed, then book it."""
        with self._lock:
            now = self._clock()
            delay = self._next - now
            if delay > 0:
                self._sleep(delay)
                self.waited += delay
                now += delay
            self._next = now + self.interval

    def hold(self, seconds: float) -> None:
        """The provider asked for a pause (429): sleep it, and book nothing before its end."""
        if seconds <= 0:
            return
        with self._lock:
            self._sleep(seconds)
            self.waited += seconds
            self._next = max(self._next, self._clock() + self.interval)


def backoff_seconds(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Exponential back-off with full jitter for the ``attempt``-th 429 in a row (from 1)."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
    return ceiling / 2 + rng() * ceiling / 2
