"""What ``bridge status`` reports (``bridge/status.py`` reads it): frozen dataclasses with
no presentation, which the command line and the admin page both render."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

# A last event whose record is not "<job id>|<unix time>", or whose job cannot be read.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Problem:
    """One reason the bridge is not healthy: a machine code and a sentence."""

    code: str
    message: str


@dataclass(frozen=True)
class WorkerState:
    """One RQ worker registered on the bridge's queue (its Redis key has not expired)."""

    name: str
    state: str
    hostname: str | None
    pid: int | None
    started_at: datetime | None
    last_heartbeat: datetime | None
    heartbeat_age_seconds: float | None
    current_job: str | None


@dataclass(frozen=True)
class QueueState:
    """How many jobs are where."""

    queued: int
    started: int
    failed: int
    parked: int
    scheduled_retries: int
    next_retry_at: datetime | None
    scheduled_resyncs: int
    suspended: bool


@dataclass(frozen=True)
class BudgetState:
    """The Sotion rate budget every worker shares; unknown until Sotion answered a call."""

    known: bool
    remaining: int | None = None
    limit: int | None = None
    reset_at: datetime | None = None  # None once the window is over
    exhausted: bool = False


@dataclass(frozen=True)
class LastEvent:
    """A provider's last event the intake queued, and what became of its job."""

    job_id: str
    received_at: datetime | None
    outcome: str  # bridge/admin.py's words: applied, queued, retrying, failed, expired...
    next_attempt_at: datetime | None = None  # retrying, or parked until
    reason: str | None = None  # failed or parked: why (redacted)
    followed_job: str | None = None  # the parked job that carries the event on


@dataclass(frozen=True)
class ProviderState:
    """One provider: webhooks served, API readable, last event, last reconcile."""

    name: str
    enabled: bool
    api_configured: bool
    last_event: LastEvent | None
    last_reconcile_at: datetime | None


@dataclass(frozen=True)
class ReconcileState:
    """The scheduled reconcile and its counters."""

    interval_minutes: float  # 0: no scheduled reconcile
    running: bool  # a reconcile or backfill holds the run's lease now
    next_at: datetime | None  # when the waiting scheduled run is due
    runs_done: int
    runs_failed: int
    repairs: int
    last: LastRun | None = None  # the last complete backfill or reconcile


@dataclass(frozen=True)
class LastRun:
    """What the last complete backfill or reconcile (scheduled or by hand) did."""

    kind: str
    started_at: datetime | None
    dry_run: bool
    members: int  # members compared
    changed: int  # members written (dry: to be written)
    failures: int


@dataclass(frozen=True)
class DryRunState:
    """``BRIDGE_DRY_RUN`` and the Sotion writes dry runs planned and did not send."""

    on: bool
    writes: int = 0
    by_action: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusReport:
    """Everything ``bridge status`` shows; the sections Redis feeds are None without it."""

    checked_at: datetime
    healthy: bool
    problems: tuple[Problem, ...]
    dry_run: DryRunState
    providers: tuple[ProviderState, ...]
    workers: tuple[WorkerState, ...] = ()
    queue: QueueState | None = None
    budget: BudgetState | None = None
    reconcile: ReconcileState | None = None

    @property
    def redis_unreachable(self) -> bool:
        """Redis did not answer: nothing else could be read."""
        return any(p.code == "redis_unreachable" for p in self.problems)
