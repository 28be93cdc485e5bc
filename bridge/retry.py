"""The retry policy of jobs: exponential backoff with jitter, carried out by RQ's retries."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rq import Retry


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` retries, the n-th after about ``base * 2**n`` seconds (capped)."""

    attempts: int = 10
    base_seconds: float = 5.0
    cap_seconds: float = 900.0

    def intervals(self, rng: random.Random | None = None) -> list[int]:
        """The waits before each retry, with "equal jitter" (half fixed, half random).

        Jitter spreads the retries of many jobs that failed together (an outage), so
        they do not all hit Sotion again in the same second.
        """
        chooser = rng or random.Random()
        waits = []
        for attempt in range(self.attempts):
            ceiling = min(self.cap_seconds, self.base_seconds * 2**attempt)
            waits.append(math.ceil(ceiling / 2 + chooser.uniform(0, ceiling / 2)))
        return waits

    def rq_retry(self, rng: random.Random | None = None) -> Retry | None:
        """The RQ ``Retry`` for one job (None when retries are off)."""
        if self.attempts < 1:
            return None
        return Retry(max=self.attempts, interval=self.intervals(rng))
