"""Reconciles racing webhook jobs and people: what a run must never undo or lose.

Each case makes something happen at the worst moment: while the run lists Sotion (after
its snapshot, before its writes), or while a job holds an email's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from rq import Queue

from bridge.events import EntitlementState, MembershipEvent
from bridge.intake import Intake
from bridge.settings import Settings, retry_policy
from bridge.sotion import SotionClient
from tests.reconcile.scripted import ScriptedSource, observed
from workers import runtime as worker_runtime
from workers.reconcile import Reconciler
from workers.sync import Applier

Run = Callable[..., Any]


@pytest.fixture
def run(runtime: worker_runtime.Runtime, queue: Queue, settings: Settings) -> Run:
    """``run(kind, *events)``: a backfill or reconcile of one scripted page."""

    def go(kind: str, *events: MembershipEvent, **options: Any) -> Any:
        reconciler = Reconciler(
            runtime.store,
            runtime.applier,
            runtime.sotion,
            Intake(queue, retry_policy(settings)),
            {"stripe": ScriptedSource([list(events)])},
        )
        return getattr(reconciler, kind)(["stripe"], **options)

    return go


@pytest.fixture
def job(runtime: worker_runtime.Runtime, sotion_api: SotionClient) -> Applier:
    """A webhook job's applier, with a Sotion client of its own."""
    return Applier(
        runtime.store,
        sotion_api,
        runtime.applier.resolver,
        policy=runtime.applier.policy,
        catalog=runtime.applier.catalog,
    )


@contextmanager
def after_the_listing(
    runtime: worker_runtime.Runtime, meanwhile: Callable[[], None]
) -> Iterator[None]:
    """Run ``meanwhile`` once, right after the run's first page of Sotion members."""
    original = runtime.sotion.list_members
    done: list[bool] = []

    def listing(*args: Any, **kwargs: Any) -> Any:
        page = original(*args, **kwargs)
        if not done and not kwargs.get("email"):
            done.append(True)
            meanwhile()
        return page

    runtime.sotion.list_members = listing  # type: ignore[method-assign]
    try:
        yield
    finally:
        runtime.sotion.list_members = original  # type: ignore[method-assign]


def _job_applies(job: Applier, runtime: worker_runtime.Runtime, event: MembershipEvent) -> None:
    assert event.email is not None and event.entitlement is not None
    job.apply(event)  # under the email's lock, as a webhook job


def test_a_member_a_job_creates_during_the_listing_stays_the_bridges(
    run: Run, job: Applier, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    bought = observed("m@example.com", "sub_m", at=1000.0)
    with after_the_listing(runtime, lambda: _job_applies(job, runtime, bought)):
        report = run("backfill", bought)
    assert report.sync.failures == []
    assert runtime.store.member_record("m@example.com").bridge_paid
    run("reconcile", observed("m@example.com", "sub_m", EntitlementState.ENDED, at=2000.0))
    member = sotion_api.find_member_by_email("m@example.com")
    assert member is not None and not member.paid  # the bridge paid them: it un-pays them


def test_a_record_a_job_changes_during_the_listing_is_not_overwritten(
    run: Run, job: Applier, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    run("backfill", observed("e@example.com", "sub_old", EntitlementState.ENDED, at=1000.0))
    sotion_api.create_member("e@example.com", paid=False)  # signs up by hand later
    new = observed("e@example.com", "sub_new", at=3000.0, event_id="evt_new")
    with after_the_listing(runtime, lambda: _job_applies(job, runtime, new)):
        run("reconcile")
    assert runtime.store.member_record("e@example.com").bridge_paid
    run("reconcile", observed("e@example.com", "sub_new", EntitlementState.ENDED, at=4000.0))
    member = sotion_api.find_member_by_email("e@example.com")
    assert member is not None and not member.paid


def test_a_member_who_changed_their_login_email_is_found_by_id(
    run: Run, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    run("backfill", observed("a@example.com", "sub_a", at=1000.0))
    member = sotion_api.find_member_by_email("a@example.com")
    assert member is not None
    sotion_api.update_member(member.id, email="b@example.com")
    report = run("reconcile")
    assert report.sync.changes == []  # no second account for the old address
    run("reconcile", observed("a@example.com", "sub_a", EntitlementState.ENDED, at=2000.0))
    assert [(m.email, m.paid) for m in sotion_api.iter_members()] == [("b@example.com", False)]


def test_an_email_a_job_holds_is_done_once_the_job_lets_it_go(
    run: Run, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    taken = threading.Event()

    def hold() -> None:  # longer than a job's own wait for a lock (15 s, shortened here)
        with runtime.store.email_lock("busy@example.com"):
            taken.set()
            threading.Event().wait(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    events = [observed("busy@example.com", "sub_b")]
    events += [observed(f"free{i}@example.com", f"sub_{i}") for i in range(3)]
    report = run("backfill", *events)
    holder.join()
    assert {m.email for m in sotion_api.iter_members()} == {
        "busy@example.com",
        *(f"free{i}@example.com" for i in range(3)),
    }
    assert report.providers[0].skipped == {} and report.sync.failures == []


def test_an_adoption_of_an_email_a_job_holds_is_stored_once_it_is_free(
    run: Run, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    member = sotion_api.create_member("comp@example.com", paid=True)
    run("backfill", observed("comp@example.com", "sub_c", at=1000.0))
    taken = threading.Event()

    def hold() -> None:
        with runtime.store.email_lock("comp@example.com"):
            taken.set()
            threading.Event().wait(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    report = run("backfill", adopt_paid=True)
    holder.join()
    assert report.sync.adopted == 1
    assert runtime.store.member_record("comp@example.com").bridge_paid
    run("reconcile", observed("comp@example.com", "sub_c", EntitlementState.ENDED, at=2000.0))
    assert not sotion_api.get_member(member.id).paid


def test_a_run_stops_rather_than_drop_an_email_a_job_never_lets_go(
    run: Run, runtime: worker_runtime.Runtime, sotion_api: SotionClient, monkeypatch
) -> None:
    from workers import store as store_module
    from workers.lease import LeaseBusyError

    monkeypatch.setattr(store_module, "RUN_LOCK_WAIT_SECONDS", 0.5)
    runtime.redis.set(runtime.store.lock_key("stuck@example.com"), "a live job", px=10_000)
    with pytest.raises(LeaseBusyError):
        run("backfill", observed("stuck@example.com", "sub_s"))
    # Nothing was marked done: the cursor still points at the page, to merge it again.
    assert runtime.store.owner_of("stripe:sub_s") is None
