"""Redis storage of the worker side: ledgers, learned aliases, member cache, email locks.

Keys (all under ``bridge:``):
- ``ledger:{email}``: hash, entitlement key -> Entitlement JSON
- ``member:{email}``: hash, ``id`` (cached Sotion id), ``bridge_blocked``, ``groups``
- ``email:{provider}:{ref}``: the email a customer/charge/invoice id belongs to
- ``owner:{entitlement}``: the email whose ledger holds an entitlement (fixed at first sight)
- ``entitlement:{provider}:{ref}``: the entitlement a payment/charge/invoice belongs to
- ``lock:{email}``: the per-email lock that serializes Sotion calls for one member
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis
from redis.exceptions import LockError
from rq.utils import as_text

from bridge.events import MembershipEvent
from bridge.ledger import Entitlement

PREFIX = "bridge:"
# Learned aliases are kept for a year: refunds and disputes can come months later.
ALIAS_TTL_SECONDS = 365 * 24 * 3600
# A lock outlives a crashed holder by at most this long.
LOCK_TIMEOUT_SECONDS = 120
# How long a job waits for another job of the same email before retrying later.
LOCK_WAIT_SECONDS = 30
# The references that identify an entitlement's payments (not the customer).
PAYMENT_REFS = (
    "subscription",
    "invoice",
    "payment_intent",
    "charge",
    "checkout_session",
    "order",
    "sale",
)


class LockBusyError(Exception):
    """Another job holds this email's lock for too long; retry later."""

    retryable = True


class Store:
    """Typed access to the worker's Redis keys."""

    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection

    # -- ledger --------------------------------------------------------------------

    def entitlements(self, email: str) -> dict[str, Entitlement]:
        """Every entitlement of an email, by key."""
        raw = self.redis.hgetall(f"{PREFIX}ledger:{email}")
        return {
            as_text(key): Entitlement.from_json(json.loads(value)) for key, value in raw.items()
        }

    def save_entitlement(self, email: str, entitlement: Entitlement) -> None:
        """Store one entitlement (the caller holds the email's lock)."""
        self.redis.hset(
            f"{PREFIX}ledger:{email}", entitlement.key, json.dumps(entitlement.to_json())
        )

    def delete_entitlement(self, email: str, key: str) -> None:
        """Drop an entitlement folded into another (the caller holds the email's lock)."""
        self.redis.hdel(f"{PREFIX}ledger:{email}", key)

    # -- aliases -------------------------------------------------------------------

    def learn(self, event: MembershipEvent, email: str | None, entitlement: str | None) -> None:
        """Remember which email and entitlement the event's ids belong to."""
        pipe = self.redis.pipeline(transaction=False)
        refs = dict(event.refs)
        if email is not None:
            if event.customer:
                pipe.set(
                    self._email_key(event.provider, event.customer), email, ex=ALIAS_TTL_SECONDS
                )
            for ref in refs.values():
                pipe.set(self._email_key(event.provider, ref), email, ex=ALIAS_TTL_SECONDS)
        if entitlement is not None:
            for name in PAYMENT_REFS:
                if name in refs:
                    pipe.set(
                        self._entitlement_key(event.provider, refs[name]),
                        entitlement,
                        ex=ALIAS_TTL_SECONDS,
                    )
        pipe.execute()

    def claim_owner(self, entitlement: str, email: str) -> str:
        """The email that owns an entitlement: the first one ever recorded for it.

        Later events about the same purchase may name another address (a renewal
        invoice without the checkout's email override, a customer who changed their
        email); the purchase stays in one ledger, so ending it ends it everywhere.
        """
        key = f"{PREFIX}owner:{entitlement}"
        self.redis.set(key, email, nx=True, ex=ALIAS_TTL_SECONDS)
        owner = self.redis.get(key)
        return as_text(owner) if owner is not None else email

    def owner_of(self, entitlement: str) -> str | None:
        """The email that owns an entitlement, if one was recorded."""
        owner = self.redis.get(f"{PREFIX}owner:{entitlement}")
        return as_text(owner) if owner is not None else None

    def email_for(self, provider: str, ref: str) -> str | None:
        """The email learned for a customer or payment id."""
        value = self.redis.get(self._email_key(provider, ref))
        return as_text(value) if value is not None else None

    def entitlement_for(self, provider: str, ref: str) -> str | None:
        """The entitlement learned for a payment id."""
        value = self.redis.get(self._entitlement_key(provider, ref))
        return as_text(value) if value is not None else None

    @staticmethod
    def _email_key(provider: str, ref: str) -> str:
        return f"{PREFIX}email:{provider}:{ref}"

    @staticmethod
    def _entitlement_key(provider: str, ref: str) -> str:
        return f"{PREFIX}entitlement:{provider}:{ref}"

    # -- member cache ----------------------------------------------------------------

    def member_record(self, email: str) -> tuple[str | None, bool, frozenset[str]]:
        """(cached Sotion id, whether the bridge blocked them, groups the bridge added)."""
        raw = self.redis.hgetall(f"{PREFIX}member:{email}")
        member_id = raw.get(b"id")
        groups = json.loads(raw[b"groups"]) if b"groups" in raw else []
        return (
            as_text(member_id) if member_id else None,
            raw.get(b"bridge_blocked") == b"1",
            frozenset(groups),
        )

    def save_member_record(
        self, email: str, member_id: str | None, bridge_blocked: bool, groups: frozenset[str]
    ) -> None:
        """Store what the bridge knows and did about a member."""
        key = f"{PREFIX}member:{email}"
        pipe = self.redis.pipeline()
        if member_id is None:
            pipe.hdel(key, "id")
        else:
            pipe.hset(key, "id", member_id)
        pipe.hset(key, "bridge_blocked", "1" if bridge_blocked else "0")
        pipe.hset(key, "groups", json.dumps(sorted(groups)))
        pipe.execute()

    # -- locks -----------------------------------------------------------------------

    @contextmanager
    def email_lock(self, email: str) -> Iterator[None]:
        """Hold the email's lock: no two jobs of one email interleave their Sotion calls."""
        lock = self.redis.lock(
            f"{PREFIX}lock:{email}",
            timeout=LOCK_TIMEOUT_SECONDS,
            blocking_timeout=LOCK_WAIT_SECONDS,
        )
        if not lock.acquire():
            raise LockBusyError("another job of this email is still running")
        try:
            yield
        finally:
            # Expired while held: the next holder already took over.
            with suppress(LockError):
                lock.release()
