"""A lease in Redis: a lock that a live holder keeps renewing and a dead one loses quickly.

redis-py's ``Lock`` has a fixed timeout: long enough for the slowest job, it holds up every
other job of the email for that long after a crash. A lease is short instead (seconds) and
renewed by a thread while its holder runs, so a SIGKILLed holder frees it within one TTL,
before the dead job's own re-run starts (``workers/worker.py``: a job's heartbeat outlives
the lease). A holder that stalls past its TTL loses the lease; :meth:`Lease.ensure` tells
it so before each write it makes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

import redis

log = logging.getLogger(__name__)

# Extend the lease only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# Give the lease up only while it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
# Seconds between two tries to take a busy lease.
POLL_SECONDS = 0.05


class LeaseBusyError(Exception):
    """Another holder kept the lease for longer than we could wait; retry later."""

    retryable = True


class LeaseLostError(Exception):
    """The lease expired while held (its holder stalled); stop writing and retry later."""

    retryable = True


class _Held(ABC):
    """``with`` holds it for the block: ``acquire`` on entry, ``release`` on exit."""

    @abstractmethod
    def acquire(self) -> object:
        """Take it."""

    @abstractmethod
    def release(self) -> None:
        """Give it up."""

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Lease(_Held):
    """``with Lease(...):`` holds ``key`` for the block, renewing it every third of ``ttl``."""

    def __init__(
        self,
        connection: redis.Redis,
        key: str,
        *,
        ttl: float,
        wait: float,
        label: str = "-",
    ) -> None:
        self.redis = connection
        self.key = key
        self.label = label  # what log lines name (never the key: it holds an email)
        self.ttl_ms = int(ttl * 1000)
        self.wait = wait
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> None:
        """Take the lease, waiting up to ``wait`` seconds; LeaseBusyError when it stays busy."""
        deadline = time.monotonic() + self.wait
        while not self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            if time.monotonic() >= deadline:
                raise LeaseBusyError("another job of this email is still running")
            time.sleep(POLL_SECONDS)
        try:
            self._renewer = threading.Thread(
                target=self._renew, name=f"lease {self.label}", daemon=True
            )
            self._renewer.start()
        except BaseException:
            # A signal raised in the job (a timeout, a stop) right after the lease was
            # taken: give it back, or its renewer would keep it for the process's life.
            self.release()
            raise

    def ensure(self) -> None:
        """Raise LeaseLostError unless the lease is still ours (call before each write)."""
        if self.lost or self.redis.get(self.key) != self.token.encode():
            self.lost = True
            raise LeaseLostError(f"the lock of {self.label} expired while held; retrying")

    def release(self) -> None:
        """Stop renewing and give the lease up (a no-op if it was lost meanwhile)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.ttl_ms / 1000)
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError:
            log.warning("could not release a lease; it expires on its own lease=%s", self.label)

    def _renew(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    self.lost = True
                    log.warning("lease was lost while held lease=%s", self.label)
                    return
            except redis.RedisError:
                log.warning("could not renew a lease; retrying lease=%s", self.label)


class LeaseSet(_Held):
    """Many leases taken at once (a batch of emails), renewed by one thread.

    Keys another holder has are not waited for: :meth:`acquire` returns the ones it got,
    and the caller deals with the rest on their own (one lease each, waiting).
    """

    def __init__(self, connection: redis.Redis, keys: list[str], *, ttl: float) -> None:
        self.redis = connection
        self.keys = list(dict.fromkeys(keys))
        self.ttl_ms = int(ttl * 1000)
        self.token = uuid.uuid4().hex
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost: set[str] = set()

    def acquire(self) -> set[str]:
        """Take every free key (one round trip); returns the keys now held."""
        pipe = self.redis.pipeline(transaction=False)
        for key in self.keys:
            pipe.set(key, self.token, nx=True, px=self.ttl_ms)
        self.held = {key for key, got in zip(self.keys, pipe.execute(), strict=True) if got}
        try:
            self._renewer = threading.Thread(target=self._renew, name="lease set", daemon=True)
            self._renewer.start()
        except BaseException:
            self.release()  # as in Lease.acquire
            raise
        return set(self.held)

    def ensure(self, key: str) -> None:
        """Raise LeaseLostError unless ``key`` is still held (call before each write)."""
        if key not in self.held or key in self.lost or self.redis.get(key) != self.token.encode():
            self.lost.add(key)
            raise LeaseLostError("a lock of the batch expired while held; retrying")

    def ensure_all(self, keys: list[str]) -> None:
        """:meth:`ensure` for many keys, in one round trip."""
        values = self.redis.mget(keys) if keys else []
        for key, value in zip(keys, values, strict=True):
            if key not in self.held or key in self.lost or value != self.token.encode():
                self.lost.add(key)
                raise LeaseLostError("a lock of the batch expired while held; retrying")

    def release(self) -> None:
        """Stop renewing and give every held key up."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.ttl_ms / 1000)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in self.held:
                pipe.eval(_RELEASE, 1, key, self.token)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not release a lease set; its keys expire on their own")

    def _renew(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            held = sorted(self.held - self.lost)
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key in held:
                    pipe.eval(_RENEW, 1, key, self.token, self.ttl_ms)
                for key, renewed in zip(held, pipe.execute(), strict=True):
                    if not renewed:
                        self.lost.add(key)
            except redis.RedisError:
                log.warning("could not renew a lease set; retrying")
