"""Planning from what the bridge wrote, against what it did not write: hand changes it
never saw, records from before `seen` and `bridge_paid`, a reconcile's listing racing
jobs, a member deleted during a reconcile, a signal landing while a lease is taken.

Each test runs the real writer, store and bulk sync against real Redis and the sandbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from bridge.events import DisputeState, EntitlementState
from bridge.ledger import Dispute, Entitlement
from bridge.membership import DesiredMember, desired_member, newly_grants
from bridge.sotion import SotionClient
from workers import lease as lease_module
from workers.bulk_sync import BulkSync
from workers.lease import Lease
from workers.store import PREFIX, Store
from workers.sync import Applier

EMAIL = "racer@example.com"
T0 = 1_800_000_000.0


@pytest.fixture
def store(redis_conn: redis.Redis) -> Store:
    return Store(redis_conn)


@pytest.fixture
def applier(store: Store, sotion_api: SotionClient) -> Applier:
    return Applier(store, sotion_api, resolver=None)  # type: ignore[arg-type]


def entitlement(key: str, state: EntitlementState, at: float, **fields: Any) -> Entitlement:
    return Entitlement(
        key=key, provider="stripe", state=state, occurred_at=at, event_id=f"evt_{at}", **fields
    )


def job(applier: Applier, record: Entitlement, email: str = EMAIL) -> list[str]:
    """What Applier.apply does once the event is resolved: merge, desire, write."""
    store = applier.store
    with store.email_lock(email) as lease:
        ledger, member = store.member_state(email)
        before = ledger.get(record.key)
        store.write_ledger(email, [record], [])
        ledger[record.key] = record
        desired = desired_member(ledger.values(), applier.policy, None, now=time.time())
        grant = newly_grants(before, record, applier.policy, time.time())
        return applier.writer.write(email, desired, member, guard=lease.ensure, reassert=grant)


@contextmanager
def during_listing(
    sotion_api: SotionClient, before: Callable[[], None], after: Callable[[], None]
) -> Iterator[None]:
    """Run ``before`` and ``after`` around the bulk sync's listing of the site."""
    listed = sotion_api.list_members

    def listing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("email"):
            return listed(*args, **kwargs)
        before()
        page = listed(*args, **kwargs)
        after()
        return page

    sotion_api.list_members = listing  # type: ignore[method-assign]
    try:
        yield
    finally:
        sotion_api.list_members = listed  # type: ignore[method-assign]


def test_a_block_made_by_hand_is_not_claimed_by_a_dispute_the_bridge_applies(
    applier: Applier, store: Store, sotion_api: SotionClient
) -> None:
    job(applier, entitlement("stripe:pi_1", EntitlementState.ACTIVE, T0))
    member_id = store.member_record(EMAIL).id
    assert member_id is not None
    sotion_api.update_member(member_id, status="blocked")  # by hand, unseen by the bridge

    opened = (Dispute("dp_1", DisputeState.OPEN, T0 + 1),)
    disputed = job(
        applier, entitlement("stripe:pi_1", EntitlementState.ACTIVE, T0, disputes=opened)
    )
    won = (Dispute("dp_1", DisputeState.WON, T0 + 2),)
    job(applier, entitlement("stripe:pi_1", EntitlementState.ACTIVE, T0, disputes=won))

    assert "patch:status=blocked" not in disputed  # read first: it was blocked already
    assert store.member_record(EMAIL).bridge_blocked is False
    assert sotion_api.get_member(member_id).status == "blocked"  # the hand block stays


def test_a_group_added_by_hand_is_not_claimed_when_a_purchase_grants_it_too(
    store: Store, sotion_api: SotionClient
) -> None:
    group = sotion_api.create_access_group("VIP").id
    writer = Applier(store, sotion_api, resolver=None).writer  # type: ignore[arg-type]
    writer.write(EMAIL, DesiredMember(paid=True, blocked=False), store.member_record(EMAIL))
    member_id = store.member_record(EMAIL).id
    assert member_id is not None
    sotion_api.add_group_member(group, member_id)  # by hand

    granted = DesiredMember(paid=True, blocked=False, groups=frozenset({group}))
    assert writer.write(EMAIL, granted, store.member_record(EMAIL)) == [f"add-group:{group}"]
    assert store.member_record(EMAIL).groups == frozenset()  # the 409: it was there
    ended = DesiredMember(paid=False, blocked=False)
    assert writer.write(EMAIL, ended, store.member_record(EMAIL)) == ["patch:paid=False"]

    assert sotion_api.get_member(member_id).access_group_ids == frozenset({group})


def test_a_comp_given_after_the_bridge_unpaid_is_not_taken_over_by_a_new_purchase(
    applier: Applier, store: Store, sotion_api: SotionClient
) -> None:
    job(applier, entitlement("stripe:pi_1", EntitlementState.ACTIVE, T0))
    job(applier, entitlement("stripe:pi_1", EntitlementState.ENDED, T0 + 1))
    member_id = store.member_record(EMAIL).id
    assert member_id is not None
    sotion_api.update_member(member_id, paid=True)  # a comp, by hand

    assert job(applier, entitlement("stripe:pi_2", EntitlementState.ACTIVE, T0 + 2)) == []
    assert job(applier, entitlement("stripe:pi_2", EntitlementState.ENDED, T0 + 3)) == []

    assert store.member_record(EMAIL).bridge_paid is False
    assert sotion_api.get_member(member_id).paid is True


def test_a_reconcile_keeps_a_record_from_before_bridge_paid_the_bridges(
    applier: Applier, store: Store, redis_conn: redis.Redis, sotion_api: SotionClient
) -> None:
    member = sotion_api.create_member(EMAIL, paid=True)  # made by an older version
    redis_conn.hset(
        f"{PREFIX}member:{EMAIL}", mapping={"id": member.id, "bridge_blocked": "0", "groups": "[]"}
    )
    store.write_ledger(EMAIL, [entitlement("stripe:sub_1", EntitlementState.ACTIVE, T0)], [])

    BulkSync(store, applier, sotion_api).run()
    assert store.member_record(EMAIL).bridge_paid is True
    assert store.member_record(EMAIL).seen is not None  # what the listing saw is kept
    ended = job(applier, entitlement("stripe:sub_1", EntitlementState.ENDED, T0 + 1))

    assert ended == ["patch:paid=False"]
    assert sotion_api.get_member(member.id).paid is False


def test_a_listing_that_jobs_overtook_twice_stores_nothing(
    applier: Applier, store: Store, sotion_api: SotionClient
) -> None:
    # Grant then revoke around the listing: the record ends as it was read, but the
    # listing saw the member paid in between (what it saw is older than the record).
    job(applier, entitlement("stripe:pi_1", EntitlementState.ACTIVE, T0))
    job(applier, entitlement("stripe:pi_1", EntitlementState.ENDED, T0 + 1))
    grant = entitlement("stripe:pi_2", EntitlementState.ACTIVE, T0 + 2)
    revoke = entitlement("stripe:pi_2", EntitlementState.ENDED, T0 + 3)

    with during_listing(sotion_api, lambda: job(applier, grant), lambda: job(applier, revoke)):
        BulkSync(store, applier, sotion_api).run()
    bought = job(applier, entitlement("stripe:pi_3", EntitlementState.ACTIVE, T0 + 4))

    assert bought == ["patch:paid=True"]
    member = sotion_api.find_member_by_email(EMAIL)
    assert member is not None and member.paid is True


def test_a_member_deleted_during_a_reconcile_is_reported_and_the_others_repaired(
    applier: Applier, store: Store, sotion_api: SotionClient
) -> None:
    emails = ["gone@example.com", "kept@example.com"]
    for email in emails:
        job(applier, entitlement(f"stripe:sub_{email[0]}", EntitlementState.ACTIVE, T0), email)
        opened = (Dispute("dp_1", DisputeState.OPEN, T0 + 1),)
        disputed = entitlement(
            f"stripe:sub_{email[0]}", EntitlementState.ACTIVE, T0, disputes=opened
        )
        store.write_ledger(email, [disputed], [])
    gone = store.member_record(emails[0]).id
    assert gone is not None

    with during_listing(sotion_api, lambda: None, lambda: sotion_api.delete_member(gone)):
        report = BulkSync(store, applier, sotion_api).run()

    assert [f.split(":")[0] for f in report.failures] == ["g***@example.com"]
    kept = sotion_api.find_member_by_email(emails[1])
    assert kept is not None and kept.status == "blocked"


def test_a_signal_raised_while_the_lease_is_taken_gives_it_back(
    redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Interrupted(BaseException):
        """What a job timeout or a stop raises in the job."""

    class Thread:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def start(self) -> None:
            raise Interrupted

        def join(self, timeout: float | None = None) -> None:
            pass

    monkeypatch.setattr(lease_module.threading, "Thread", Thread)
    lease = Lease(redis_conn, f"{PREFIX}lock:{EMAIL}", ttl=10, wait=0)

    with pytest.raises(Interrupted):
        lease.acquire()

    assert redis_conn.exists(f"{PREFIX}lock:{EMAIL}") == 0
