"""Worker reliability (DESIGN §5): transient and permanent Sotion failures, rate limits,
per-email serialization, the shared rate budget, and a worker killed mid-job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import JobStatus

from bridge.admin import failed_jobs
from bridge.events import EntitlementState, MembershipEvent
from bridge.ledger import Entitlement, merge
from bridge.products import Catalog, parse_catalog
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import Member, RateLimit, RateLimitedError, SotionClient, TransientError
from tests.conftest import SANDBOX_KEY, SandboxFactory, drain
from tests.test_stripe_flow import (
    EMAIL,
    T0,
    checkout_payment,
    count_members,
    deliver,
    job_of,
    member_of,
    record_requests,
)
from workers import runtime as worker_runtime
from workers.budget import SharedBudget
from workers.groups import resolve_groups
from workers.lease import Lease, LeaseLostError
from workers.records import MemberRecord
from workers.recovery import requeue_abandoned
from workers.resolve import Resolver
from workers.store import LOCK_TIMEOUT_SECONDS, PREFIX, Store
from workers.sync import Applier, Outcome

ROOT = Path(__file__).resolve().parent.parent
# What a worker dyno runs (the CLI entry point may not exist yet).
WORKER_COMMAND = (
    "from workers.work_loop import run; from bridge.settings import Settings; "
    "run(Settings.from_env())"
)

ClientFor = Callable[[SandboxServer], SotionClient]


@pytest.fixture
def client_for() -> Iterator[ClientFor]:
    """v1 clients for extra sandboxes, closed after the test."""
    made: list[SotionClient] = []

    def connect(server: SandboxServer) -> SotionClient:
        api = SotionClient.connect(server.url, SANDBOX_KEY, timeout=(2.0, 5.0))
        made.append(api)
        return api

    yield connect
    for api in made:
        api.close()


def use_settings(settings: Settings, redis_conn: redis.Redis, **changes: Any) -> None:
    """Reconfigure the worker runtime (what jobs use) with changed settings."""
    worker_runtime.configure(dataclasses.replace(settings, **changes), redis_conn)


def grant(
    entitlement: str = "stripe:pi_1", *, at: float = T0, email: str = EMAIL
) -> MembershipEvent:
    """A normalized event that makes an entitlement active."""
    return MembershipEvent(
        provider="stripe",
        event_id=f"evt_{entitlement}_{at}",
        event_type="checkout.session.completed",
        occurred_at=at,
        email=email,
        entitlement=entitlement,
        state=EntitlementState.ACTIVE,
    )


def merge_first(event: MembershipEvent) -> Entitlement:
    """The entitlement a first event records."""
    assert event.entitlement is not None
    merged = merge(None, event, event.entitlement)
    assert merged is not None
    return merged


# -- transient and permanent Sotion failures --------------------------------------------


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_sotion_server_error_once_is_retried_and_the_job_ends_applied(
    kind: str,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    sotion.faults.inject(kind, count=1)

    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.retries_left == 2  # one of the three retries was used
    assert member_of(sotion_api).paid is True
    assert count_members(sotion_api) == 1


def test_sotion_failing_beyond_the_retries_fails_the_job_with_the_status_in_the_reason(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> None:
    sotion.faults.inject("503", count=settings.retry_attempts + 5)
    requests = record_requests(sotion)

    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    sotion.faults.clear()

    job = job_of(queue, event_id)
    assert job.get_status() == JobStatus.FAILED
    reasons = {failed.id: failed.reason for failed in failed_jobs(queue)}
    assert "TransientError" in reasons[job.id]
    assert "status=503" in reasons[job.id]
    assert len(requests.calls) == 1 + settings.retry_attempts
    assert sotion_api.find_member_by_email(EMAIL) is None


def test_wrong_sotion_key_fails_the_job_after_one_attempt_naming_the_auth_error(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion: SandboxServer,
) -> None:
    use_settings(settings, redis_conn, sotion_api_key="so_wrong")
    requests = record_requests(sotion)

    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.get_status() == JobStatus.FAILED
    reasons = {failed.id: failed.reason for failed in failed_jobs(queue)}
    assert "AuthError" in reasons[job.id]
    assert "status=401" in reasons[job.id]
    assert len(requests.calls) == 1
    assert sotion.state.members_snapshot() == []


# -- rate limits ------------------------------------------------------------------------


def long_window(now: float) -> int:
    """A window of about an hour whose current period ends well beyond any inline wait.

    The sandbox aligns windows on multiples of their length; near the end of one the
    reset would be short, so pick a length whose current period has long to run.
    """
    for window in range(3600, 7200, 300):
        if window - now % window > 4 * worker_runtime.INLINE_RATE_LIMIT_WAIT_SECONDS:
            return window
    raise AssertionError("unreachable: consecutive window lengths cannot all end now")


def test_rate_limit_with_a_long_reset_schedules_the_job_for_after_the_reset(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sandbox_factory: SandboxFactory,
    client_for: ClientFor,
) -> None:
    limited = sandbox_factory(rate_limit=f"1/{long_window(time.time())}")
    use_settings(settings, redis_conn, sotion_api_url=limited.url)
    spender = client_for(limited)
    spender.list_members(limit=1)  # the window's only request
    assert spender.rate_limit is not None and spender.rate_limit.reset_at is not None
    reset_wait = spender.rate_limit.reset_at - time.time()

    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.id in queue.scheduled_job_registry.get_job_ids()
    assert job.id not in queue.failed_job_registry.get_job_ids()
    assert job.retry_intervals is not None
    assert job.retry_intervals[0] >= reset_wait - 1
    scheduled_at = queue.scheduled_job_registry.get_scheduled_time(job).timestamp()
    assert scheduled_at >= time.time() + reset_wait - 5
    assert limited.state.members_snapshot() == []


def test_rate_limit_with_a_short_reset_is_waited_out_inline_and_applied(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sandbox_factory: SandboxFactory,
    client_for: ClientFor,
) -> None:
    # One-second windows: the injected 429 says to retry within a second.
    limited = sandbox_factory(rate_limit="1000/1")
    use_settings(settings, redis_conn, sotion_api_url=limited.url)
    limited.faults.inject("429", count=1)

    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.retries_left == 3  # no RQ retry: the wait happened inside the call
    assert limited.faults.pending() == []
    assert member_of(client_for(limited)).paid is True


def test_hang_longer_than_the_read_timeout_is_retried_and_applied(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sandbox_factory: SandboxFactory,
    client_for: ClientFor,
) -> None:
    slow = sandbox_factory(hang_seconds=5)
    use_settings(settings, redis_conn, sotion_api_url=slow.url, sotion_timeout=(1.0, 1.0))
    slow.faults.inject("hang", count=1, method="POST")  # the create, the job's first call

    started = time.monotonic()
    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    assert job.get_status() == JobStatus.FINISHED
    assert job.retries_left == 2
    assert time.monotonic() - started < 5  # gave up on the hung call, did not wait it out
    sotion_api = client_for(slow)
    assert member_of(sotion_api).paid is True
    assert count_members(sotion_api) == 1


# -- the member someone else made or removed --------------------------------------------


def test_stale_cached_member_id_is_looked_up_by_email_and_patched(
    redis_conn: redis.Redis, sotion_api: SotionClient
) -> None:
    store = Store(redis_conn)
    applier = Applier(store, sotion_api, Resolver(store))
    existing = sotion_api.create_member(EMAIL, paid=False)
    store.save_member_record(EMAIL, MemberRecord(id="00000000-0000-4000-8000-000000000000"))

    outcome = applier.apply(grant())

    assert outcome.actions == ["patch:paid=True"]
    assert member_of(sotion_api).paid is True
    assert count_members(sotion_api) == 1
    assert store.member_record(EMAIL).id == existing.id
    assert store.member_record(EMAIL).bridge_paid is True  # the bridge set paid=true


class SignupRaceClient(SotionClient):
    """A client whose first create meets a member someone else created just before it."""

    rival: SotionClient | None = None
    rival_paid = False  # whether the rival makes the member paid (a comp, say)
    creates = 0
    lookups = 0

    def create_member(self, email: str, **fields: Any) -> Member:
        """The rival signs up first, then our create (a 409)."""
        self.creates += 1
        if self.creates == 1:
            assert self.rival is not None
            self.rival.create_member(email, display_name="Signed Up", paid=self.rival_paid)
        return super().create_member(email, **fields)

    def find_member_by_email(self, email: str) -> Member | None:
        """Count the lookups."""
        self.lookups += 1
        return super().find_member_by_email(email)


def test_conflict_on_create_looks_the_member_up_and_patches_it(
    redis_conn: redis.Redis, sotion: SandboxServer, sotion_api: SotionClient
) -> None:
    racing = SignupRaceClient.connect(sotion.url, SANDBOX_KEY)
    racing.rival = sotion_api
    store = Store(redis_conn)
    applier = Applier(store, racing, Resolver(store))

    try:
        outcome = applier.apply(grant())
    finally:
        racing.close()

    assert outcome.actions == ["create:conflict", "patch:paid=True"]
    member = member_of(sotion_api)
    assert member.paid is True
    assert member.display_name == "Signed Up"
    assert count_members(sotion_api) == 1
    record = store.member_record(EMAIL)
    assert (record.id, record.bridge_paid, record.bridge_blocked) == (member.id, True, False)


def test_member_someone_else_made_paid_during_our_create_stays_paid_after_a_refund(
    redis_conn: redis.Redis, sotion: SandboxServer, sotion_api: SotionClient
) -> None:
    racing = SignupRaceClient.connect(sotion.url, SANDBOX_KEY)
    racing.rival = sotion_api
    racing.rival_paid = True
    store = Store(redis_conn)
    applier = Applier(store, racing, Resolver(store))

    try:
        first = applier.apply(grant())
        assert store.member_record(EMAIL).bridge_paid is False  # the 409 made it theirs
        ended = applier.apply(dataclasses.replace(grant(at=T0 + 100), state=EntitlementState.ENDED))
    finally:
        racing.close()

    assert first.actions == ["create:conflict"]
    assert ended.actions == []
    assert member_of(sotion_api).paid is True


class SignupRaceThenOutageClient(SignupRaceClient):
    """A SignupRaceClient whose lookup after the 409 fails (Sotion times out)."""

    def find_member_by_email(self, email: str) -> Member | None:
        """A transient failure."""
        self.lookups += 1
        raise TransientError("Sotion timed out listing members")


def test_failed_lookup_after_a_create_conflict_leaves_the_member_record_disowned(
    redis_conn: redis.Redis, sotion: SandboxServer, sotion_api: SotionClient, course: Catalog
) -> None:
    racing = SignupRaceThenOutageClient.connect(sotion.url, SANDBOX_KEY)
    racing.rival = sotion_api
    racing.rival_paid = True  # someone else made them paid (a comp, say)
    store = Store(redis_conn)
    try:
        with pytest.raises(TransientError):
            Applier(store, racing, Resolver(store), catalog=course).apply(course_grant())
    finally:
        racing.close()

    assert (racing.creates, racing.lookups) == (1, 1)  # the 409, then the failed lookup
    record = store.member_record(EMAIL)
    # Nothing on the member is the bridge's: not the paid, not the groups it meant to add.
    assert (record.bridge_paid, record.bridge_blocked, record.groups) == (False, False, frozenset())

    # The job's retry (Sotion answers again), then a refund of the purchase.
    applier = Applier(store, sotion_api, Resolver(store), catalog=course)
    applier.apply(course_grant())
    applier.apply(dataclasses.replace(course_grant(at=T0 + 100), state=EntitlementState.ENDED))

    member = sotion_api.get_member(member_of(sotion_api).id)
    assert member.paid is True  # the comp survives the refund
    assert member.access_group_ids == frozenset()  # the groups the bridge added are gone


class LostReplyClient(SotionClient):
    """A client whose member updates reach Sotion but whose replies are lost."""

    def update_member(self, member_id: str, **fields: Any) -> Member:
        """Apply the update, then fail as a dropped connection would."""
        super().update_member(member_id, **fields)
        raise TransientError("connection reset after the request was sent")


def test_paid_set_by_a_call_whose_reply_was_lost_is_still_the_bridges(
    redis_conn: redis.Redis, sotion: SandboxServer, sotion_api: SotionClient
) -> None:
    # The bridge records paid=true as its own before the call: had it recorded it after,
    # this member would look paid by hand and never be un-paid.
    existing = sotion_api.create_member(EMAIL, paid=False)
    store = Store(redis_conn)
    lossy = LostReplyClient.connect(sotion.url, SANDBOX_KEY)
    try:
        with pytest.raises(TransientError):
            Applier(store, lossy, Resolver(store)).apply(grant())
    finally:
        lossy.close()
    assert member_of(sotion_api).paid is True
    assert store.member_record(EMAIL).bridge_paid is True

    outcome = Applier(store, sotion_api, Resolver(store)).apply(
        dataclasses.replace(grant(at=T0 + 100), state=EntitlementState.ENDED)
    )

    assert outcome.actions == ["patch:paid=False"]
    assert sotion_api.get_member(existing.id).paid is False


# -- per-email serialization ------------------------------------------------------------


def test_concurrent_events_of_one_email_are_serialized_and_create_one_member(
    runtime: worker_runtime.Runtime, sotion: SandboxServer, sotion_api: SotionClient
) -> None:
    # Slow Sotion down so unserialized lookups would both miss and both create.
    sotion.faults.latency = 0.2
    barrier = threading.Barrier(2)
    outcomes: list[Outcome] = []
    errors: list[BaseException] = []

    def apply(event: MembershipEvent) -> None:
        barrier.wait(timeout=5)
        try:
            outcomes.append(runtime.applier.apply(event))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=apply, args=(grant(key),))
        for key in ("stripe:pi_course", "stripe:sub_club")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert errors == []
    assert len(outcomes) == 2
    creates = [a for outcome in outcomes for a in outcome.actions if a.startswith("create")]
    assert creates == ["create:paid=True"]
    assert count_members(sotion_api) == 1
    assert member_of(sotion_api).paid is True
    assert set(runtime.store.entitlements(EMAIL)) == {"stripe:pi_course", "stripe:sub_club"}


def test_apply_waits_while_another_job_holds_the_emails_lock(
    runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    finished: list[float] = []

    def apply() -> None:
        runtime.applier.apply(grant())
        finished.append(time.monotonic())

    waiter = threading.Thread(target=apply)
    with runtime.store.email_lock(EMAIL):
        waiter.start()
        time.sleep(0.6)
        assert waiter.is_alive()
        assert sotion_api.find_member_by_email(EMAIL) is None
        released = time.monotonic()
    waiter.join(timeout=10)

    assert not waiter.is_alive()
    assert len(finished) == 1 and finished[0] >= released
    assert member_of(sotion_api).paid is True


def test_apply_waits_out_the_email_lock_a_dead_run_left_and_then_applies(
    runtime: worker_runtime.Runtime, redis_conn: redis.Redis, sotion_api: SotionClient
) -> None:
    # Nothing takes a dead run's lease over (not even the same job's re-run): it expires.
    lock = f"{PREFIX}lock:{EMAIL}"
    redis_conn.set(lock, "dead-run", px=800)
    started = time.monotonic()

    outcome = runtime.applier.apply(grant())

    assert time.monotonic() - started >= 0.7
    assert outcome.actions == ["create:paid=True"]
    assert member_of(sotion_api).paid is True
    assert redis_conn.exists(lock) == 0


class StallingClient(SotionClient):
    """A client whose holder stalls after its first write: meanwhile the email's lease
    expires and another job takes it."""

    redis: redis.Redis | None = None
    rival: Lease | None = None
    writes: tuple[str, ...] = ()  # the Sotion writes that reached the sandbox

    def update_member(self, member_id: str, **fields: Any) -> Member:
        """Patch the member, then stall past the lease's TTL."""
        member = super().update_member(member_id, **fields)
        self.writes += ("patch",)
        assert self.redis is not None
        lock = f"{PREFIX}lock:{EMAIL}"
        self.redis.delete(lock)  # what the TTL does to a lease nobody renews in time
        self.rival = Lease(self.redis, lock, ttl=30, wait=0, label="rival")
        self.rival.acquire()
        return member

    def add_group_member(self, group_id: str, member_id: str) -> None:
        """Add the member to a group (never reached once the lease is lost)."""
        self.writes += ("add-group",)
        super().add_group_member(group_id, member_id)


@pytest.fixture
def course(sotion_api: SotionClient) -> Catalog:
    """A catalog whose price_course grants two sandbox groups (group names resolved)."""
    for name in ("Course", "Members"):
        sotion_api.create_access_group(name)
    catalog = parse_catalog(
        {
            "default_groups": ["Members"],
            "products": [{"stripe_prices": ["price_course"], "groups": ["Course"]}],
        }
    )
    return resolve_groups(catalog, sotion_api)


def course_grant(at: float = T0) -> MembershipEvent:
    """A purchase of the catalog's course."""
    return dataclasses.replace(grant(at=at), products=("price_course",))


def test_guard_that_refuses_before_the_first_write_leaves_sotion_untouched(
    redis_conn: redis.Redis, sotion: SandboxServer, sotion_api: SotionClient
) -> None:
    store = Store(redis_conn)
    store.save_entitlement(EMAIL, merge_first(grant()))
    requests = record_requests(sotion)

    def lost() -> None:
        raise LeaseLostError("the email's lock expired while held; retrying")

    with pytest.raises(LeaseLostError):
        Applier(store, sotion_api, Resolver(store)).sync_member(EMAIL, guard=lost)

    assert sotion.state.members_snapshot() == []
    assert requests.calls == []  # a new email is created without a lookup: refused first


def test_holder_whose_lease_was_taken_while_it_stalled_makes_no_further_write(
    redis_conn: redis.Redis,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    course: Catalog,
) -> None:
    existing = sotion_api.create_member(EMAIL, paid=False)
    store = Store(redis_conn)
    stalling = StallingClient.connect(sotion.url, SANDBOX_KEY)
    stalling.redis = redis_conn
    try:
        with pytest.raises(LeaseLostError):
            Applier(store, stalling, Resolver(store), catalog=course).apply(course_grant())
    finally:
        stalling.close()

    assert stalling.writes == ("patch",)  # the group writes after the stall were refused
    member = sotion_api.get_member(existing.id)
    assert member.paid is True
    assert member.access_group_ids == frozenset()
    assert stalling.rival is not None
    assert redis_conn.get(f"{PREFIX}lock:{EMAIL}") == stalling.rival.token.encode()
    stalling.rival.release()

    # The job's retry, holding the lease again, finishes what the stalled run began.
    outcome = Applier(store, sotion_api, Resolver(store), catalog=course).apply(course_grant())

    assert [a.split(":")[0] for a in outcome.actions] == ["add-group", "add-group"]
    assert sotion_api.get_member(existing.id).access_group_ids == course.group_references()


# -- the shared rate budget -------------------------------------------------------------

NOW = 1_800_000_000.0


def test_spent_shared_budget_makes_another_worker_sleep_until_the_reset(
    redis_conn: redis.Redis,
) -> None:
    sleeps: list[float] = []
    first_worker = SharedBudget(redis_conn, clock=lambda: NOW, sleep=sleeps.append)
    second_worker = SharedBudget(redis_conn, clock=lambda: NOW, sleep=sleeps.append)

    first_worker.record(RateLimit(limit=100, remaining=0, reset_at=NOW + 2))
    second_worker.acquire()

    assert sleeps == [pytest.approx(2.0, abs=0.01)]


def test_shared_budget_with_units_left_lets_calls_through_then_waits(
    redis_conn: redis.Redis,
) -> None:
    sleeps: list[float] = []
    budget = SharedBudget(redis_conn, clock=lambda: NOW, sleep=sleeps.append)
    budget.record(RateLimit(limit=100, remaining=2, reset_at=NOW + 3))

    budget.acquire()
    budget.acquire()
    assert sleeps == []
    budget.acquire()

    assert sleeps == [pytest.approx(3.0, abs=0.01)]


def test_spent_shared_budget_with_a_reset_beyond_the_max_wait_raises_rate_limited(
    redis_conn: redis.Redis,
) -> None:
    sleeps: list[float] = []
    budget = SharedBudget(redis_conn, clock=lambda: NOW, sleep=sleeps.append, max_wait=30)
    budget.record(RateLimit(limit=100, remaining=0, reset_at=NOW + 100))

    with pytest.raises(RateLimitedError) as raised:
        budget.acquire()

    assert raised.value.wait_seconds(now=NOW) == pytest.approx(100, abs=0.01)
    assert sleeps == []


def test_shared_budget_of_a_window_that_has_reset_is_forgotten(redis_conn: redis.Redis) -> None:
    sleeps: list[float] = []
    clock = [NOW]
    budget = SharedBudget(redis_conn, clock=lambda: clock[0], sleep=sleeps.append)
    budget.record(RateLimit(limit=100, remaining=0, reset_at=NOW + 2))

    clock[0] = NOW + 3
    budget.acquire()

    assert sleeps == []


# -- a worker killed mid-job ------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Poll until ``condition`` holds (fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def work_horses(pid: int) -> list[int]:
    """The work horses of worker ``pid``, if it forks any: each in a process group of its own."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in (int(c) for c in task.read_text().split()):
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(child) == child:
                        found.append(child)
    return found


def test_worker_killed_mid_job_loses_nothing(
    client: FlaskClient,
    queue: Queue,
    redis_conn: redis.Redis,
    redis_url: str,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sandbox_factory: SandboxFactory,
    client_for: ClientFor,
) -> None:
    slow = sandbox_factory(latency=3.0)  # every Sotion call takes 3 s: the kill lands mid-call
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SOTION_API_KEY": SANDBOX_KEY,
        "SOTION_API_URL": slow.url,
        "PYTHONPATH": str(ROOT),
    }
    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    job = job_of(queue, event_id)

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_COMMAND],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    horses: list[int] = []
    try:
        wait_for(lambda: job.get_status(refresh=True) == JobStatus.STARTED, timeout=20)
        time.sleep(1.0)
        horses = work_horses(worker.pid)  # none: the worker runs the job itself
        # The worker and its scheduler (and a forking worker's horse, a group of its own).
        os.killpg(worker.pid, signal.SIGKILL)
        for horse in horses:
            os.killpg(horse, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        for horse in horses:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(horse, signal.SIGKILL)
    assert job.get_status(refresh=True) == JobStatus.STARTED  # nobody will finish it

    # The dead run's email lease expires on its own, before the dead execution does: the
    # re-run, which starts only once that execution has expired, never waits for it.
    lock = f"{PREFIX}lock:{EMAIL}"
    assert 0 < redis_conn.pttl(lock) <= LOCK_TIMEOUT_SECONDS * 1000
    (expires_at,) = [
        score
        for entry, score in redis_conn.zrange(
            queue.started_job_registry.key, 0, -1, withscores=True
        )
        if queue.started_job_registry.parse_job_id(entry) == job.id
    ]
    assert time.time() + redis_conn.pttl(lock) / 1000 <= expires_at
    wait_for(lambda: redis_conn.exists(lock) == 0, timeout=LOCK_TIMEOUT_SECONDS + 2)

    # What the next worker's maintenance does once the dead execution has expired.
    assert requeue_abandoned(queue, now=expires_at + 1) == [job.id]
    slow.faults.latency = 0.0
    use_settings(settings, redis_conn, sotion_api_url=slow.url)
    started = time.monotonic()
    drain(queue)

    assert time.monotonic() - started < 3  # no wait for a lease
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.retries_left == settings.retry_attempts  # the re-run cost no retry
    sotion_api = client_for(slow)
    wait_for(lambda: count_members(sotion_api) >= 1, timeout=5)
    assert member_of(sotion_api).paid is True
    assert count_members(sotion_api) == 1
