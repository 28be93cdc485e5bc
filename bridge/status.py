"""The bridge at a glance (``bridge status``, the admin page): workers, queues, retries,
failures, the Sotion rate budget, each provider's last event and reconcile, and a verdict.

Read-only: nothing here changes the bridge's state or runs RQ's registry cleanups (the
workers do those under their maintenance lock); RQ's listing of workers only forgets the
names of workers whose keys have expired. Each provider's last event is the one the intake
recorded (``bridge/intake_script.py``: ``bridge:last-event``, "<job id>|<unix time>"),
its job's state told as ``bridge member`` tells it (``bridge/admin.py``). The dataclasses
carry no presentation (``bridge/status_model.py``): the command line and the admin page
render the same report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, Worker
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.suspension import is_suspended
from rq.utils import as_text

from bridge import admin, metrics
from bridge.intake_script import LAST_EVENT_KEY
from bridge.queues import RECONCILE_REPORT_KEY, bridge_queue
from bridge.settings import Settings
from bridge.status_model import (
    UNKNOWN,
    BudgetState,
    DryRunState,
    LastEvent,
    LastRun,
    Problem,
    ProviderState,
    QueueState,
    ReconcileState,
    StatusReport,
    WorkerState,
)
from workers.budget import BUDGET_KEY
from workers.parking import PARKED_JOB_PREFIX
from workers.reconcile import RUN_LOCK_KEY
from workers.schedule import RECONCILE_JOB_PREFIX, current_job
from workers.store import PREFIX

# When the last complete reconcile or backfill of a provider started (workers/reconcile.py).
LAST_RECONCILE_KEY = PREFIX + "reconcile:last:{provider}"
# The jobs a past_due grace schedules (workers/runtime.py) start so.
RESYNC_JOB_PREFIX = "resync-"
PROVIDERS = ("stripe", "lemonsqueezy", "gumroad")
# The variable whose key lets a reconcile read each provider's API.
API_VARIABLES = {
    "stripe": "STRIPE_API_KEY",
    "lemonsqueezy": "LEMONSQUEEZY_API_KEY",
    "gumroad": "GUMROAD_ACCESS_TOKEN",
}


def status_report(connection: redis.Redis, settings: Settings, now: datetime) -> StatusReport:
    """Read the bridge's state from Redis at ``now`` (timezone-aware); a Redis failure is
    the report's one problem."""
    providers = _providers_offline(settings)
    try:
        return _read(bridge_queue(connection), settings, now, providers)
    except redis.RedisError as exc:
        problem = Problem("redis_unreachable", f"Redis is unreachable ({type(exc).__name__})")
        return StatusReport(now, False, (problem,), DryRunState(settings.dry_run), providers)


def _read(
    queue: Queue, settings: Settings, now: datetime, offline: tuple[ProviderState, ...]
) -> StatusReport:
    connection = queue.connection
    workers = _workers(queue, now)
    depth = _queue_state(queue)
    budget = _budget(_texts(connection.hgetall(BUDGET_KEY)), now)
    counters = {k: int(v) for k, v in _texts(connection.hgetall(metrics.METRICS_KEY)).items()}
    last_events = _last_events(queue, _texts(connection.hgetall(LAST_EVENT_KEY)))
    providers = tuple(
        ProviderState(
            p.name,
            p.enabled,
            p.api_configured,
            last_events.get(p.name),
            _moment(connection.get(LAST_RECONCILE_KEY.format(provider=p.name))),
        )
        for p in offline
    )
    scheduled = current_job(queue)
    reconcile = ReconcileState(
        interval_minutes=settings.reconcile_interval_minutes,
        running=bool(connection.exists(RUN_LOCK_KEY)),
        next_at=_scheduled_at(queue, scheduled) if scheduled is not None else None,
        runs_done=counters.get(metrics.field("bridge_reconciles", outcome="done"), 0),
        runs_failed=counters.get(metrics.field("bridge_reconciles", outcome="failed"), 0),
        repairs=counters.get(metrics.field("bridge_reconcile_repairs"), 0),
        last=_last_run(connection.get(RECONCILE_REPORT_KEY)),
    )
    by_action: dict[str, int] = {}
    for name, value in counters.items():
        counter, _, labels = name.partition("|")
        if counter == "bridge_dry_run_writes":
            action = labels.removeprefix("action=") or "-"
            by_action[action] = by_action.get(action, 0) + value
    dry_run = DryRunState(settings.dry_run, sum(by_action.values()), by_action)
    problems = _problems(workers, depth, budget)
    return StatusReport(
        now, not problems, problems, dry_run, providers, workers, depth, budget, reconcile
    )


def _providers_offline(settings: Settings) -> tuple[ProviderState, ...]:
    """What the settings alone say about each provider: (webhooks served, API readable)."""
    known = {
        "stripe": (settings.stripe_webhook_secrets, settings.stripe_api_key),
        "lemonsqueezy": (settings.lemonsqueezy_webhook_secrets, settings.lemonsqueezy_api_key),
        "gumroad": (settings.gumroad_webhook_token, settings.gumroad_access_token),
    }
    return tuple(
        ProviderState(p, bool(known[p][0]), bool(known[p][1]), None, None) for p in PROVIDERS
    )


def _workers(queue: Queue, now: datetime) -> tuple[WorkerState, ...]:
    found = []
    for worker in Worker.all(queue=queue, serializer=queue.serializer):
        beat = worker.last_heartbeat
        found.append(
            WorkerState(
                name=worker.name,
                state=str(worker.get_state()),
                hostname=worker.hostname,
                pid=worker.pid,
                started_at=worker.birth_date,
                last_heartbeat=beat,
                heartbeat_age_seconds=max((now - beat).total_seconds(), 0.0) if beat else None,
                current_job=worker.get_current_job_id(),
            )
        )
    return tuple(sorted(found, key=lambda w: w.name))


def _queue_state(queue: Queue) -> QueueState:
    registry = queue.scheduled_job_registry
    parked = resyncs = retries = 0
    next_retry: float | None = None
    # One read of the whole registry (ids and due times): a bridge schedules few jobs.
    entries: list[tuple[bytes, float]] = queue.connection.zrange(
        registry.key, 0, -1, withscores=True
    )  # type: ignore[assignment]
    for raw, due in entries:
        job_id = as_text(raw)
        if job_id.startswith(PARKED_JOB_PREFIX):
            parked += 1
        elif job_id.startswith(RESYNC_JOB_PREFIX):
            resyncs += 1
        elif not job_id.startswith(RECONCILE_JOB_PREFIX):
            retries += 1
            next_retry = due if next_retry is None else min(next_retry, due)
    return QueueState(
        queued=queue.count,
        started=queue.started_job_registry.get_job_count(cleanup=False),
        failed=queue.failed_job_registry.get_job_count(cleanup=False),
        parked=parked,
        scheduled_retries=retries,
        next_retry_at=_moment(next_retry),
        scheduled_resyncs=resyncs,
        suspended=bool(is_suspended(queue.connection)),
    )


def _texts(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}


def _budget(values: Mapping[str, str], now: datetime) -> BudgetState:
    """The budget as workers/budget.py keeps it: remaining, reset_at (unix), limit."""
    try:
        remaining = int(values["remaining"])
        reset_at = float(values["reset_at"])
        limit = int(values["limit"]) if values.get("limit") else None
    except (KeyError, ValueError):
        return BudgetState(known=False)
    if reset_at <= now.timestamp():
        # The window is over: the next call opens a new one with the last known limit.
        return BudgetState(True, limit, limit, None, False)
    return BudgetState(True, max(remaining, 0), limit, _moment(reset_at), remaining <= 0)


def _last_events(queue: Queue, records: Mapping[str, str]) -> dict[str, LastEvent]:
    """Each provider's last event, with its job's state as ``bridge member`` tells it."""
    found: dict[str, LastEvent] = {}
    readable: dict[str, tuple[str, datetime | None]] = {}
    for provider in PROVIDERS:
        job_id, sep, when = records.get(provider, "").partition("|")
        if sep:
            readable[provider] = (job_id, _moment(when))
        elif job_id:
            found[provider] = LastEvent(job_id, None, UNKNOWN)
    try:
        infos = admin.jobs_info(queue, [job_id for job_id, _ in readable.values()])
    except (DeserializationError, NoSuchJobError, ValueError):  # not jobs of this bridge
        infos = [admin.JobInfo(id=job_id, status=UNKNOWN) for job_id, _ in readable.values()]
    for (provider, (job_id, at)), info in zip(readable.items(), infos, strict=True):
        outcome = info.status
        if outcome == admin.QUEUED and info.failures:
            outcome = admin.RETRYING  # put back at once after a failure (a 0 s wait)
        found[provider] = LastEvent(
            job_id, at, outcome, info.next_attempt_at, info.reason, info.parked_as
        )
    return found


def _scheduled_at(queue: Queue, job: Job) -> datetime | None:
    due = queue.connection.zscore(queue.scheduled_job_registry.key, job.id)
    return _moment(due)


def _last_run(raw: bytes | str | None) -> LastRun | None:
    """The stored summary of the last run; None when there is none or it is unreadable."""
    if raw is None:
        return None
    try:
        summary = json.loads(raw)
        return LastRun(
            kind=str(summary["kind"]),
            started_at=_moment(summary.get("started_at")),
            dry_run=bool(summary.get("dry_run")),
            members=int(summary.get("members", 0)),
            changed=int(summary.get("changed", 0)),
            failures=int(summary.get("failures", 0)),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _moment(value: bytes | str | float | None) -> datetime | None:
    """A unix time as stored (bytes, text or a number) as a UTC datetime; None if it is not."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(
            float(as_text(value) if isinstance(value, bytes) else value), UTC
        )
    except (ValueError, OverflowError, OSError):
        return None


def _problems(
    workers: tuple[WorkerState, ...], depth: QueueState, budget: BudgetState
) -> tuple[Problem, ...]:
    until = f"{budget.reset_at:%H:%M:%S} UTC" if budget.reset_at is not None else "its reset"
    checks = [
        (not workers, "no_worker", "no worker alive: queued events wait until one runs"),
        (depth.suspended, "suspended", "workers are suspended (`rq resume` lifts it)"),
        (depth.failed, "failed_jobs", f"{depth.failed} failed job(s): see `bridge jobs failed`"),
        (
            depth.parked,
            "parked_jobs",
            f"{depth.parked} parked event(s) wait for their buyer: see `bridge jobs parked`",
        ),
        (budget.exhausted, "budget_exhausted", f"the Sotion rate budget is spent until {until}"),
    ]
    return tuple(Problem(code, message) for failing, code, message in checks if failing)
