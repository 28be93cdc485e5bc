"""Jobs write from what the bridge knows (issue 10, workers/member_writes.py), end to end.

A job plans against the member as the bridge last wrote it (``MemberRecord.id`` and
``seen``), not a fresh read: the calls each event kind makes are counted at the sandbox;
a member deleted by hand is looked up again within the same job; a record from before
``seen`` is read once; changes made by hand are left alone by jobs but re-asserted by a
new grant; a reconcile stores what it saw, so the next job plans against the truth.
Signed Stripe (and Gumroad) webhooks → intake → RQ job → worker → Sotion sandbox.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue

from bridge.admin import failed_jobs
from bridge.membership import MemberSnapshot, RevokeAction
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from tests import test_products_flow as products_flow
from tests.conftest import drain
from tests.reconcile import test_races as races
from tests.test_policies_flow import member_of
from tests.test_products_flow import (
    COURSE_PRICE,
    PRODUCTS,
    StartBridge,
    buy_stripe,
    ids,
    moved_subscription,
    post_gumroad,
)
from tests.test_stripe_flow import (
    EMAIL,
    T0,
    RequestLog,
    actions_of,
    charge,
    checkout_payment,
    checkout_subscription,
    deliver,
    invoice,
    job_of,
    record_requests,
    subscription,
)
from workers import runtime as worker_runtime
from workers.records import MemberRecord
from workers.store import PREFIX, Store

# Fixtures of other modules, used here as they are (tests/reconcile/test_races.py: a
# reconcile of the runtime against the sandbox; tests/test_products_flow.py: a bridge on a
# products file, and its groups).
run = races.run
start_bridge = products_flow.start_bridge
groups = products_flow.groups

MEMBERS = "/api/v1/members"
RECORD_KEY = f"{PREFIX}member:{EMAIL}"
VIP_PRICE = "price_vip"
# The suite's products file, and a plan whose price grants the VIP group.
VIP_PRODUCTS = PRODUCTS + f'\n[[products]]\nname = "VIP"\nstripe_prices = ["{VIP_PRICE}"]\n'
VIP_PRODUCTS += 'groups = ["VIP"]\n'

Call = tuple[str, str]
Delivery = tuple[str, dict[str, Any], int]


def jobs(
    client: FlaskClient, queue: Queue, requests: RequestLog, *deliveries: Delivery
) -> tuple[list[Call], list[str]]:
    """Deliver each ``(kind, obj, created)`` and run the jobs: the (method, path) of every
    Sotion call they made (the log is emptied first), and the events' ids."""
    requests.calls.clear()
    event_ids = [deliver(client, kind, obj, created=created) for kind, obj, created in deliveries]
    drain(queue)
    return [(verb, path) for verb, path, _ in requests.calls], event_ids


def subscribed(client: FlaskClient, queue: Queue, sotion_api: SotionClient) -> Member:
    """A paid subscription checkout, its job run: the member the bridge made."""
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    drain(queue)
    return member_of(sotion_api)


def record(redis_conn: redis.Redis) -> MemberRecord:
    """What the bridge stores about ``EMAIL``'s member."""
    return Store(redis_conn).member_record(EMAIL)


def renewal(created: int = T0 + 50, *, price: str | None = None) -> Delivery:
    """The live subscription's next invoice, paid (its lines of ``price``): nothing changes."""
    obj = invoice(invoice_id=f"in_renewal_{created}")
    if price is not None:
        for line in obj["lines"]["data"]:
            line["pricing"]["price_details"].update(price=price, product=f"prod_of_{price}")
    return ("invoice.paid", obj, created)


def ended(created: int) -> Delivery:
    """The subscription is deleted: the purchase ends."""
    obj = subscription("canceled", base="customer_subscription_deleted")
    return ("customer.subscription.deleted", obj, created)


def new_purchase(created: int, payment_intent: str = "pi_flow_1") -> Delivery:
    """A one-time purchase (another entitlement than the subscription)."""
    return ("checkout.session.completed", checkout_payment(payment_intent=payment_intent), created)


def group_path(group_id: str) -> str:
    return f"/api/v1/access-groups/{group_id}/members"


# -- calls per event kind ------------------------------------------------------------------


def test_each_event_kind_makes_only_the_calls_that_change_something(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    requests = record_requests(sotion)

    # A new email's first purchase: created directly, no lookup first.
    first = ("checkout.session.completed", checkout_subscription(), T0)
    calls, _ = jobs(client, queue, requests, first)
    assert calls == [("POST", MEMBERS)]
    member = member_of(sotion_api)
    assert member.paid is True

    # A renewal of the live subscription changes nothing: no call at all.
    calls, [renewed] = jobs(client, queue, requests, renewal())
    assert calls == []
    assert actions_of(queue, renewed) == []

    # A known member's change: one PATCH by the id the bridge knows, no read.
    calls, [ending] = jobs(client, queue, requests, ended(T0 + 100))
    assert calls == [("PATCH", f"{MEMBERS}/{member.id}")]
    assert requests.bodies("PATCH") == [{"paid": False}]
    assert actions_of(queue, ending) == ["patch:paid=False"]
    assert member_of(sotion_api).paid is False
    assert record(redis_conn) == MemberRecord(
        id=member.id, seen=MemberSnapshot(paid=False, blocked=False)
    )


# -- members deleted by hand -----------------------------------------------------------------


@pytest.mark.parametrize("signed_up_again", [False, True], ids=["re-created", "signed-up-again"])
def test_a_member_deleted_by_hand_is_looked_up_again_within_the_job(
    signed_up_again: bool,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    first = deliver(client, "checkout.session.completed", checkout_subscription(), created=T0)
    drain(queue)
    deleted = member_of(sotion_api)
    sotion_api.delete_member(deleted.id)
    signup = sotion_api.create_member(EMAIL, paid=False) if signed_up_again else None
    requests = record_requests(sotion)

    # A new purchase re-asserts paid=true: a PATCH by the known id, which is gone.
    calls, [event_id] = jobs(client, queue, requests, new_purchase(T0 + 100))

    found = member_of(sotion_api)
    assert found.paid is True
    assert signup is None or found.id == signup.id
    then = ("PATCH", f"{MEMBERS}/{found.id}") if signup else ("POST", MEMBERS)
    assert calls == [("PATCH", f"{MEMBERS}/{deleted.id}"), ("GET", MEMBERS), then]
    assert actions_of(queue, event_id) == (["patch:paid=True"] if signup else ["create:paid=True"])
    # Done in the job's first run: no retry was spent.
    job = job_of(queue, event_id)
    assert job.get_status() == "finished"
    assert job.retries_left == job_of(queue, first).retries_left
    assert record(redis_conn) == MemberRecord(
        id=found.id, bridge_paid=True, seen=MemberSnapshot(paid=True, blocked=False)
    )


def moved_to_vip(
    start_bridge: StartBridge,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    by_hand: Callable[[Member], object],
) -> tuple[Member, list[Call], str]:
    """A subscriber to the Course price (the member the bridge made), changed ``by_hand``;
    then the plan moves to the VIP price: nothing to patch, the VIP group to add first.
    The member as bought, the calls of the move's job and its event id."""
    client = start_bridge(VIP_PRODUCTS)
    buy_stripe(client)
    drain(queue)
    member = member_of(sotion_api)
    by_hand(member)
    requests = record_requests(sotion)
    moved = ("customer.subscription.updated", moved_subscription(VIP_PRICE), T0 + 50)
    calls, [event_id] = jobs(client, queue, requests, moved)
    return member, calls, event_id


def test_a_group_add_to_a_member_deleted_by_hand_re_creates_them_within_the_job(
    start_bridge: StartBridge,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    groups: dict[str, str],
    redis_conn: redis.Redis,
) -> None:
    deleted, calls, event_id = moved_to_vip(
        start_bridge, queue, sotion, sotion_api, lambda m: sotion_api.delete_member(m.id)
    )

    member = member_of(sotion_api)
    granted = ids(groups, "VIP", "Members")
    assert (member.paid, member.access_group_ids) == (True, granted)
    assert calls == [
        ("POST", group_path(groups["VIP"])),  # 404
        ("GET", f"{MEMBERS}/{deleted.id}"),  # 404: the member is gone, not the group
        ("GET", MEMBERS),
        ("POST", MEMBERS),
    ]
    assert actions_of(queue, event_id) == [
        "create:paid=True",
        *(f"add-group:{group_id}" for group_id in sorted(granted)),
    ]
    assert queue.failed_job_registry.count == 0
    assert record(redis_conn) == MemberRecord(
        id=member.id,
        bridge_paid=True,
        groups=granted,
        seen=MemberSnapshot(paid=True, blocked=False, groups=granted),
    )


def test_a_group_deleted_in_sotion_fails_the_job_and_keeps_what_the_bridge_set(
    start_bridge: StartBridge,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    groups: dict[str, str],
    redis_conn: redis.Redis,
) -> None:
    member, calls, event_id = moved_to_vip(
        start_bridge, queue, sotion, sotion_api,
        lambda _: sotion_api.delete_access_group(groups["VIP"]),
    )  # fmt: skip

    (failed,) = failed_jobs(queue)
    assert failed.id == job_of(queue, event_id).id
    assert "NotFoundError" in failed.reason
    assert "Access group not found" in failed.reason
    # Once (a 404 is not retried), and the member was found there: no lookup, no create.
    assert calls == [("POST", group_path(groups["VIP"])), ("GET", f"{MEMBERS}/{member.id}")]
    kept = record(redis_conn)
    assert (kept.id, kept.bridge_paid) == (member.id, True)
    assert ids(groups, "Course", "Members") <= kept.groups
    assert member_of(sotion_api).access_group_ids == ids(groups, "Course", "Members")


# -- what the bridge knows: records from before `seen`, and lost ids -------------------------


def test_a_record_from_before_seen_is_read_once_then_cached(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    member = subscribed(client, queue, sotion_api)
    # The record as the release before `seen` wrote it.
    redis_conn.delete(RECORD_KEY)
    redis_conn.hset(
        RECORD_KEY,
        mapping={"id": member.id, "bridge_blocked": "0", "bridge_paid": "1", "groups": "[]"},
    )
    requests = record_requests(sotion)

    calls, _ = jobs(client, queue, requests, renewal())
    assert calls == [("GET", f"{MEMBERS}/{member.id}")]
    assert record(redis_conn).seen == MemberSnapshot(paid=True, blocked=False)

    calls, _ = jobs(client, queue, requests, ended(T0 + 100))
    assert calls == [("PATCH", f"{MEMBERS}/{member.id}")]
    assert member_of(sotion_api).paid is False


def test_a_member_whose_id_a_crash_lost_is_looked_up_and_stays_the_bridges(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    # The bridge claimed paid=true, created the member, and died before storing the id.
    made = sotion_api.create_member(EMAIL, display_name="Pay Buyer", paid=True)
    redis_conn.hset(RECORD_KEY, mapping={"bridge_blocked": "0", "bridge_paid": "1", "groups": "[]"})
    requests = record_requests(sotion)

    calls, [event_id] = jobs(client, queue, requests, new_purchase(T0))

    assert calls[0] == ("GET", MEMBERS)  # looked up by email
    assert ("POST", MEMBERS) not in calls  # no create, so no 409 disowning the member
    assert "create:conflict" not in actions_of(queue, event_id)
    kept = record(redis_conn)
    assert (kept.id, kept.bridge_paid) == (made.id, True)

    # The bridge's paid=true stayed the bridge's: a refund un-pays them.
    jobs(client, queue, requests, ("charge.refunded", charge(refunded_amount=1500), T0 + 100))
    assert requests.bodies("PATCH")[-1:] == [{"paid": False}]
    assert member_of(sotion_api).paid is False


# -- changes made by hand ------------------------------------------------------------------


def test_changes_made_by_hand_are_left_by_jobs_that_do_not_change_them(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    member = subscribed(client, queue, sotion_api)
    sotion_api.update_member(member.id, status="blocked")  # by hand
    requests = record_requests(sotion)

    calls, _ = jobs(client, queue, requests, renewal())
    assert calls == []
    # The purchase ends: un-paid; the block is not the bridge's to lift, nor to claim.
    jobs(client, queue, requests, ended(T0 + 100))
    assert requests.bodies("PATCH") == [{"paid": False}]

    sotion_api.update_member(member.id, paid=True)  # paid by hand, after the bridge un-paid
    late = ("customer.subscription.updated", subscription("canceled"), T0 + 200)
    calls, _ = jobs(client, queue, requests, late)
    assert calls == []

    final = member_of(sotion_api)
    assert (final.paid, final.status) == (True, "blocked")
    kept = record(redis_conn)
    assert (kept.bridge_paid, kept.bridge_blocked) == (False, False)


def test_a_group_removed_by_hand_is_added_again_by_a_new_purchase_not_by_a_renewal(
    start_bridge: StartBridge,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    client = start_bridge()
    buy_stripe(client)
    drain(queue)
    member = member_of(sotion_api)
    sotion_api.remove_group_member(groups["Course"], member.id)  # by hand
    requests = record_requests(sotion)

    calls, _ = jobs(client, queue, requests, renewal(price=COURSE_PRICE))
    assert calls == []
    assert member_of(sotion_api).access_group_ids == ids(groups, "Members")

    requests.calls.clear()
    post_gumroad(client, "sale_one_time")  # a new purchase: grants Club, re-asserts Course
    drain(queue)

    assert ("POST", group_path(groups["Course"])) in [(v, p) for v, p, _ in requests.calls]
    assert member_of(sotion_api).access_group_ids == ids(groups, "Course", "Club", "Members")


def test_a_comp_who_buys_again_and_refunds_stays_paid(
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    sotion_api.create_member(EMAIL, paid=True)  # paid by hand, before the bridge
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)
    requests = record_requests(sotion)

    # A second purchase is a new grant; re-asserting it leaves a comp's paid alone.
    second = ("checkout.session.completed", checkout_subscription(), T0 + 50)
    calls, _ = jobs(client, queue, requests, second)
    assert calls == []
    assert record(redis_conn).bridge_paid is False

    refunded = ("charge.refunded", charge(refunded_amount=1500), T0 + 100)
    jobs(client, queue, requests, refunded, ended(T0 + 100))

    assert requests.bodies("PATCH") == []
    assert member_of(sotion_api).paid is True


# -- reconciles ----------------------------------------------------------------------------


def test_a_block_by_hand_a_reconcile_saw_is_not_claimed_by_the_next_jobs(
    run: races.Run,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    settings: Settings,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    worker_runtime.configure(dataclasses.replace(settings, on_end=RevokeAction.BLOCK), redis_conn)
    member = subscribed(client, queue, sotion_api)
    sotion_api.update_member(member.id, status="blocked")  # by hand

    report = run("reconcile")

    assert report.sync.changes == []  # a block by hand is left as it is
    assert record(redis_conn).seen == MemberSnapshot(paid=True, blocked=True)
    # The purchase ends (BRIDGE_ON_END=block): the member is blocked already.
    requests = record_requests(sotion)
    jobs(client, queue, requests, ended(T0 + 100))
    assert requests.bodies("PATCH") == [{"paid": False}]
    assert record(redis_conn).bridge_blocked is False
    # So a new purchase does not lift a block that was never the bridge's.
    jobs(client, queue, requests, new_purchase(T0 + 200))
    final = member_of(sotion_api)
    assert (final.paid, final.status) == (True, "blocked")


def test_a_dry_run_reconcile_stores_nothing_it_saw(
    run: races.Run,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    member = subscribed(client, queue, sotion_api)
    sotion_api.update_member(member.id, status="blocked")  # by hand
    before = redis_conn.hgetall(RECORD_KEY)

    run("reconcile", dry_run=True)
    assert redis_conn.hgetall(RECORD_KEY) == before

    run("reconcile")  # what the dry run would have stored
    assert record(redis_conn).seen == MemberSnapshot(paid=True, blocked=True)


def test_what_a_reconcile_saw_does_not_overwrite_what_a_job_wrote_after_the_listing(
    run: races.Run,
    client: FlaskClient,
    queue: Queue,
    runtime: worker_runtime.Runtime,
    sotion_api: SotionClient,
    redis_conn: redis.Redis,
) -> None:
    deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    deliver(client, "charge.refunded", charge(refunded_amount=1500), created=T0 + 50)
    drain(queue)
    member = member_of(sotion_api)
    sotion_api.update_member(member.id, status="blocked")  # by hand: the run stores what it saw

    def bought_again() -> None:  # a webhook job, after the run listed the member unpaid
        kind, obj, created = new_purchase(T0 + 100, payment_intent="pi_flow_2")
        deliver(client, kind, obj, created=created)
        drain(queue)

    with races.after_the_listing(runtime, bought_again):
        run("reconcile")

    assert member_of(sotion_api).paid is True
    assert record(redis_conn).bridge_paid is True
    # The new purchase is refunded: the bridge paid them, so it un-pays them (planned
    # against what the job wrote, not against the older listing).
    refund = {**charge(refunded_amount=1500, payment_intent="pi_flow_2"), "id": "ch_flow_2"}
    deliver(client, "charge.refunded", refund, created=T0 + 200)
    drain(queue)
    assert member_of(sotion_api).paid is False
