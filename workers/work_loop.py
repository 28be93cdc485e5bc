"""The worker process: its work loop, which outlives a Redis restart, and what it does
once at start (Redis and Sotion checked, the banner logged, the job modules imported, a
warning when Redis would lose events).

The worker itself (what it does per job, its signals and maintenance) is
``workers/worker.py``.
"""

from __future__ import annotations

import importlib
import logging
import time

import redis
from rq.exceptions import StopRequested

from bridge.queues import APPLY_EVENT_JOB, RECONCILE_JOB, RESYNC_JOB, bridge_queue, connect
from bridge.settings import Settings, SettingsError
from bridge.startup import check_redis, check_sotion, log_banner, quiet_sotion
from workers import runtime
from workers.worker import REDIS_RETRY_MAX_SECONDS, BridgeWorker

log = logging.getLogger(__name__)

# Restarts of a work loop that ran under a minute, before a worker whose Redis answers
# gives up (a bug, not an outage).
MAX_QUICK_RESTARTS = 5
# The job functions the bridge enqueues: their modules are imported when a worker starts.
JOB_FUNCTIONS = (APPLY_EVENT_JOB, RESYNC_JOB, RECONCILE_JOB)


def preload_jobs() -> None:
    """Import every job function now, so that no job pays for an import."""
    for path in JOB_FUNCTIONS:
        module, _, name = path.rpartition(".")
        getattr(importlib.import_module(module), name)


def run(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty).

    RQ's loop quits when Redis stops answering (or answers too slowly) in the middle of
    it; this one starts it again once Redis is back, so a Redis restart never needs a
    worker restart. A loop that keeps quitting at once while Redis answers has met a
    bug: after ``MAX_QUICK_RESTARTS`` that is an error exit (the platform restarts the
    process, and its log shows why).
    """
    connection = connect(settings)
    start(settings, connection)
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
        # A loop that quit mid-job left nothing running (the job ran in this thread):
        # its execution expires and the job is recovered as a dead worker's.
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


def start(settings: Settings, connection: redis.Redis) -> None:
    """Everything before the first job: Redis answers, Sotion accepts the key and URL, the
    runtime is built (the products file read, its groups found in Sotion), the banner.

    A worker that cannot do its jobs refuses to start, with a SettingsError or StartupError
    (``bridge.startup``) whose one line names the variable or the service: a wrong key
    found here is not found later by every job failing with 401.
    """
    if settings.sotion_api_key is None:
        raise SettingsError("SOTION_API_KEY is required to run workers")
    assert settings.redis_url is not None  # connect() required it
    check_redis(connection, settings.redis_url)
    site = check_sotion(settings)
    with quiet_sotion():
        built = runtime.configure(settings, connection)
    log_banner(settings, "worker", built.catalog)
    log.info("sotion: site %s (%s) at %s", site.id, site.domain or "-", settings.sotion_api_url)
    preload_jobs()
    warn_about_persistence(connection)


class WorkerLoopError(RuntimeError):
    """RQ's work loop stopped although Redis answers: a bug, not an outage."""


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
