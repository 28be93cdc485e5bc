"""Intake: deduplicate and enqueue events atomically, so a 2xx means durably queued.

For each event, one Redis transaction (WATCH on the dedupe key, then MULTI) stores the
dedupe key and the RQ job together: either both exist or neither. A concurrent delivery
of the same event makes the transaction retry and then see the duplicate. A duplicate
is refused only while its job is alive or done: when the earlier job failed for good
(or was stopped) the redelivery is accepted again, so a provider's resend repairs it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import as_text

from bridge.events import MembershipEvent
from bridge.queues import APPLY_EVENT_JOB, FAILURE_TTL, JOB_TIMEOUT, RESULT_TTL
from bridge.redact import mask_email
from bridge.retry import RetryPolicy

log = logging.getLogger(__name__)

# How long a delivered event id is remembered (Stripe retries for 3 days; its
# events API goes back 30).
DEDUPE_TTL_SECONDS = 30 * 24 * 3600
DEDUPE_PREFIX = "bridge:dedupe:"
# What a dedupe key holds for an event a reconcile applied (no job: nothing can fail).
APPLIED = "applied-by-reconcile"
# A job in one of these states will never apply its event: a redelivery may replace it.
_DEAD = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED})


@dataclass
class IntakeResult:
    """What happened to the events of one request."""

    queued: list[str] = field(default_factory=list)  # job ids
    duplicates: list[str] = field(default_factory=list)  # dedupe keys


class Intake:
    """Stores events as RQ jobs, once each."""

    def __init__(self, queue: Queue, retry_policy: RetryPolicy) -> None:
        self.queue = queue
        self.connection: redis.Redis = queue.connection
        self.retry_policy = retry_policy

    def submit(self, events: Iterable[MembershipEvent]) -> IntakeResult:
        """Queue every event not seen before; Redis errors propagate (the view says 503)."""
        result = IntakeResult()
        for event in events:
            job_id = self._submit(event)
            if job_id is None:
                result.duplicates.append(event.dedupe_key)
                log.info("duplicate event key=%s", event.dedupe_key)
            else:
                result.queued.append(job_id)
                log.info(
                    "queued event key=%s type=%s email=%s job=%s",
                    event.dedupe_key,
                    event.event_type,
                    mask_email(event.email),
                    job_id,
                )
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

    def _submit(self, event: MembershipEvent) -> str | None:
        key = DEDUPE_PREFIX + event.dedupe_key
        job_id = f"{event.provider}-{uuid.uuid4().hex}"
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    previous = pipe.get(key)
                    dead = self._dead_job(as_text(previous)) if previous is not None else None
                    if previous is not None and dead is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.set(key, job_id, ex=DEDUPE_TTL_SECONDS)
                    if dead is not None:
                        dead.delete(pipeline=pipe)
                    self.queue.enqueue_call(
                        APPLY_EVENT_JOB,
                        args=(event.to_json(),),
                        job_id=job_id,
                        timeout=JOB_TIMEOUT,
                        result_ttl=RESULT_TTL,
                        failure_ttl=FAILURE_TTL,
                        retry=self.retry_policy.rq_retry(),
                        description=f"{event.event_type} {event.dedupe_key}",
                        meta={"dedupe_key": event.dedupe_key},
                        pipeline=pipe,
                    )
                    pipe.execute()
                    return job_id
                except redis.WatchError:
                    continue

    def _dead_job(self, job_id: str) -> Job | None:
        """The job behind a dedupe key if it can no longer apply its event."""
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=self.queue.serializer)
        except NoSuchJobError:
            return None  # finished and expired: it was applied
        return job if job.get_status(refresh=False) in _DEAD else None
