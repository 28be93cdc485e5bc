"""Intake: deduplicate and enqueue events atomically, so a 2xx means durably queued.

The events of one call are stored by one Lua script, in one round trip. For each event
it checks the dedupe key and, when the key names a job, that job's status; then it makes
the writes RQ's ``Queue.enqueue_job`` makes (the queue in ``rq:queues``, the job hash,
the job id pushed onto the queue), sets the dedupe key and adds the job to its buyer's
event index (``bridge member``); last it adds to the webhook counters
(``bridge/metrics.py``) and records the provider's last event (``bridge status``). The
script's text and its keys are in ``bridge/intake_script.py``. Redis runs a script alone
and, with the append-only file, answers only once its writes are on disk: either the job
and its key both exist or neither, and concurrent copies of one event make one job.

A duplicate is refused only while its job is alive or done: when the earlier job failed
for good (or was stopped or canceled) the redelivery is accepted again, so a provider's
resend repairs it. Deleting that dead job is RQ's business (registries, executions,
results), so there the script stores nothing and says so, and the events go through a
WATCH/MULTI transaction that deletes the dead job with RQ's own code and enqueues the new
one (a few round trips, for a rare case).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import as_text, now

from bridge import activity, metrics
from bridge.events import MembershipEvent
from bridge.intake_script import (
    APPLIED_BY_RECONCILE,
    LAST_EVENT_KEY,
    MEMBER_EVENTS_MAX,
    RECENT_EVENTS_KEY,
    RECENT_EVENTS_MAX,
    STORE_SCRIPT,
    member_events_key,
)
from bridge.queues import APPLY_EVENT_JOB, FAILURE_TTL, JOB_TIMEOUT, RESULT_TTL
from bridge.redact import mask_email
from bridge.retry import RetryPolicy

log = logging.getLogger(__name__)

# How long a delivered event id is remembered (Stripe retries for 3 days; its
# events API goes back 30).
DEDUPE_TTL_SECONDS = 30 * 24 * 3600
DEDUPE_PREFIX = "bridge:dedupe:"
# What a dedupe key holds for an event a reconcile applied (no job: nothing can fail).
APPLIED = APPLIED_BY_RECONCILE
# A job in one of these states will never apply its event: a redelivery may replace it.
_DEAD = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})
# Events per script call from submit(): one call blocks Redis while it runs.
BATCH_SIZE = 200

_DEAD_JOB = -1


@dataclass
class IntakeResult:
    """What happened to the events of one request."""

    queued: list[str] = field(default_factory=list)  # job ids
    duplicates: list[str] = field(default_factory=list)  # dedupe keys


@dataclass(frozen=True)
class _Counters:
    """The metrics fields one webhook delivery adds to, and its provider ("" for a call
    that is no delivery: no last event is recorded)."""

    events_queued: str = ""
    events_duplicate: str = ""
    webhook_queued: str = ""
    webhook_duplicate: str = ""
    provider: str = ""

    @classmethod
    def of(cls, provider: str) -> _Counters:
        def webhooks(outcome: str) -> str:
            return metrics.field("bridge_webhooks", provider=provider, outcome=outcome)

        def events(outcome: str) -> str:
            return metrics.field("bridge_events", provider=provider, outcome=outcome)

        return cls(
            events("queued"),
            events("duplicate"),
            webhooks("queued"),
            webhooks("duplicate"),
            provider,
        )


class Intake:
    """Stores events as RQ jobs, once each."""

    def __init__(self, queue: Queue, retry_policy: RetryPolicy) -> None:
        self.queue = queue
        self.connection: redis.Redis = queue.connection
        self.retry_policy = retry_policy
        # EVALSHA, loading the script again after NOSCRIPT (a Redis restart, SCRIPT FLUSH).
        self._store_script = self.connection.register_script(STORE_SCRIPT)

    def submit(self, events: Iterable[MembershipEvent]) -> IntakeResult:
        """Queue every event not seen before; Redis errors propagate (the view says 503)."""
        result = IntakeResult()
        pending = list(events)
        for start in range(0, len(pending), BATCH_SIZE):
            self._store(pending[start : start + BATCH_SIZE], _Counters(), result)
        return result

    def receive(self, provider: str, events: Sequence[MembershipEvent]) -> IntakeResult:
        """Queue the events of one webhook delivery as :meth:`submit` does, and count the
        delivery and its events in the same round trip."""
        if not events:
            metrics.count(self.connection, "bridge_webhooks", provider=provider, outcome="ignored")
            return IntakeResult()
        result = IntakeResult()
        self._store(list(events), _Counters.of(provider), result)
        return result

    def delivered(self, events: Iterable[MembershipEvent]) -> set[str]:
        """The dedupe keys of the events queued before whose job applied them or still will
        (a few round trips however many events)."""
        keys = list(dict.fromkeys(event.dedupe_key for event in events))
        if not keys:
            return set()
        values = self.connection.mget([DEDUPE_PREFIX + key for key in keys])
        seen = {key: as_text(value) for key, value in zip(keys, values, strict=True) if value}
        jobs = Job.fetch_many(
            [job_id for job_id in seen.values() if job_id != APPLIED],
            connection=self.connection,
            serializer=self.queue.serializer,
        )
        dead = {
            job.id for job in jobs if job is not None and job.get_status(refresh=False) in _DEAD
        }
        return {key for key, job_id in seen.items() if job_id not in dead}

    def remember(self, event: MembershipEvent) -> None:
        """Mark an event a reconcile applied itself: a later delivery of it is a duplicate."""
        self.connection.set(DEDUPE_PREFIX + event.dedupe_key, APPLIED, ex=DEDUPE_TTL_SECONDS)

    def _store(
        self, events: list[MembershipEvent], counters: _Counters, result: IntakeResult
    ) -> None:
        """One script call for ``events``; the transaction path if one names a dead job."""
        if not events:
            return
        jobs = [self._job(event) for event in events]
        received = time.time()
        keys: list[str] = [
            self.queue.key,
            self.queue.redis_queues_keys,
            metrics.METRICS_KEY,
            LAST_EVENT_KEY,
            RECENT_EVENTS_KEY,
            activity.hour_key(datetime.fromtimestamp(received, UTC)),
        ]
        args: list[Any] = [
            DEDUPE_TTL_SECONDS,
            self.queue.job_class.redis_job_namespace_prefix,
            ",".join(sorted(status.value for status in _DEAD)),
            counters.events_queued,
            counters.events_duplicate,
            counters.webhook_queued,
            counters.webhook_duplicate,
            counters.provider,
            repr(received),
            int(received),
            activity.KEEP_SECONDS,
        ]
        for event, job in zip(events, jobs, strict=True):
            index = member_events_key(event.email) if event.email else ""
            keys += [DEDUPE_PREFIX + event.dedupe_key, job.key, index]
            fields = _hash_fields(job)
            args += [job.id, len(fields) // 2, *fields]
        outcomes = self._store_script(keys=keys, args=args)
        if outcomes == [_DEAD_JOB]:
            self._replace_dead(events, jobs, counters, result, received)
            return
        for event, job, outcome in zip(events, jobs, outcomes, strict=True):
            self._record(event, job.id if outcome else None, result)

    def _replace_dead(
        self,
        events: list[MembershipEvent],
        jobs: list[Job],
        counters: _Counters,
        result: IntakeResult,
        received: float,
    ) -> None:
        """The slow path: each event in its own WATCH/MULTI transaction, RQ deleting the
        dead job it replaces; then the counters and the last event (a lost count never
        fails the request)."""
        queued = 0
        last_job: str | None = None
        for event, job in zip(events, jobs, strict=True):
            stored = self._transact(event, job, received)
            queued += stored
            self._record(event, job.id if stored else None, result)
            last_job = job.id if stored else last_job
        if counters.provider and last_job:
            try:
                value = f"{last_job}|{int(received)}"
                self.connection.hset(LAST_EVENT_KEY, counters.provider, value)
            except redis.RedisError:  # the events are stored: a lost record fails nothing
                log.warning("last event not recorded provider=%s", counters.provider)
        increments = [
            (counters.events_queued, queued),
            (counters.events_duplicate, len(events) - queued),
            (counters.webhook_queued if queued else counters.webhook_duplicate, 1),
        ]
        for name, amount in increments:
            if name and amount:
                metrics.increment(self.connection, name, amount)
        if counters.provider:
            activity.record(self.connection, counters.provider, "duplicate", len(events) - queued)

    def _transact(self, event: MembershipEvent, job: Job, received: float) -> bool:
        """Store ``job`` unless ``event`` is a duplicate of a live job (True if stored)."""
        key = DEDUPE_PREFIX + event.dedupe_key
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    previous = pipe.get(key)
                    dead = self._dead_job(pipe, as_text(previous)) if previous else None
                    if previous is not None and dead is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    if dead is not None:
                        dead.delete(pipeline=pipe)
                    self.queue.enqueue_job(job, pipeline=pipe)
                    pipe.set(key, job.id, ex=DEDUPE_TTL_SECONDS)
                    pipe.zadd(RECENT_EVENTS_KEY, {job.id: received})
                    pipe.zremrangebyrank(RECENT_EVENTS_KEY, 0, -RECENT_EVENTS_MAX - 1)
                    if event.email:
                        index = member_events_key(event.email)
                        pipe.zadd(index, {job.id: received})
                        pipe.zremrangebyrank(index, 0, -MEMBER_EVENTS_MAX - 1)
                        pipe.expire(index, DEDUPE_TTL_SECONDS)
                    pipe.execute()
                    return True
                except (redis.WatchError, InvalidJobOperation):
                    # Another copy changed the key or the job first: EXEC saw it, or RQ
                    # did, reading the dead job's status as it queued its deletion.
                    pipe.reset()
                    continue

    def _dead_job(self, pipe: Any, job_id: str) -> Job | None:
        """The job behind a dedupe key if it can no longer apply its event (watched, so a
        change of its status makes the transaction start again)."""
        pipe.watch(Job.key_for(job_id))
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=self.queue.serializer)
        except NoSuchJobError:
            return None  # finished and expired: it was applied
        return job if job.get_status(refresh=False) in _DEAD else None

    def _job(self, event: MembershipEvent) -> Job:
        """The RQ job of ``event``, built as ``enqueue_call`` builds it, not yet stored."""
        job = self.queue.create_job(
            APPLY_EVENT_JOB,
            args=(event.to_json(),),
            job_id=f"{event.provider}-{uuid.uuid4().hex}",
            timeout=JOB_TIMEOUT,
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            retry=self.retry_policy.rq_retry(),
            description=f"{event.event_type} {event.dedupe_key}",
            meta={"dedupe_key": event.dedupe_key},
            status=JobStatus.QUEUED,
        )
        job.enqueued_at = now()  # what Queue.enqueue_job adds as it stores the job
        return job

    @staticmethod
    def _record(event: MembershipEvent, job_id: str | None, result: IntakeResult) -> None:
        if job_id is None:
            result.duplicates.append(event.dedupe_key)
            log.info("duplicate event key=%s", event.dedupe_key)
            return
        result.queued.append(job_id)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "queued event key=%s type=%s email=%s job=%s",
                event.dedupe_key,
                event.event_type,
                mask_email(event.email),
                job_id,
            )


def _hash_fields(job: Job) -> list[Any]:
    """The job hash as ``Job.save`` writes it (``to_dict``), flattened field, value, ...;
    redis-py encodes the values as it does for ``HSET ... mapping``."""
    flat: list[Any] = []
    for name, value in job.to_dict().items():
        if value is not None:
            flat += [name, value]
    return flat
