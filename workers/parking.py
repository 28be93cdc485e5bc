"""Events that arrive before their buyer is known wait, parked, for an event that names them.

Stripe usually sends ``customer.subscription.created`` (a customer id, no email) before
the ``checkout.session.completed`` that names the email. Without ``STRIPE_API_KEY`` the
first cannot be applied yet, and failing it for good would lose it. Instead it is parked:
its job is scheduled again for the end of the parking time (``BRIDGE_PARK_HOURS``), and
indexed under the ids that would tell its email (its customer, subscription, charge...).
Any later event that teaches the email of one of those ids wakes it: the parked job moves
to the front of the queue and applies through the normal path, where the ledger's
staleness rules put it in order. A parked job that nothing wakes runs at the deadline one
last time and, still without an email, fails with its reason (replayable).

Keys (under ``bridge:parked:``): ``by:{provider}:{id}``, a set of parked job ids.
The parked jobs themselves live in RQ's scheduled registry, their reason in ``meta``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from bridge.events import MembershipEvent
from bridge.intake import DEDUPE_PREFIX
from bridge.queues import APPLY_EVENT_JOB, FAILURE_TTL, JOB_TIMEOUT, RESULT_TTL
from bridge.retry import RetryPolicy
from workers.resolve import subjects
from workers.store import Store

log = logging.getLogger(__name__)

PREFIX = "bridge:parked:"
# Parked jobs' ids start with this (one job per event: a hash of its dedupe key).
PARKED_JOB_PREFIX = "parked-"
# The index outlives the parking time by a day, then cleans itself up.
INDEX_SLACK_SECONDS = 24 * 3600

# Index the job under each subject, unless one of them has an email by now (then the
# caller applies the event at once instead): KEYS = alias keys, then index keys.
_PARK = """
local n = #KEYS / 2
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = n + 1, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[1])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
"""
# The jobs parked under the ids whose email is known by now: KEYS = pairs of
# (alias key, index key). An id whose email is still unknown wakes nothing.
_FIND = """
local found = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[i + 1])) do table.insert(found, id) end
  end
end
return found
"""


@dataclass(frozen=True)
class ParkedEvent:
    """One parked event, as ``bridge jobs parked`` lists it."""

    job_id: str
    description: str
    reason: str
    parked_at: datetime | None
    deadline: datetime | None


class Parking:
    """Parks events whose buyer is unknown and wakes them when an event names the buyer."""

    def __init__(
        self, queue: Queue, store: Store, *, park_seconds: float, retry_policy: RetryPolicy
    ) -> None:
        self.queue = queue
        self.store = store
        self.park_seconds = park_seconds
        self.retry_policy = retry_policy

    def park(self, event: MembershipEvent, reason: str) -> str | None:
        """Park the event; its parked job id, or None when its email is known by now."""
        ids = subjects(event)
        if not ids or self.park_seconds <= 0:
            return None
        job_id = parked_job_id(event)
        now = time.time()
        # Scheduled first, indexed second: a waker that runs in between finds no index
        # entry, but then the alias it wrote makes the index step below refuse to park.
        self.queue.enqueue_at(
            datetime.fromtimestamp(now + self.park_seconds, UTC),
            APPLY_EVENT_JOB,
            event.to_json(),
            final=True,
            job_id=job_id,
            job_timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=self.retry_policy.rq_retry(),
            description=f"parked {event.event_type} {event.dedupe_key}",
            meta={"dedupe_key": event.dedupe_key, "parked": reason, "parked_at": now},
        )
        keys = [self.store.email_key(event.provider, ref) for ref in ids]
        keys += [_index_key(event.provider, ref) for ref in ids]
        ttl = int(self.park_seconds + INDEX_SLACK_SECONDS)
        if self.queue.connection.eval(_PARK, len(keys), *keys, job_id, ttl):
            # A resend from the provider now finds the parked job: a duplicate while it
            # waits, accepted again once it has failed for good (bridge/intake.py).
            self.queue.connection.set(
                DEDUPE_PREFIX + event.dedupe_key, job_id, xx=True, keepttl=True
            )
            log.info("parked event=%s job=%s until the buyer is known", event.dedupe_key, job_id)
            return job_id
        self._cancel(job_id)
        return None

    def wake(self, event: MembershipEvent) -> list[str]:
        """Move the jobs parked under an id whose email ``event`` taught to the queue's front."""
        ids = subjects(event)
        if not ids:
            return []
        index_keys = [_index_key(event.provider, ref) for ref in ids]
        keys = []
        for ref, index_key in zip(ids, index_keys, strict=True):
            keys += [self.store.email_key(event.provider, ref), index_key]
        found = self.queue.connection.eval(_FIND, len(keys), *keys)
        woken = []
        for raw in dict.fromkeys(found):
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self._enqueue_parked(job_id, index_keys):
                woken.append(job_id)
                log.info("woke a parked event job=%s by=%s", job_id, event.dedupe_key)
        return woken

    def _enqueue_parked(self, job_id: str, index_keys: list[str]) -> bool:
        """Move one parked job from the scheduled registry to the queue, in one MULTI.

        The registry is WATCHed: of two wakers (or a waker and RQ's scheduler at the
        deadline), only one moves the job.
        """
        connection = self.queue.connection
        registry = self.queue.scheduled_job_registry
        with connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(registry.key)  # type: ignore[no-untyped-call]
                    job: Job | None = None
                    if pipe.zscore(registry.key, job_id) is not None:
                        try:
                            job = Job.fetch(
                                job_id, connection=connection, serializer=self.queue.serializer
                            )
                        except NoSuchJobError:
                            job = None
                    if job is not None:
                        self.queue.enqueue_job(job, pipeline=pipe, at_front=True)  # MULTI
                        pipe.zrem(registry.key, job_id)
                    else:
                        pipe.multi()  # already run or gone: only its index entries are left
                    for key in index_keys:
                        pipe.srem(key, job_id)
                    pipe.execute()
                    return job is not None
                except redis.WatchError:
                    continue

    def _cancel(self, job_id: str) -> None:
        try:
            job = Job.fetch(
                job_id, connection=self.queue.connection, serializer=self.queue.serializer
            )
        except NoSuchJobError:
            return
        job.delete()


def parked_events(queue: Queue, limit: int = 1000) -> list[ParkedEvent]:
    """The parked events still waiting for their buyer's email, oldest deadline first."""
    registry = queue.scheduled_job_registry
    ids = [i for i in registry.get_job_ids(cleanup=False) if i.startswith(PARKED_JOB_PREFIX)]
    jobs = Job.fetch_many(ids[:limit], connection=queue.connection, serializer=queue.serializer)
    found = []
    for job in jobs:
        if job is None or "parked" not in (job.meta or {}):
            continue
        parked_at = job.meta.get("parked_at")
        found.append(
            ParkedEvent(
                job_id=job.id,
                description=job.description or "",
                reason=str(job.meta["parked"]),
                parked_at=datetime.fromtimestamp(parked_at, UTC) if parked_at else None,
                deadline=registry.get_scheduled_time(job),
            )
        )
    return found


def parked_job_id(event: MembershipEvent) -> str:
    """The parked job of an event (one per event, however often it is parked)."""
    digest = hashlib.sha256(event.dedupe_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PARKED_JOB_PREFIX}{digest[:24]}"


def _index_key(provider: str, ref: str) -> str:
    return f"{PREFIX}by:{provider}:{ref}"
