"""A clock and a sleep for pacing tests: only the injected sleep moves the clock."""

from __future__ import annotations


class FakeTime:
    """A monotonic clock that only the injected sleep moves (the pacer's and the limiter's)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
