"""Redis storage of the worker side: ledgers, learned aliases, member cache, email locks.

Keys (all under ``bridge:``):
- ``ledger:{email}``: hash, entitlement key -> Entitlement JSON
- ``member:{email}``: hash, ``id`` (cached Sotion id), ``bridge_blocked``, ``bridge_paid``,
  ``groups``: which of the member's fields the bridge set; ``seen``: the member (paid,
  blocked, groups) as the bridge last read or wrote it, which jobs plan against
- ``email:{provider}:{ref}``: the email a customer/charge/invoice id belongs to
- ``owner:{entitlement}``: the email whose ledger holds an entitlement (fixed at first sight)
- ``entitlement:{provider}:{ref}``: the entitlement a payment/charge/invoice belongs to
- ``lock:{email}``: the per-email lock that serializes Sotion calls for one member
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import redis
from rq.utils import as_text

from bridge.events import MembershipEvent
from bridge.ledger import Entitlement
from bridge.membership import MemberSnapshot
from bridge.redact import mask_email
from workers.lease import Lease, LeaseSet
from workers.records import (
    MemberRecord,
    ledger_from_redis,
    member_record_from_redis,
    seen_json,
)

PREFIX = "bridge:"
# Learned aliases are kept for a year: refunds and disputes can come months later.
ALIAS_TTL_SECONDS = 365 * 24 * 3600
# An email's lock outlives a crashed holder by at most this long (a live holder renews it).
LOCK_TIMEOUT_SECONDS = 10
# How long a job waits for another job of the same email before retrying later: longer
# than a dead holder's lease, so a crash never costs a waiting job a retry.
LOCK_WAIT_SECONDS = 15
# How long a backfill or reconcile waits for an email a job holds (a job holds one for
# seconds; a run must not drop the email): past it, the run stops, to be run again.
RUN_LOCK_WAIT_SECONDS = 300
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


# Claim an entitlement's owner (the first email recorded for it) and learn the event's
# aliases for that owner, in one round trip. KEYS[1] the owner key (or "" for none),
# KEYS[2..n+1] email aliases, the rest entitlement aliases; ARGV: email, entitlement, ttl, n.
_CLAIM_AND_LEARN = """
local email = ARGV[1]
if KEYS[1] ~= '' then
  redis.call('SET', KEYS[1], email, 'NX', 'EX', ARGV[3])
  email = redis.call('GET', KEYS[1]) or email
end
local aliases = tonumber(ARGV[4])
for i = 2, #KEYS do
  if i <= aliases + 1 then
    redis.call('SET', KEYS[i], email, 'EX', ARGV[3])
  else
    redis.call('SET', KEYS[i], ARGV[2], 'EX', ARGV[3])
  end
end
return email
"""


# Store a listing's view of a member only if nobody wrote the record since it was read
# before the listing (its revision is unchanged); a new record claims nothing, an old one
# keeps what it says (a record from before bridge_paid was kept reads as the bridge's).
# KEYS[1] the member hash; ARGV: the revision read before, the id and seen to store.
_SAVE_SEEN = """
if (redis.call('HGET', KEYS[1], 'rev') or '0') ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'bridge_blocked', '0', 'bridge_paid', '0', 'groups', '[]')
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'seen', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
return 1
"""


class Store:
    """Typed access to the worker's Redis keys."""

    def __init__(self, connection: redis.Redis) -> None:
        self.redis = connection
        self._claim_and_learn = connection.register_script(_CLAIM_AND_LEARN)
        self._save_seen = connection.register_script(_SAVE_SEEN)

    # -- ledger --------------------------------------------------------------------

    def entitlements(self, email: str) -> dict[str, Entitlement]:
        """Every entitlement of an email, by key."""
        return ledger_from_redis(self.redis.hgetall(f"{PREFIX}ledger:{email}"))

    def save_entitlement(self, email: str, entitlement: Entitlement) -> None:
        """Store one entitlement (the caller holds the email's lock)."""
        self.redis.hset(
            f"{PREFIX}ledger:{email}", entitlement.key, json.dumps(entitlement.to_json())
        )

    def member_state(self, email: str) -> tuple[dict[str, Entitlement], MemberRecord]:
        """The email's ledger and member record, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(f"{PREFIX}ledger:{email}")
        pipe.hgetall(f"{PREFIX}member:{email}")
        ledger, record = pipe.execute()
        return ledger_from_redis(ledger), member_record_from_redis(record)

    def write_ledger(
        self, email: str, saves: Iterable[Entitlement], deletes: Iterable[str]
    ) -> None:
        """Store and drop entitlements of one email, in one round trip (lock held)."""
        self.write_ledgers(((email, e) for e in saves), ((email, key) for key in deletes))

    def ledger_emails(self) -> set[str]:
        """Every email that has a ledger (one SCAN; no index to keep in step)."""
        prefix = f"{PREFIX}ledger:"
        return {
            as_text(key)[len(prefix) :]
            for key in self.redis.scan_iter(match=f"{prefix}*", count=1000)
        }

    def ledgers(self, emails: list[str]) -> dict[str, dict[str, Entitlement]]:
        """The ledgers of many emails in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for email in emails:
            pipe.hgetall(f"{PREFIX}ledger:{email}")
        return {
            email: ledger_from_redis(raw) for email, raw in zip(emails, pipe.execute(), strict=True)
        }

    # -- aliases -------------------------------------------------------------------

    def learn(self, event: MembershipEvent, email: str | None, entitlement: str | None) -> None:
        """Remember which email and entitlement the event's ids belong to."""
        self.learn_many([(event, email, entitlement)])

    def learn_many(self, items: Iterable[tuple[MembershipEvent, str | None, str | None]]) -> None:
        """:meth:`learn` for many events, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for event, email, entitlement in items:
            if email is not None:
                for key in self._email_aliases(event):
                    pipe.set(key, email, ex=ALIAS_TTL_SECONDS)
            if entitlement is not None:
                for key in self._entitlement_aliases(event):
                    pipe.set(key, entitlement, ex=ALIAS_TTL_SECONDS)
        pipe.execute()

    def claim_and_learn(self, event: MembershipEvent, email: str, entitlement: str | None) -> str:
        """Claim the entitlement's owner, then :meth:`learn` with the owner's email, in one
        round trip; returns the owner (``email`` when the event names no entitlement).

        The owner is the first email ever recorded for the entitlement: later events of the
        same purchase may name another address (a renewal invoice without the checkout's
        email override, a customer who changed their email); the purchase stays in one
        ledger, so ending it ends it everywhere."""
        emails = self._email_aliases(event)
        entitlements = self._entitlement_aliases(event) if entitlement is not None else []
        owner_key = f"{PREFIX}owner:{entitlement}" if entitlement is not None else ""
        owner = self._claim_and_learn(
            keys=[owner_key, *emails, *entitlements],
            args=[email, entitlement or "", ALIAS_TTL_SECONDS, len(emails)],
        )
        return as_text(owner)

    def _email_aliases(self, event: MembershipEvent) -> list[str]:
        refs = [event.customer, *event.refs.values()] if event.customer else [*event.refs.values()]
        return list(dict.fromkeys(self.email_key(event.provider, ref) for ref in refs))

    def _entitlement_aliases(self, event: MembershipEvent) -> list[str]:
        return [
            self._entitlement_key(event.provider, event.refs[name])
            for name in PAYMENT_REFS
            if name in event.refs
        ]

    def claim_owners(self, claims: Mapping[str, str]) -> dict[str, str]:
        """The owners of many entitlements, claimed for ``claims`` (entitlement -> email)
        where none is yet, in one round trip (see :meth:`claim_and_learn`)."""
        keys = list(claims)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(f"{PREFIX}owner:{key}", claims[key], nx=True, ex=ALIAS_TTL_SECONDS)
        for key in keys:
            pipe.get(f"{PREFIX}owner:{key}")
        owners = pipe.execute()[len(keys) :]
        return {
            key: as_text(owner) if owner is not None else claims[key]
            for key, owner in zip(keys, owners, strict=True)
        }

    def owners_of(self, entitlements: list[str]) -> dict[str, str | None]:
        """:meth:`owner_of` for many entitlements, in one round trip."""
        if not entitlements:
            return {}
        found = self.redis.mget([f"{PREFIX}owner:{key}" for key in entitlements])
        return {
            key: as_text(owner) if owner is not None else None
            for key, owner in zip(entitlements, found, strict=True)
        }

    def write_ledgers(
        self, saves: Iterable[tuple[str, Entitlement]], deletes: Iterable[tuple[str, str]]
    ) -> None:
        """Store and drop entitlements of many emails, in one round trip (locks held)."""
        pipe = self.redis.pipeline(transaction=False)
        for email, key in deletes:
            pipe.hdel(f"{PREFIX}ledger:{email}", key)
        for email, entitlement in saves:
            pipe.hset(f"{PREFIX}ledger:{email}", entitlement.key, json.dumps(entitlement.to_json()))
        pipe.execute()

    def owner_of(self, entitlement: str) -> str | None:
        """The email that owns an entitlement, if one was recorded."""
        owner = self.redis.get(f"{PREFIX}owner:{entitlement}")
        return as_text(owner) if owner is not None else None

    def email_for(self, provider: str, ref: str) -> str | None:
        """The email learned for a customer or payment id."""
        value = self.redis.get(self.email_key(provider, ref))
        return as_text(value) if value is not None else None

    def entitlement_for(self, provider: str, ref: str) -> str | None:
        """The entitlement learned for a payment id."""
        value = self.redis.get(self._entitlement_key(provider, ref))
        return as_text(value) if value is not None else None

    @staticmethod
    def email_key(provider: str, ref: str) -> str:
        return f"{PREFIX}email:{provider}:{ref}"

    @staticmethod
    def _entitlement_key(provider: str, ref: str) -> str:
        return f"{PREFIX}entitlement:{provider}:{ref}"

    # -- member cache ----------------------------------------------------------------

    def member_record(self, email: str) -> MemberRecord:
        """What the bridge knows about a member (an empty record for a new email)."""
        return member_record_from_redis(self.redis.hgetall(f"{PREFIX}member:{email}"))

    def member_records(self, emails: list[str]) -> dict[str, MemberRecord]:
        """The records of many members in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for email in emails:
            pipe.hgetall(f"{PREFIX}member:{email}")
        return {
            email: member_record_from_redis(raw)
            for email, raw in zip(emails, pipe.execute(), strict=True)
        }

    def save_member_record(self, email: str, record: MemberRecord) -> None:
        """Store what the bridge knows and did about a member."""
        self.save_member_records({email: record})

    def save_member_seen(
        self, email: str, member_id: str, seen: MemberSnapshot, *, read_before: MemberRecord
    ) -> bool:
        """Remember a member's Sotion id and state as a listing saw them, unless the record
        changed since ``read_before`` (read before the listing): a job that wrote the member
        meanwhile knows better than the listing. What the record says of its fields is left
        alone. True when stored."""
        stored = self._save_seen(
            keys=[f"{PREFIX}member:{email}"],
            args=[str(read_before.rev), member_id, seen_json(seen)],
        )
        return bool(stored)

    def save_member_records(self, records: Mapping[str, MemberRecord]) -> None:
        """Store the records of many members, in one transaction."""
        pipe = self.redis.pipeline()
        for email, record in records.items():
            key = f"{PREFIX}member:{email}"
            if record.id is None:
                pipe.hdel(key, "id")
            if record.seen is None or record.id is None:
                pipe.hdel(key, "seen")  # what was seen belongs to the id it was seen under
            fields: dict[bytes | bytearray | memoryview[int] | str | int | float, str] = {
                "bridge_blocked": "1" if record.bridge_blocked else "0",
                "bridge_paid": "1" if record.bridge_paid else "0",
                "groups": json.dumps(sorted(record.groups)),
            }
            if record.id is not None:
                fields["id"] = record.id
            if record.id is not None and record.seen is not None:
                fields["seen"] = seen_json(record.seen)
            pipe.hset(key, mapping=fields)
            pipe.hincrby(key, "rev", 1)
        pipe.execute()

    # -- locks -----------------------------------------------------------------------

    @staticmethod
    def lock_key(email: str) -> str:
        return f"{PREFIX}lock:{email}"

    def email_locks(self, emails: list[str]) -> LeaseSet:
        """The locks of many emails at once, for a batch (``with``: the free ones are held)."""
        return LeaseSet(self.redis, [self.lock_key(e) for e in emails], ttl=LOCK_TIMEOUT_SECONDS)

    @contextmanager
    def email_lock(self, email: str, *, wait: float | None = None) -> Iterator[Lease]:
        """Hold the email's lock: no two jobs of one email interleave their Sotion calls.

        The lock is a lease (``workers/lease.py``): call its ``ensure()`` before each write.
        ``wait``: how long to wait for it (default ``LOCK_WAIT_SECONDS``).
        """
        lease = Lease(
            self.redis,
            self.lock_key(email),
            ttl=LOCK_TIMEOUT_SECONDS,
            wait=LOCK_WAIT_SECONDS if wait is None else wait,
            label=mask_email(email),
        )
        with lease:
            yield lease
