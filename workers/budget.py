"""One Sotion rate budget shared by every worker, fed by the ``X-RateLimit-*`` headers.

Each call takes one unit from the budget in Redis before it is sent; when the budget is
spent, the caller waits for the window to reset instead of sending and collecting a 429.
Every response refreshes the budget with what Sotion reports, so N workers never cause
a 429 storm.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from bridge.sotion import RateLimit, RateLimitedError

BUDGET_KEY = "bridge:sotion:budget"
# Never sleep inside a job longer than this: beyond it, the job is retried later.
MAX_INLINE_WAIT_SECONDS = 30.0

# Atomically take one unit: returns {remaining_after, reset_at}, or nil when unknown.
# When the window has passed, a new one opens with the last known limit (until a response
# tells the real numbers), so workers do not all rush in while the budget is unknown.
_TAKE = """
local remaining = redis.call('HGET', KEYS[1], 'remaining')
local reset_at = redis.call('HGET', KEYS[1], 'reset_at')
local limit = redis.call('HGET', KEYS[1], 'limit')
if not remaining or not reset_at then return nil end
if tonumber(reset_at) <= tonumber(ARGV[1]) then
  if not limit then
    redis.call('DEL', KEYS[1])
    return nil
  end
  reset_at = tostring(tonumber(ARGV[1]) + 1)
  redis.call('HSET', KEYS[1], 'remaining', limit, 'reset_at', reset_at)
end
local left = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
return {left, reset_at}
"""

# Atomically record a response's headers: a later window replaces the budget; within the
# same window the count only goes down (responses can arrive out of order).
_RECORD = """
local reset_at = tonumber(redis.call('HGET', KEYS[1], 'reset_at') or '0')
local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '-1')
local new_reset = tonumber(ARGV[2])
local new_remaining = tonumber(ARGV[1])
if new_reset > reset_at or (new_reset == reset_at and new_remaining < remaining) then
  redis.call('HSET', KEYS[1], 'remaining', ARGV[1], 'reset_at', ARGV[2])
end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'limit', ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
# The budget is forgotten this long after its last update (a stale limit is not kept).
BUDGET_TTL_SECONDS = 3600


class SharedBudget:
    """The Sotion rate budget in Redis."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float = MAX_INLINE_WAIT_SECONDS,
    ) -> None:
        self.redis = connection
        self._take = connection.register_script(_TAKE)
        self._record = connection.register_script(_RECORD)
        self._clock = clock
        self._sleep = sleep
        self.max_wait = max_wait

    def record(self, rate_limit: RateLimit) -> None:
        """Store what a response said about the window (the transport's listener)."""
        if rate_limit.remaining is None or rate_limit.reset_at is None:
            return
        limit = "" if rate_limit.limit is None else str(rate_limit.limit)
        self._record(
            keys=[BUDGET_KEY],
            args=[rate_limit.remaining, int(rate_limit.reset_at), limit, BUDGET_TTL_SECONDS],
        )

    def acquire(self) -> None:
        """Take one unit; wait for the reset when none is left (raise if that is too long)."""
        now = self._clock()
        taken = self._take(keys=[BUDGET_KEY], args=[now])
        if taken is None:
            return
        left, reset_at = int(taken[0]), float(taken[1])
        if left >= 0:
            return
        wait = reset_at - now
        if wait > self.max_wait:
            raise RateLimitedError(
                "Shared Sotion budget is spent", reset_at=reset_at, retry_after=wait, status=None
            )
        self._sleep(max(wait, 0.0))
