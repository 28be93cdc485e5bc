"""Pacing provider API calls: a steady rate under the provider's limit, and backing off on 429."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Waits after a 429 that says nothing about when to come back: 1, 2, 4 ... up to 60 s.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# How many 429s in a row a source waits out before giving up on the run.
MAX_RATE_LIMITED_TRIES = 8


class RateLimitExhaustedError(Exception):
    """The provider kept answering 429 through every back-off; try the run again later."""

    retryable = True


class RateLimited(Exception):
    """What a send function raises for a 429; ``retry_after``: the wait asked for, if any."""

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("429")
        self.retry_after = retry_after


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


def paced_call(
    pacer: Pacer, send: Callable[[], T], what: str, *, max_wait: float = BACKOFF_MAX_SECONDS
) -> tuple[T, int]:
    """``send()`` at the pacer's rate, its 429s (``RateLimited``) waited out: the wait the
    provider asked for (capped at ``max_wait``), else a jittered back-off. Returns the
    result and the calls made; RateLimitExhaustedError after MAX_RATE_LIMITED_TRIES 429s
    in a row (``what`` names the call in its message)."""
    for attempt in range(1, MAX_RATE_LIMITED_TRIES + 1):
        pacer.wait()
        try:
            return send(), attempt
        except RateLimited as exc:
            if attempt == MAX_RATE_LIMITED_TRIES:
                raise RateLimitExhaustedError(
                    f"{what} answered 429 {attempt} times in a row"
                ) from exc
            wait = exc.retry_after if exc.retry_after is not None else backoff_seconds(attempt)
            pacer.hold(min(wait, max_wait))
    raise AssertionError("unreachable")  # the loop returns or raises


def backoff_seconds(attempt: int, *, rng: Callable[[], float] = random.random) -> float:
    """Exponential back-off with full jitter for the ``attempt``-th 429 in a row (from 1)."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
    return ceiling / 2 + rng() * ceiling / 2
