"""The bridge's RQ worker: each process runs its jobs itself, keeps one Redis connection
pool and one Sotion session across them, recovers dead workers' jobs within seconds, and
stops gracefully (its work loop, which outlives a Redis restart: ``workers/work_loop.py``).

The model. RQ's default worker forks a work horse per job. Ours never imported the job
modules before forking, so every horse imported them again and opened its own Redis
connection and its own HTTP connection to Sotion (a TLS handshake in production): some
20 ms a job, more than the job itself. ``BridgeWorker`` is RQ's non-forking
``SimpleWorker``: the job modules are imported once at start (``workers/work_loop.py``),
and the runtime's Redis pool and ``requests.Session`` (``workers/runtime.py``) serve every
job. What a horse's parent did while its horse ran, a thread beside the job does
(``workers/job_watch.py``):

- Timeouts. RQ's death penalty (SIGALRM, handled in the main thread, where the job runs)
  raises ``JobTimeoutException`` in a job past its timeout, and the job is retried on
  schedule. A job still running ``STUCK_JOB_GRACE_SECONDS`` after that has swallowed the
  exception or is stuck where no signal reaches it: the thread logs it and exits the
  process hard (code ``STUCK_JOB_EXIT_CODE``); the platform restarts the worker and the
  job is recovered like a dead worker's (below).
- Heartbeats. RQ's defaults are made for long jobs: an execution's heartbeat TTL is 90 s
  (a ``SimpleWorker``'s is the job's timeout + 60 s, and it sends no heartbeat during the
  job), idle workers block for 405 s between maintenance passes, and maintenance runs
  every 10 minutes, so a job whose worker was SIGKILLed waits that long. Ours take
  seconds: the thread heartbeats the running job every ``HEARTBEAT_SECONDS`` with a TTL of
  ``HEARTBEAT_SECONDS + HEARTBEAT_GRACE_SECONDS``, idle workers wake every
  ``IDLE_WAKE_SECONDS``, and maintenance runs every ``MAINTENANCE_SECONDS``, first
  re-queuing dead workers' jobs (``workers/recovery.py``). A killed job therefore runs
  again within ``RECOVERY_BOUND_SECONDS``. A job that takes the process down (an
  out-of-memory kill, a crash) is one of these: there is no horse to lose instead.

Stopping follows RQ's ``HerokuWorker``. An idle worker stops at once. On SIGTERM (or
SIGINT) during a job, the job gets ``SHUTDOWN_GRACE_SECONDS`` to finish; past that a
thread sends the main thread SIGRTMIN (SIGALRM belongs to the death penalty), whose
handler raises ``ShutDownImminentException`` in the job, which puts itself straight back
on the queue (``workers/jobs.py``) without using a retry. A second signal does that at
once. Either way the worker exits before Heroku's SIGKILL at 30 s. Signal handlers here
run inside the job: they only set flags and raise; what talks to Redis or logs runs in a
thread, since the interrupted job may hold the connection pool's lock or be writing a log
line.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import suppress
from datetime import timedelta
from types import FrameType
from typing import Any

import redis
from redis.exceptions import LockError
from rq.exceptions import ShutDownImminentException
from rq.job import Job
from rq.queue import Queue
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus
from rq.worker_registration import clean_worker_registry

from bridge.redact import redact
from workers.job_watch import JobWatch
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
# A job still running this long after its timeout is stuck: the worker exits.
STUCK_JOB_GRACE_SECONDS = 10
# The exit code of a worker that gave up on a stuck job (EX_SOFTWARE).
STUCK_JOB_EXIT_CODE = 70
# A worker giving up on a stuck job exits this long after, whatever its last log line does.
STUCK_EXIT_DEADLINE_SECONDS = 5.0
# RQ waits at most this long between two tries to reach Redis (its default is 60 s).
REDIS_RETRY_MAX_SECONDS = 5.0
# RQ's idle wait is its worker TTL less 15 s.
_WORKER_TTL = IDLE_WAKE_SECONDS + 15
# A second stop signal this soon after the first is the same stop (RQ's rule: a Ctrl+C
# or a closing terminal reaches a whole process group, and a service manager may signal
# both the group and the process).
_DUPLICATE_SIGNAL = timedelta(seconds=1)
# The longest the pub/sub thread waits for a message before it looks for a stop.
PUBSUB_POLL_SECONDS = 1.0


class PromptPubSub(SimpleWorker):
    """RQ's worker with a pub/sub thread (``rq`` commands: stop-job, shutdown) that stops
    within a second.

    RQ's thread waits up to 60 s at a time for a message, and once its unsubscribe is
    confirmed it waits that long for a subscription that never comes before it sees the
    stop: a stopped worker then took a minute to exit (past Heroku's 30 s grace). Here it
    waits at most ``PUBSUB_POLL_SECONDS`` (one idle read a second, nothing else).
    """

    def subscribe(self) -> None:
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=PUBSUB_POLL_SECONDS,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )


class BridgeWorker(PromptPubSub):
    """RQ's non-forking worker with heartbeats, a stuck-job watchdog and a graceful stop
    (see the module docstring)."""

    max_connection_wait_time = REDIS_RETRY_MAX_SECONDS
    # Seconds a running job gets after a stop signal; a job stuck this long past its timeout.
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS
    stuck_job_grace_seconds: float = STUCK_JOB_GRACE_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_monitoring_interval", HEARTBEAT_SECONDS)
        kwargs.setdefault("maintenance_interval", MAINTENANCE_SECONDS)
        kwargs.setdefault("worker_ttl", _WORKER_TTL)
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.stop_signalled = False
        # Minutes between scheduled reconciles; None: this worker leaves the schedule alone.
        self.reconcile_interval: float | None = None
        # True while the job's own code runs: only then may a stop interrupt it.
        self._in_job = False
        # Set whenever no job's code runs (what a stop's grace waits for).
        self._job_over = threading.Event()
        self._job_over.set()
        self._stopping: threading.Thread | None = None
        self._main_thread = threading.main_thread().ident

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        """A running job's execution expires soon after its heartbeats stop."""
        remaining = HEARTBEAT_SECONDS
        if job.timeout and job.timeout > 0:
            remaining = int(min(job.timeout - working_time, HEARTBEAT_SECONDS))
        return max(remaining, 1) + HEARTBEAT_GRACE_SECONDS

    # -- running a job ---------------------------------------------------------------

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run ``job`` in this process, a ``JobWatch``, ``workers/job_watch.py`` beside it."""
        self._job_over.clear()
        watch: JobWatch | None = None
        try:
            execution = self.prepare_execution(job)
            watch = JobWatch(
                job.id,
                beat=lambda: self.maintain_heartbeats(job, execution),
                on_stuck=lambda ran: self.exit_stuck(job, ran),
                every=HEARTBEAT_SECONDS,
                stuck_after=self._stuck_after(job),
            )
            watch.start()
            self.perform_job(job, queue, execution)
        finally:
            self._in_job = False
            self._job_over.set()
            if watch is not None:
                watch.stop()
        self.set_state(WorkerStatus.IDLE)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping before the job; from here on a stop may interrupt it."""
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        self._in_job = True

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        """The job's code is over (RQ saves its outcome next): nothing interrupts it now."""
        self._in_job = False
        self._job_over.set()
        super().handle_execution_ended(job, queue, heartbeat_ttl)

    def _stuck_after(self, job: Job) -> float | None:
        """Seconds after which a job counts as stuck (None: it may run forever)."""
        timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT  # as RQ's perform_job
        if timeout is None or timeout <= 0:
            return None
        return float(timeout) + self.stuck_job_grace_seconds

    def exit_stuck(self, job: Job, ran: float) -> None:
        """Give up on a job the timeout could not stop: exit at once (from the watch thread).

        The main thread cannot be freed, so the process goes; the platform starts a new
        one, and the job, whose heartbeats stop here, is recovered as a dead worker's.
        """
        # Exit even if the log line or the scheduler blocks (a full pipe, say).
        deadline = threading.Timer(STUCK_EXIT_DEADLINE_SECONDS, os._exit, (STUCK_JOB_EXIT_CODE,))
        deadline.daemon = True
        deadline.start()
        log.error(
            "job=%s still running %.0f s after it started, past its timeout and %g s of "
            "grace: the worker exits (code %d) and the job will run again",
            job.id,
            ran,
            self.stuck_job_grace_seconds,
            STUCK_JOB_EXIT_CODE,
        )
        self._stop_scheduler_now()
        for handler in logging.getLogger().handlers:
            with suppress(Exception):
                handler.flush()
        os._exit(STUCK_JOB_EXIT_CODE)

    def _stop_scheduler_now(self) -> None:
        """Stop the scheduler process so that it does not outlive a hard exit."""
        process = self.scheduler._process if self.scheduler is not None else None
        if process is None or not process.pid:
            return
        with suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(timeout=STUCK_EXIT_DEADLINE_SECONDS / 2)
        if process.is_alive():
            process.kill()

    # -- stopping --------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """RQ's SIGTERM and SIGINT handlers, and SIGRTMIN to interrupt a job."""
        super()._install_signal_handlers()  # type: ignore[no-untyped-call]
        signal.signal(signal.SIGRTMIN, self._interrupt_job)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Stop: at once when idle; during a job, once it ends or its grace is over."""
        self.stop_signalled = True
        if self.get_state() != WorkerStatus.BUSY:
            super().request_stop(signum, frame)  # type: ignore[no-untyped-call]
            return  # (RQ raised StopRequested)
        # The job runs under this handler: leave Redis and logging to a thread.
        self._shutdown_requested_date = now()
        self._stop_requested = True
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._stopping = threading.Thread(
            target=self._stop_after_grace, args=(signum,), name="graceful stop", daemon=True
        )
        self._stopping.start()

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second stop signal: a running job goes back on the queue now, then the worker
        exits."""
        requested = self._shutdown_requested_date
        if requested is not None and now() - requested < _DUPLICATE_SIGNAL:
            return  # the first signal, delivered twice
        if self._in_job:
            raise _shutdown_imminent(signum)
        if self.get_state() == WorkerStatus.BUSY:
            return  # the job is over and its outcome being saved; the loop stops next
        raise SystemExit()

    def _interrupt_job(self, signum: int, frame: FrameType | None) -> None:
        """SIGRTMIN: the stop's grace is over."""
        if self._in_job:
            raise _shutdown_imminent(signum)

    def _stop_after_grace(self, signum: int) -> None:
        """(thread) Record the stop, stop the scheduler, then give the job its grace."""
        log.info(
            "worker=%s got %s: the running job has %g s to finish",
            self.name,
            signal.Signals(signum).name,
            self.shutdown_grace_seconds,
        )
        with suppress(redis.RedisError):
            self.set_shutdown_requested_date()  # type: ignore[no-untyped-call]
        if self.scheduler is not None:
            self.stop_scheduler()  # type: ignore[no-untyped-call]
        if self._job_over.wait(self.shutdown_grace_seconds):
            return
        log.warning("the shutdown grace is over: the running job goes back on the queue")
        assert self._main_thread is not None
        signal.pthread_kill(self._main_thread, signal.SIGRTMIN)

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance, unless this worker is stopping (it would restart the scheduler)."""
        if not self._stop_requested:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]

    def teardown(self) -> None:
        """Let a stop's thread finish (it may be stopping the scheduler), then RQ's teardown."""
        if self._stopping is not None:
            self._stopping.join(timeout=self.shutdown_grace_seconds)
        super().teardown()  # type: ignore[no-untyped-call]

    # -- maintenance and failures ------------------------------------------------------

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


def _shutdown_imminent(signum: int) -> ShutDownImminentException:
    """What a stop raises in the running job (as RQ's work horse does)."""
    name = signal.Signals(signum).name
    return ShutDownImminentException(f"shut down imminent (signal: {name})", {})  # type: ignore[no-untyped-call]
