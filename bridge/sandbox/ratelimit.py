"""Fixed-window request budgets: the per-key API limit and the login-link limits."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.sandbox.errors import RateLimitedError

# What the headers advertise when no limit is configured: generous, and never enforced.
UNLIMITED_NOMINAL_LIMIT = 1000
# Window used for the advertised reset time when no limit is configured.
UNLIMITED_NOMINAL_WINDOW = 60.0
# Sotion's documented login-link budgets, both per minute.
LOGIN_LINKS_PER_MEMBER = 5
LOGIN_LINKS_PER_SITE = 50
LOGIN_LINK_WINDOW = 60.0


@dataclass(frozen=True)
class RateLimit:
    """A budget of `limit` requests per `window` seconds."""

    limit: int
    window: float

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.window > 0 or not math.isfinite(self.window):
            raise ValueError(f"rate limit needs limit >= 1 and window > 0, got {self}")

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse "N/S" (N requests per S seconds), e.g. "100/10"."""
        hint = f"rate limit must look like 'N/S' (requests/seconds), e.g. '100/10'; got {text!r}"
        count, sep, seconds = text.strip().partition("/")
        if not sep:
            raise ValueError(hint)
        try:
            limit = int(count)
            window = float(seconds)
        except ValueError as exc:
            raise ValueError(hint) from exc
        if limit < 1 or not window > 0 or not math.isfinite(window):
            raise ValueError(f"{hint} (both numbers must be positive)")
        return cls(limit, window)


@dataclass(frozen=True)
class Quota:
    """The state of one key's current window, as reported in X-RateLimit-* headers."""

    limit: int
    remaining: int
    reset: int
    retry_after: int
    allowed: bool = True

    def headers(self) -> dict[str, str]:
        """The X-RateLimit-* headers describing this quota."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def exhausted(self) -> Quota:
        """The same window reported as spent (for injected 429s)."""
        return Quota(self.limit, 0, self.reset, self.retry_after, allowed=False)


class FixedWindowLimiter:
    """Counts requests per key in fixed windows aligned on multiples of the window length."""

    def __init__(self, rate: RateLimit | None, clock: Callable[[], float] = time.time) -> None:
        self._rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    @property
    def rate(self) -> RateLimit | None:
        """The enforced budget, or None when unlimited."""
        return self._rate

    def hit(self, key: str) -> Quota:
        """Count one request for `key`; the quota says whether it was allowed."""
        return self._count(key, consume=True)

    def peek(self, key: str) -> Quota:
        """The quota for `key` without counting a request."""
        return self._count(key, consume=False)

    def reset(self) -> None:
        """Forget every window."""
        with self._lock:
            self._windows.clear()

    def _count(self, key: str, *, consume: bool) -> Quota:
        now = self._clock()
        if self._rate is None:
            start = math.floor(now / UNLIMITED_NOMINAL_WINDOW) * UNLIMITED_NOMINAL_WINDOW
            end = start + UNLIMITED_NOMINAL_WINDOW
            return Quota(
                UNLIMITED_NOMINAL_LIMIT, UNLIMITED_NOMINAL_LIMIT, math.ceil(end), _wait(end, now)
            )
        limit, window = self._rate.limit, self._rate.window
        start = math.floor(now / window) * window
        end = start + window
        with self._lock:
            window_start, used = self._windows.get(key, (start, 0))
            if window_start != start:
                used = 0
            allowed = used < limit
            if consume and allowed:
                used += 1
                self._windows[key] = (start, used)
        return Quota(limit, max(0, limit - used), math.ceil(end), _wait(end, now), allowed)


class LoginLinkLimiter:
    """Sotion's documented login-link budgets: 5 per member and 50 per site, per minute."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._per_member = FixedWindowLimiter(
            RateLimit(LOGIN_LINKS_PER_MEMBER, LOGIN_LINK_WINDOW), clock
        )
        self._per_site = FixedWindowLimiter(
            RateLimit(LOGIN_LINKS_PER_SITE, LOGIN_LINK_WINDOW), clock
        )

    def acquire(self, member_id: str) -> None:
        """Spend one login link for `member_id`, or raise RateLimitedError."""
        # One lock around peek-then-hit so a refused link never spends the other budget.
        with self._lock:
            member = self._per_member.peek(member_id)
            if not member.allowed:
                raise RateLimitedError("Too many login links for this member", member.retry_after)
            site = self._per_site.peek("site")
            if not site.allowed:
                raise RateLimitedError("Too many login links for this site", site.retry_after)
            self._per_member.hit(member_id)
            self._per_site.hit("site")

    def reset(self) -> None:
        """Forget every window."""
        with self._lock:
            self._per_member.reset()
            self._per_site.reset()


def _wait(end: float, now: float) -> int:
    # Retry-After is whole seconds and must never tell a client to retry immediately.
    return max(1, math.ceil(end - now))
