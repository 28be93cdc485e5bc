"""The operator's policies end to end (DESIGN §4, README "Configuration"): what ending the
last entitlement does (BRIDGE_ON_END), what a dispute does (BRIDGE_ON_DISPUTE), how long
past_due keeps access (BRIDGE_PAST_DUE_GRACE_DAYS), whether a payment lifts a block
made by hand (BRIDGE_UNBLOCK_MANUAL), whether an ending un-pays a member paid by hand
(BRIDGE_UNPAY_MANUAL) and whether inquiries count as disputes (BRIDGE_ON_INQUIRY).
Stripe webhooks → queue → worker → sandbox.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Queue
from rq.job import Job

from bridge.app import create_app
from bridge.membership import DisputeAction, RevokeAction
from bridge.queues import RESYNC_JOB
from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from tests.conftest import drain
from tests.test_stripe_flow import (
    EMAIL,
    T0,
    charge,
    checkout_payment,
    checkout_subscription,
    deliver,
    dispute,
    subscription,
)
from workers import runtime as worker_runtime

DAY = 86400

StartBridge = Callable[..., FlaskClient]


@pytest.fixture
def start_bridge(settings: Settings, redis_conn: redis.Redis) -> Iterator[StartBridge]:
    """Start web and worker runtime with some settings changed (no products file)."""

    def start(**changes: Any) -> FlaskClient:
        new = dataclasses.replace(settings, **changes)
        app = create_app(new)
        worker_runtime.configure(new, redis_conn)
        return app.test_client()

    yield start
    worker_runtime.reset()


def member_of(sotion_api: SotionClient, email: str = EMAIL) -> Member:
    """The member Sotion has for this email."""
    found = sotion_api.find_member_by_email(email)
    assert found is not None, f"no Sotion member for {email}"
    return sotion_api.get_member(found.id)


def buy_once(client: FlaskClient, *, created: int = T0, payment_intent: str = "pi_flow_1") -> None:
    """A paid one-time Stripe Checkout."""
    session = checkout_payment(payment_intent=payment_intent)
    deliver(client, "checkout.session.completed", session, created=created)


def refund_fully(client: FlaskClient, *, created: int) -> None:
    """The one-time purchase is refunded in full (its last entitlement ends)."""
    deliver(client, "charge.refunded", charge(refunded_amount=1500), created=created)


def inquire(client: FlaskClient) -> None:
    """The one-time purchase's charge gets an inquiry (a dispute still in warning)."""
    deliver(
        client, "charge.dispute.created", dispute(status="warning_needs_response"), created=T0 + 100
    )


def refunded_member(
    client: FlaskClient, queue: Queue, sotion_api: SotionClient, *, created: int
) -> Member:
    """Refund the one-time purchase in full, run the jobs and read the member back."""
    refund_fully(client, created=created)
    drain(queue)
    return member_of(sotion_api)


def known_member_buys(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient, *, paid: bool, **changes: Any
) -> FlaskClient:
    """Start the bridge; a member already in Sotion (``paid`` by hand or not) buys once."""
    client = start_bridge(**changes)
    sotion_api.create_member(EMAIL, paid=paid)
    buy_once(client)
    drain(queue)
    return client


def subscribe_then_fall_past_due(client: FlaskClient, *, past_due_at: int) -> None:
    """A paid subscription whose renewal fails at ``past_due_at``."""
    deliver(
        client, "checkout.session.completed", checkout_subscription(), created=past_due_at - 100
    )
    deliver(client, "customer.subscription.updated", subscription("past_due"), created=past_due_at)


# -- ending the last entitlement ----------------------------------------------------------


def test_ending_the_last_entitlement_by_default_unpays_and_leaves_the_member_active(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge()
    buy_once(client)
    drain(queue)

    refund_fully(client, created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"


def test_block_on_end_blocks_when_the_last_entitlement_ends_and_a_new_purchase_unblocks(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(on_end=RevokeAction.BLOCK)
    buy_once(client)
    drain(queue)
    assert member_of(sotion_api).status == "active"

    refund_fully(client, created=T0 + 100)
    drain(queue)
    ended = member_of(sotion_api)
    assert (ended.paid, ended.status) == (False, "blocked")

    buy_once(client, created=T0 + 200, payment_intent="pi_flow_2")
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"


def test_block_on_end_does_not_block_while_another_entitlement_is_active(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(on_end=RevokeAction.BLOCK)
    buy_once(client)
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0 + 10)
    drain(queue)

    refund_fully(client, created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"


# -- disputes -----------------------------------------------------------------------------


def test_dispute_blocks_the_member_by_default(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge()
    buy_once(client)
    drain(queue)

    deliver(client, "charge.dispute.created", dispute(), created=T0 + 100)
    drain(queue)

    assert member_of(sotion_api).status == "blocked"


def test_dispute_with_the_revoke_policy_unpays_without_blocking(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(on_dispute=DisputeAction.REVOKE)
    buy_once(client)
    drain(queue)

    deliver(client, "charge.dispute.created", dispute(), created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"


def test_inquiry_is_ignored_by_default(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge()
    buy_once(client)
    inquire(client)
    drain(queue)

    member = member_of(sotion_api)
    assert (member.paid, member.status) == (True, "active")


def test_inquiry_blocks_when_inquiries_count_as_disputes(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(inquiries_are_disputes=True)
    buy_once(client)
    inquire(client)
    drain(queue)
    assert member_of(sotion_api).status == "blocked"

    deliver(client, "charge.dispute.closed", dispute(status="warning_closed"), created=T0 + 200)
    drain(queue)

    member = member_of(sotion_api)
    assert (member.paid, member.status) == (True, "active")


# -- past_due grace -----------------------------------------------------------------------


def test_past_due_subscription_keeps_access_by_default(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge()
    subscribe_then_fall_past_due(client, past_due_at=T0)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert queue.scheduled_job_registry.count == 0


def test_zero_grace_ends_access_as_soon_as_the_subscription_is_past_due(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(past_due_grace_days=0)
    subscribe_then_fall_past_due(client, past_due_at=T0)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"


def scheduled_resync(queue: Queue) -> tuple[Job, float]:
    """The one job in the scheduled registry, checked to be a re-sync, and its time."""
    registry = queue.scheduled_job_registry
    job_ids = registry.get_job_ids()
    assert len(job_ids) == 1, job_ids
    job = Job.fetch(job_ids[0], connection=queue.connection, serializer=queue.serializer)
    assert job.func_name == RESYNC_JOB
    assert job.args == [EMAIL]
    return job, registry.get_scheduled_time(job).timestamp()


def test_past_due_within_the_grace_keeps_access_and_schedules_a_resync_at_its_end(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(past_due_grace_days=3)
    past_due_at = int(time.time())
    subscribe_then_fall_past_due(client, past_due_at=past_due_at)
    drain(queue)

    assert member_of(sotion_api).paid is True
    _, at = scheduled_resync(queue)
    assert past_due_at + 3 * DAY <= at <= past_due_at + 3 * DAY + 1


def test_scheduled_resync_after_the_grace_ran_out_ends_access(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(past_due_grace_days=1)
    # The renewal failed almost a day ago: two seconds of the grace are left.
    past_due_at = math.ceil(time.time()) - DAY + 2
    subscribe_then_fall_past_due(client, past_due_at=past_due_at)
    drain(queue)
    assert member_of(sotion_api).paid is True
    job, at = scheduled_resync(queue)

    time.sleep(max(at - time.time(), 0) + 0.1)
    queue.scheduled_job_registry.remove(job)
    queue.enqueue_job(job)
    drain(queue)

    assert job.id in queue.finished_job_registry.get_job_ids()
    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"


# -- members blocked by hand --------------------------------------------------------------


def test_payment_leaves_a_member_blocked_by_hand_blocked_by_default(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge()
    existing = sotion_api.create_member(EMAIL, paid=False)
    sotion_api.update_member(existing.id, status="blocked")

    buy_once(client)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "blocked"


def test_payment_unblocks_a_member_blocked_by_hand_when_the_policy_allows(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge(unblock_manual=True)
    existing = sotion_api.create_member(EMAIL, paid=False)
    sotion_api.update_member(existing.id, status="blocked")

    buy_once(client)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"


# -- members paid by hand -----------------------------------------------------------------


def test_member_paid_by_hand_stays_paid_when_their_purchase_ends(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    # A comp, made before the bridge met them.
    client = known_member_buys(start_bridge, queue, sotion_api, paid=True)

    member = refunded_member(client, queue, sotion_api, created=T0 + 100)

    assert member.paid is True
    assert member.status == "active"


def test_member_paid_by_hand_is_unpaid_when_their_purchase_ends_if_the_policy_says(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = known_member_buys(start_bridge, queue, sotion_api, paid=True, unpay_manual=True)

    member = refunded_member(client, queue, sotion_api, created=T0 + 100)

    assert member.paid is False


def test_member_the_bridge_paid_is_unpaid_even_if_they_existed_before(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    # A free signup who then buys.
    client = known_member_buys(start_bridge, queue, sotion_api, paid=False)
    assert member_of(sotion_api).paid is True

    member = refunded_member(client, queue, sotion_api, created=T0 + 100)

    assert member.paid is False


def test_member_unpaid_by_hand_is_paid_again_by_their_next_purchase(
    start_bridge: StartBridge, queue: Queue, sotion_api: SotionClient
) -> None:
    client = start_bridge()
    buy_once(client)
    drain(queue)
    sotion_api.update_member(member_of(sotion_api).id, paid=False)

    buy_once(client, created=T0 + 100, payment_intent="pi_flow_2")
    drain(queue)
    assert member_of(sotion_api).paid is True

    # Paid again by the bridge: ending every purchase un-pays them again.
    refund_fully(client, created=T0 + 200)
    deliver(
        client,
        "charge.refunded",
        {**charge(refunded_amount=1500, payment_intent="pi_flow_2"), "id": "ch_flow_2"},
        created=T0 + 200,
    )
    drain(queue)
    assert member_of(sotion_api).paid is False
