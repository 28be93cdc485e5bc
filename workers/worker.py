"""The bridge's RQ worker: quick recovery of dead workers' jobs, a graceful stop, and a
work loop that outlives a Redis restart.

RQ's defaults are made for long jobs: an execution's heartbeat TTL is 90 s, idle workers
block for 405 s between maintenance passes, and maintenance runs every 10 minutes, so a
job whose worker was SIGKILLed waits that long. Ours take seconds, so the worker
heartbeats every ``HEARTBEAT_SECONDS`` with a TTL of ``HEARTBEAT_SECONDS +
HEARTBEAT_GRACE_SECONDS``, wakes every ``IDLE_WAKE_SECONDS`` when idle, and runs
maintenance every ``MAINTENANCE_SECONDS``, first re-queuing dead workers' jobs
(``workers/recovery.py``). A killed job therefore runs again within
``RECOVERY_BOUND_SECONDS``.

Stopping follows RQ's ``HerokuWorker``: on SIGTERM the work horse (which ignores SIGTERM,
as Heroku sends it to every process of the dyno) gets ``SHUTDOWN_GRACE_SECONDS`` to finish
its job; past that the job is interrupted and put straight back on the queue. Either way
the worker exits before Heroku's SIGKILL at 30 s.
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import suppress
from types import FrameType
from typing import Any

import redis
from redis.exceptions import LockError
from rq.exceptions import StopRequested
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import HerokuWorker
from rq.worker_registration import clean_worker_registry

from bridge.queues import bridge_queue, connect
from bridge.redact import redact
from bridge.settings import Settings
from workers import runtime
from workers.recovery import requeue_abandoned
from workers.schedule import ensure_scheduled

log = logging.getLogger(__name__)

# Seconds between two heartbeats of a running job.
HEARTBEAT_SECONDS = 5
# A running job's execution expires this long after its last heartbeat.
HEARTBEAT_GRACE_SECONDS = 10
# An idle worker stops waiting for a job this often (to heartbeat and run maintenance).
IDLE_WAKE_SECONDS = 10
# Seconds between two maintenance passes of a worker (one worker at a time does it).
MAINTENANCE_SECONDS = 10
# How long after a worker's death its job runs again, at most: its execution expires,
# then the next maintenance pass of a live worker (idle ones wake for it) re-queues it.
RECOVERY_BOUND_SECONDS = (
    HEARTBEAT_SECONDS + HEARTBEAT_GRACE_SECONDS + MAINTENANCE_SECONDS + IDLE_WAKE_SECONDS
)
# A worker killed during maintenance blocks the others' for at most this long.
MAINTENANCE_LOCK_SECONDS = 30
# After SIGTERM, the running job has this long to finish before it is put back.
SHUTDOWN_GRACE_SECONDS = 20
# RQ waits at most this long between two tries to reach Redis (its default is 60 s).
REDIS_RETRY_MAX_SECONDS = 5.0
# Restarts of a work loop that ran under a minute, before a worker whose Redis answers
# gives up (a bug, not an outage).
MAX_QUICK_RESTARTS = 5
# RQ's idle wait is its worker TTL less 15 s.
_WORKER_TTL = IDLE_WAKE_SECONDS + 15


class BridgeWorker(HerokuWorker):
    """RQ's forking worker, tuned for short jobs (see the module docstring)."""

    imminent_shutdown_delay = SHUTDOWN_GRACE_SECONDS
    max_connection_wait_time = REDIS_RETRY_MAX_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_SECONDS)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        kwargs.setdefault("worker_ttl", _WORKER_TTL)
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.stop_signalled = False
        # Minutes between scheduled reconciles; None: this worker leaves the schedule alone.
        self.reconcile_interval: float | None = None

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        """A running job's execution expires soon after its heartbeats stop."""
        remaining = HEARTBEAT_SECONDS
        if job.timeout and job.timeout > 0:
            remaining = int(min(job.timeout - working_time, HEARTBEAT_SECONDS))
        return max(remaining, 1) + HEARTBEAT_GRACE_SECONDS

    def clean_registries(self) -> None:
        """Re-queue dead workers' jobs at once, then clean RQ's registries, queue by queue.

        RQ's own version takes a lock that outlives a worker killed during it by 15
        minutes; this one's lock lasts ``MAINTENANCE_LOCK_SECONDS``.
        """
        for queue in self.queues:
            lock = self.connection.lock(
                f"bridge:maintenance:{queue.name}", timeout=MAINTENANCE_LOCK_SECONDS
            )
            if not lock.acquire(blocking=False):
                continue  # another worker is at it
            try:
                requeue_abandoned(queue)
                if self.reconcile_interval is not None:
                    ensure_scheduled(queue, self.reconcile_interval)
                clean_registries(queue, self._exc_handlers)
                clean_worker_registry(queue)
                queue.intermediate_queue.cleanup(self, queue)
            finally:
                with suppress(LockError):
                    lock.release()
        self.last_cleaned_at = now()  # type: ignore[assignment]

    def handle_job_failure(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        """Store the failure redacted: RQ keeps it (the traceback text) for a year."""
        if "exc_string" in kwargs:
            kwargs["exc_string"] = redact(kwargs["exc_string"] or "")
        elif len(args) >= 2:
            args = (args[0], redact(args[1] or ""), *args[2:])
        super().handle_job_failure(job, queue, *args, **kwargs)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Remember that a signal asked for the stop (not a lost Redis), then stop warmly."""
        self.stop_signalled = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]


def run(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty).

    RQ's loop quits when Redis stops answering (or answers too slowly) in the middle of
    it; this one starts it again once Redis is back, so a Redis restart never needs a
    worker restart. A loop that keeps quitting at once while Redis answers has met a
    bug: after ``MAX_QUICK_RESTARTS`` that is an error exit (the platform restarts the
    process, and its log shows why).
    """
    connection = connect(settings)
    runtime.configure(settings, connection)
    warn_about_persistence(connection)
    worked = False
    wait = 0.5
    quick_restarts = 0
    while True:
        worker: BridgeWorker | None = None
        started = time.monotonic()
        try:
            # Building the worker talks to Redis too (it names its connection).
            worker = BridgeWorker([bridge_queue(connection)], connection=connection, name=name)
            worker.reconcile_interval = settings.reconcile_interval_minutes
            worked = (
                bool(
                    worker.work(with_scheduler=True, burst=burst, logging_level=settings.log_level)
                )
                or worked
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis is unreachable (%s); trying again", type(exc).__name__)
            quick_restarts = 0  # an outage, not a bug
        except StopRequested:  # a signal while a new loop was being set up
            return worked
        if burst or (worker is not None and worker.stop_signalled):
            return worked
        if worker is not None:
            _stop_orphaned_horse(worker)
        if time.monotonic() - started > 60:
            wait, quick_restarts = 0.5, 0  # it had been running: not a crash loop
        if _redis_answers(connection):
            quick_restarts += 1
            if quick_restarts > MAX_QUICK_RESTARTS:
                raise WorkerLoopError("the RQ work loop keeps stopping although Redis answers")
        else:
            quick_restarts = 0
        log.warning("the work loop stopped (redis went away?); starting it again")
        try:
            time.sleep(wait)
        except StopRequested:  # a signal between two loops (RQ's handlers are still set)
            return worked
        wait = min(wait * 2, REDIS_RETRY_MAX_SECONDS)


class WorkerLoopError(RuntimeError):
    """RQ's work loop stopped although Redis answers: a bug, not an outage."""


def _stop_orphaned_horse(worker: BridgeWorker) -> None:
    """A loop that quit mid-job leaves its work horse running: stop it, so the job's
    re-run (after its heartbeat expires) never runs beside it."""
    if worker.horse_pid:
        worker.kill_horse(signal.SIGKILL)
        worker.wait_for_horse()


def _redis_answers(connection: redis.Redis) -> bool:
    try:
        return bool(connection.ping())
    except redis.RedisError:
        return False


def warn_about_persistence(connection: redis.Redis) -> None:
    """Log a warning when Redis would lose acknowledged events on a restart or evict keys."""
    try:
        config = connection.config_get("appendonly") | connection.config_get("save")
        config |= connection.config_get("maxmemory-policy")
    except redis.RedisError:
        return  # managed Redis often disables CONFIG: the README says what to check
    if config.get("appendonly") != "yes" and not config.get("save"):
        log.warning("redis keeps nothing on disk: a restart loses every queued event")
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        log.warning("redis maxmemory-policy is %s: it may evict queued events", policy)
