"""Three rows of the bridge's behaviour, end to end under every order of delivery.

- ``paid`` by origin: the bridge undoes only the ``paid=true`` it set itself;
- dispute inquiries: an inquiry is not a chargeback; a chargeback and a cancellation
  arriving in any order both stand;
- parking: an event whose buyer is not known yet waits for the event that names them.

Each story is a list of Stripe events with fixed ids and timestamps. It is delivered
through the signed webhook endpoint in every order (a fixed-seed sample of them when there
are more than five events), with some events delivered twice (Stripe's resend of the same
event id, or the same object in an event of its own), Redis and the Sotion sandbox reset
between orders. Even-numbered orders drain the queue after each delivery (webhooks spaced
out), odd-numbered ones once at the end (a burst). The member as the sandbox has it at the
end is compared with what the story says.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient
from rq import Queue, SimpleWorker
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from bridge.admin import failed_jobs
from bridge.app import create_app
from bridge.cli import main
from bridge.membership import DisputeAction
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import SotionClient
from tests.conftest import drain
from tests.stripe_events import event
from tests.test_stripe_flow import (
    CUSTOMER,
    EMAIL,
    T0,
    checkout_payment,
    checkout_subscription,
    dispute,
    invoice,
    job_of,
    post,
    subscription,
)
from workers import runtime as worker_runtime
from workers.parking import PARKED_JOB_PREFIX, parked_events

JSONObject = dict[str, Any]

# More events than this: a fixed-seed sample of the orders instead of all of them.
ALL_ORDERS_UP_TO = 5
# Orders tried when they are sampled.
SAMPLED_ORDERS = 30
# Seed of the samples and of where duplicates go.
SEED = 20_251_014
# The first payment of the subscription, named by its disputes.
SUB_CHARGE = "ch_sub_flow_1"
SUB_PAYMENT_INTENT = "pi_sub_flow_1"
DAY = 86_400


# -- the stories --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One Stripe event as Stripe sends it: a fixed id, so a resend is a duplicate."""

    label: str
    kind: str
    obj: JSONObject
    created: int

    @property
    def event_id(self) -> str:
        """The Stripe event id (stable across orders, so job_of finds its job)."""
        return "evt_" + re.sub(r"[^a-z0-9]+", "_", self.label.lower())

    def payload(self, event_id: str | None = None) -> JSONObject:
        """The event envelope (a fresh copy each time)."""
        return event(
            self.kind,
            copy.deepcopy(self.obj),
            created=self.created,
            event_id=event_id or self.event_id,
        )

    @property
    def names_buyer(self) -> bool:
        """Whether the event carries the buyer's email (else it may have to park)."""
        return self.kind.startswith(("checkout.session.", "invoice."))


def checkout_sub(created: int = T0, *, paid: bool = True) -> Delivery:
    """The subscription's Checkout: names email, customer and subscription."""
    obj = checkout_subscription(payment_status="paid" if paid else "unpaid")
    return Delivery("checkout", "checkout.session.completed", obj, created)


def sub_event(kind: str, status: str, created: int) -> Delivery:
    """A customer.subscription.* event: a customer id, no email."""
    base = (
        "customer_subscription_deleted"
        if kind.endswith("deleted")
        else "customer_subscription_created"
    )
    short = kind.removeprefix("customer.subscription.")
    return Delivery(f"sub {short} {status}", kind, subscription(status, base=base), created)


def first_invoice(created: int = T0 + 1, *, invoice_id: str = "in_flow_1") -> Delivery:
    """invoice.paid of the subscription, naming its charge (what a dispute names)."""
    obj = invoice(invoice_id=invoice_id)
    obj.update(charge=SUB_CHARGE, payment_intent=SUB_PAYMENT_INTENT)
    return Delivery(f"invoice paid {invoice_id}", "invoice.paid", obj, created)


def sub_dispute(kind: str, status: str, created: int) -> Delivery:
    """A charge.dispute.* event about the subscription's first charge."""
    obj = dispute(status=status, payment_intent=SUB_PAYMENT_INTENT)
    obj["charge"] = SUB_CHARGE
    return Delivery(f"{kind.removeprefix('charge.')} {status}", kind, obj, created)


def one_time_checkout() -> Delivery:
    """A paid one-time Checkout: teaches the payment_intent its disputes name."""
    return Delivery("checkout payment", "checkout.session.completed", checkout_payment(), T0)


def one_time_dispute(kind: str, status: str, created: int) -> Delivery:
    """A charge.dispute.* event (built from the created fixture) about the one-time charge."""
    return Delivery(
        f"{kind.removeprefix('charge.')} {status}", kind, dispute(status=status), created
    )


def subscription_bought_and_ended() -> list[Delivery]:
    """The purchase of the ``paid``-by-origin row: checkout, first invoice, deletion."""
    return [
        checkout_sub(),
        first_invoice(),
        sub_event("customer.subscription.deleted", "canceled", T0 + 100),
    ]


# -- the bridge under test ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Final:
    """The member as the sandbox has it at the end."""

    members: int  # how many members the email has
    paid: bool | None = None
    status: str | None = None

    def __str__(self) -> str:
        if not self.members:
            return "no member"
        return f"members={self.members} paid={self.paid} status={self.status}"


class Bridge:
    """Web endpoint and worker runtime on chosen settings, reset between orders."""

    def __init__(
        self,
        settings: Settings,
        redis_conn: redis.Redis,
        queue: Queue,
        sotion: SandboxServer,
        sotion_api: SotionClient,
    ) -> None:
        self.base_settings = settings
        self.settings = settings
        self.redis = redis_conn
        self.queue = queue
        self.sotion = sotion
        self.sotion_api = sotion_api
        self.client: FlaskClient | None = None

    def start(self, **changes: Any) -> Bridge:
        """(Re)build web and worker runtime with these settings changed."""
        self.settings = dataclasses.replace(self.base_settings, **changes)
        self.client = create_app(self.settings).test_client()
        worker_runtime.configure(self.settings, self.redis)
        return self

    def reset(self) -> None:
        """Forget everything: Redis (ledger, aliases, jobs, dedupe keys) and every member."""
        self.redis.flushdb()
        self.sotion.state.reset()

    def send(self, delivery: Delivery, *, event_id: str | None = None) -> JSONObject:
        """POST the event signed as Stripe does; the endpoint must answer 200."""
        assert self.client is not None, "start() the bridge first"
        return post(self.client, delivery.payload(event_id))

    def final(self, email: str = EMAIL) -> Final:
        """The member of ``email`` as the sandbox has it."""
        found = self.sotion_api.list_members(email=email, limit=100).items
        if not found:
            return Final(0)
        member = self.sotion_api.get_member(found[0].id)
        return Final(len(found), member.paid, member.status)


@pytest.fixture
def bridge(
    settings: Settings,
    redis_conn: redis.Redis,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
) -> Iterator[Bridge]:
    """The bridge on the shared test settings (no STRIPE_API_KEY, no products file)."""
    yield Bridge(settings, redis_conn, queue, sotion, sotion_api).start()
    worker_runtime.reset()


# -- delivering every order --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    """One POST of an order: an event, its resend (same id) or a copy (a new id)."""

    delivery: Delivery
    duplicate: str | None = None  # None, "resend" or "copy"


@dataclasses.dataclass
class Tally:
    """What a shuffled story did, for its summary line."""

    orders: int = 0
    sent: int = 0
    duplicates: int = 0
    mismatches: list[str] = dataclasses.field(default_factory=list)


def orders_of(deliveries: Sequence[Delivery], seed: int) -> list[tuple[Delivery, ...]]:
    """Every order (five events or fewer), else a fixed-seed sample with both extremes."""
    if len(deliveries) <= ALL_ORDERS_UP_TO:
        return list(itertools.permutations(deliveries))
    rng = random.Random(seed)
    chosen = [tuple(deliveries), tuple(reversed(deliveries))]
    while len(chosen) < SAMPLED_ORDERS:
        order = list(deliveries)
        rng.shuffle(order)
        if tuple(order) not in chosen:
            chosen.append(tuple(order))
    return chosen


def with_duplicates(order: Sequence[Delivery], rng: random.Random) -> list[Step]:
    """The order with one or two events delivered again, somewhere after the first time."""
    steps = [Step(d) for d in order]
    for _ in range(1 if len(order) <= 3 else 2):
        index = rng.randrange(len(order))
        original = next(i for i, step in enumerate(steps) if step.delivery == order[index])
        where = rng.randint(original + 1, len(steps))
        steps.insert(where, Step(order[index], rng.choice(("resend", "copy"))))
    return steps


class _BurstWorker(SimpleWorker):
    """conftest's ``drain`` worker without RQ's pubsub listener (shutdown and kill commands).

    Joining that listener's thread costs ~0.1 s per burst; the shuffles run thousands of
    bursts, so they skip it. Jobs run exactly as in ``drain``: same worker class, same
    registries, retries with a 0 s interval included.
    """

    def subscribe(self) -> None:
        """No pubsub channel: nothing sends this in-process worker commands."""

    def unsubscribe(self) -> None:
        """Nothing was subscribed."""


def run_jobs(queue: Queue) -> None:
    """Run every queued job in this process, like ``tests.conftest.drain`` (but quicker)."""
    _BurstWorker([queue], connection=queue.connection, serializer=JSONSerializer).work(burst=True)


def deliver_order(
    bridge: Bridge,
    steps: Sequence[Step],
    *,
    drain_each: bool,
    worker: Callable[[Queue], None] = run_jobs,
) -> None:
    """POST every step (checking what the intake says of each), running the jobs as told."""
    for number, step in enumerate(steps):
        if step.duplicate == "copy":
            answer = bridge.send(step.delivery, event_id=f"{step.delivery.event_id}_copy{number}")
            assert answer["queued"] == 1, (step, answer)
        else:
            answer = bridge.send(step.delivery)
            expected = (0, 1) if step.duplicate == "resend" else (1, 0)
            assert (answer["queued"], answer["duplicates"]) == expected, (step, answer)
        if drain_each:
            worker(bridge.queue)
    worker(bridge.queue)


def describe(steps: Sequence[Step]) -> str:
    """An order as a readable line, duplicates marked."""
    return " → ".join(
        step.delivery.label + (f" ({step.duplicate})" if step.duplicate else "") for step in steps
    )


def shuffle_story(
    bridge: Bridge,
    name: str,
    deliveries: Sequence[Delivery],
    expected: Final,
    *,
    before: Callable[[Bridge], None] | None = None,
    check: Callable[[Bridge, Sequence[Step]], list[str]] | None = None,
    seed: int = SEED,
) -> Tally:
    """Deliver the story in every order (or a sample); collect the orders that end wrong."""
    tally = Tally()
    for number, order in enumerate(orders_of(deliveries, seed)):
        bridge.reset()
        if before is not None:
            before(bridge)
        steps = with_duplicates(order, random.Random(seed * 1_000 + number))
        deliver_order(bridge, steps, drain_each=number % 2 == 0)
        tally.orders += 1
        tally.sent += len(steps)
        tally.duplicates += sum(1 for step in steps if step.duplicate)
        problems = [] if check is None else check(bridge, steps)
        got = bridge.final()
        if got != expected:
            problems.append(f"expected {expected}, got {got}")
        problems += [
            f"failed job: {job.description}: {job.reason}" for job in failed_jobs(bridge.queue)
        ]
        if problems:
            tally.mismatches.append(f"[{describe(steps)}] " + "; ".join(problems))
    print(
        f"{name}: {tally.orders} orders, {tally.sent} events sent, {tally.duplicates} duplicates, "
        f"final {expected}, {len(tally.mismatches)} orders wrong",
        flush=True,
    )
    return tally


def deliver_one(bridge: Bridge, delivery: Delivery) -> None:
    """Deliver one event once and run its jobs."""
    deliver_order(bridge, [Step(delivery)], drain_each=True, worker=drain)


def assert_every_order(tally: Tally) -> None:
    """Fail with the first orders that ended wrong, if any did."""
    shown = "\n".join(tally.mismatches[:5])
    assert not tally.mismatches, f"{len(tally.mismatches)}/{tally.orders} orders wrong:\n{shown}"


def hand_made(*, paid: bool = False, blocked: bool = False) -> Callable[[Bridge], None]:
    """A member made in Sotion by hand before the bridge meets them."""

    def make(bridge: Bridge) -> None:
        member = bridge.sotion_api.create_member(EMAIL, paid=paid)
        if blocked:
            bridge.sotion_api.update_member(member.id, status="blocked")

    return make


# -- 1. paid by origin --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "changes", "expected"),
    [
        pytest.param(hand_made(paid=True), {}, Final(1, True, "active"), id="hand-paid-stays-paid"),
        pytest.param(
            hand_made(paid=False), {}, Final(1, False, "active"), id="hand-unpaid-ends-unpaid"
        ),
        pytest.param(
            hand_made(paid=True),
            {"unpay_manual": True},
            Final(1, False, "active"),
            id="hand-paid-unpaid-with-unpay-manual",
        ),
        pytest.param(None, {}, Final(1, False, "active"), id="bridge-made-ends-unpaid"),
        pytest.param(
            hand_made(blocked=True), {}, Final(1, False, "blocked"), id="hand-blocked-stays-blocked"
        ),
    ],
)
def test_ended_subscription_undoes_only_the_paid_the_bridge_set(
    before: Callable[[Bridge], None] | None,
    changes: dict[str, Any],
    expected: Final,
    bridge: Bridge,
    request: pytest.FixtureRequest,
) -> None:
    bridge.start(**changes)
    story = subscription_bought_and_ended()

    tally = shuffle_story(
        bridge, f"paid-by-origin[{request.node.callspec.id}]", story, expected, before=before
    )

    assert_every_order(tally)


def test_hand_blocked_member_who_buys_is_paid_and_stays_blocked(bridge: Bridge) -> None:
    story = [checkout_sub(), first_invoice()]

    tally = shuffle_story(
        bridge,
        "paid-by-origin[hand-blocked-buys]",
        story,
        Final(1, True, "blocked"),
        before=hand_made(blocked=True),
    )

    assert_every_order(tally)


def test_reconcile_pays_again_a_member_the_bridge_paid_and_someone_unpaid_by_hand(
    bridge: Bridge,
) -> None:
    story = [
        checkout_sub(),
        sub_event("customer.subscription.created", "active", T0),
        first_invoice(),
    ]
    renewal = first_invoice(T0 + 30 * DAY, invoice_id="in_flow_2")
    unpaid_by_hand: list[str] = []

    def unpay_by_hand_renew_then_reconcile(bridge: Bridge, steps: Sequence[Step]) -> list[str]:
        member = bridge.sotion_api.find_member_by_email(EMAIL)
        if member is None or member.paid is not True:
            return [f"not paid by the bridge before the hand un-pay: {bridge.final()}"]
        bridge.sotion_api.update_member(member.id, paid=False)
        unpaid_by_hand.append(member.id)
        # A renewal changes nothing the bridge wrote: no call (jobs plan against what the
        # bridge last wrote); the reconcile, which reads the site, repairs the drift.
        deliver_order(bridge, [Step(renewal), Step(renewal, "resend")], drain_each=False)
        if bridge.final() != Final(1, False, "active"):
            return [f"a renewal undid the hand un-pay: {bridge.final()}"]
        worker_runtime.current().reconciler.reconcile([])
        return []

    tally = shuffle_story(
        bridge,
        "paid-by-origin[unpaid-by-hand-then-renewal]",
        story,
        Final(1, True, "active"),
        check=unpay_by_hand_renew_then_reconcile,
    )

    assert len(unpaid_by_hand) == tally.orders
    assert_every_order(tally)


# -- 2. dispute inquiries -----------------------------------------------------------------


INQUIRY = one_time_dispute("charge.dispute.created", "warning_needs_response", T0 + 100)
ESCALATED = one_time_dispute("charge.dispute.updated", "needs_response", T0 + 200)
CHARGEBACK = one_time_dispute("charge.dispute.created", "needs_response", T0 + 100)
INQUIRY_CLOSED = one_time_dispute("charge.dispute.closed", "warning_closed", T0 + 200)
WON = one_time_dispute("charge.dispute.closed", "won", T0 + 300)


@pytest.mark.parametrize(
    ("changes", "story", "expected"),
    [
        pytest.param(
            {}, [one_time_checkout(), INQUIRY], Final(1, True, "active"), id="inquiry-keeps-access"
        ),
        pytest.param(
            {},
            [
                one_time_checkout(),
                INQUIRY,
                ESCALATED,
                WON,
            ],
            Final(1, True, "active"),
            id="escalated-then-won-restores",
        ),
        pytest.param(
            {},
            [
                one_time_checkout(),
                CHARGEBACK,
                one_time_dispute("charge.dispute.closed", "lost", T0 + 300),
            ],
            Final(1, False, "blocked"),
            id="chargeback-lost-stays-blocked",
        ),
        pytest.param(
            {},
            [
                one_time_checkout(),
                INQUIRY,
                INQUIRY_CLOSED,
            ],
            Final(1, True, "active"),
            id="inquiry-closed-changes-nothing",
        ),
        pytest.param(
            {"inquiries_are_disputes": True},
            [one_time_checkout(), INQUIRY],
            Final(1, False, "blocked"),
            id="inquiry-as-dispute-blocks",
        ),
        pytest.param(
            {"inquiries_are_disputes": True},
            [
                one_time_checkout(),
                INQUIRY,
                INQUIRY_CLOSED,
            ],
            Final(1, True, "active"),
            id="inquiry-as-dispute-closed-lifts",
        ),
        pytest.param(
            {"on_dispute": DisputeAction.REVOKE},
            [one_time_checkout(), INQUIRY, ESCALATED],
            Final(1, False, "active"),
            id="revoke-unpays-without-blocking",
        ),
        pytest.param(
            {"on_dispute": DisputeAction.REVOKE},
            [one_time_checkout(), CHARGEBACK],
            Final(1, False, "active"),
            id="revoke-chargeback-unpays",
        ),
    ],
)
def test_disputes_of_a_one_time_purchase_end_in_the_last_status_stripe_reports(
    changes: dict[str, Any],
    story: list[Delivery],
    expected: Final,
    bridge: Bridge,
    request: pytest.FixtureRequest,
) -> None:
    bridge.start(**changes)

    tally = shuffle_story(bridge, f"dispute[{request.node.callspec.id}]", story, expected)

    assert_every_order(tally)


def test_escalated_inquiry_blocks_and_unpays_until_it_is_won(bridge: Bridge) -> None:
    # The row's stages one at a time, each observed in the sandbox.
    seen = []
    for delivery in (one_time_checkout(), INQUIRY, ESCALATED, WON):
        deliver_one(bridge, delivery)
        seen.append(bridge.final())
    print(
        f"dispute[stages]: 1 order, 4 events sent, 0 duplicates, stages {[str(s) for s in seen]}",
        flush=True,
    )

    assert seen == [
        Final(1, True, "active"),
        Final(1, True, "active"),
        Final(1, False, "blocked"),
        Final(1, True, "active"),
    ]


def test_subscription_cancelled_during_an_open_dispute_stays_ended_when_it_is_won(
    bridge: Bridge,
) -> None:
    story = [
        first_invoice(T0),
        sub_dispute("charge.dispute.created", "needs_response", T0 + 100),
        sub_event("customer.subscription.deleted", "canceled", T0 + 200),
        sub_dispute("charge.dispute.closed", "won", T0 + 300),
    ]

    tally = shuffle_story(
        bridge, "dispute[cancelled-during-dispute-won]", story, Final(1, False, "active")
    )

    assert_every_order(tally)


# -- 3. parking ---------------------------------------------------------------------------


def parked_job_id(queue: Queue, event_id: str) -> str | None:
    """The parked job an event's dedupe key points at (parking repoints it), if any."""
    job = job_of(queue, event_id)
    return job.id if job.id.startswith(PARKED_JOB_PREFIX) else None


def parked_before_the_buyer_was_named(bridge: Bridge, steps: Sequence[Step]) -> list[str]:
    """Every customer-only event delivered before any email was parked."""
    problems = []
    for step in steps:
        if step.delivery.names_buyer:
            break
        if step.duplicate:
            continue
        if parked_job_id(bridge.queue, step.delivery.event_id) is None:
            result = job_of(bridge.queue, step.delivery.event_id).return_value()
            problems.append(f"{step.delivery.label} delivered first did not park: {result}")
    left = parked_events(bridge.queue)
    if left:
        problems.append(f"still parked at the end: {[p.description for p in left]}")
    return problems


@pytest.mark.parametrize(
    ("story", "expected"),
    [
        # The checkout is the only event that names the email: whatever comes before it parks.
        pytest.param(
            [
                sub_event("customer.subscription.created", "active", T0),
                checkout_sub(T0),
                sub_event("customer.subscription.updated", "past_due", T0 + 50),
                sub_event("customer.subscription.updated", "active", T0 + 60),
            ],
            Final(1, True, "active"),
            id="created-checkout-past_due-active",
        ),
        pytest.param(
            [
                sub_event("customer.subscription.created", "active", T0),
                checkout_sub(T0),
                first_invoice(T0 + 1),
                sub_event("customer.subscription.updated", "past_due", T0 + 50),
                sub_event("customer.subscription.updated", "active", T0 + 60),
                sub_event("customer.subscription.deleted", "canceled", T0 + 100),
            ],
            Final(1, False, "active"),
            id="created-checkout-invoice-past_due-active-deleted",
        ),
    ],
)
def test_subscription_events_before_the_buyer_is_named_park_and_the_member_ends_right(
    story: list[Delivery], expected: Final, bridge: Bridge, request: pytest.FixtureRequest
) -> None:
    tally = shuffle_story(
        bridge,
        f"parking[{request.node.callspec.id}]",
        story,
        expected,
        check=parked_before_the_buyer_was_named,
    )

    assert_every_order(tally)


def park_a_subscription_created(bridge: Bridge) -> str:
    """Deliver a subscription's creation that names no buyer; returns its parked job's id."""
    created = sub_event("customer.subscription.created", "active", T0)
    deliver_one(bridge, created)
    parked_id = parked_job_id(bridge.queue, created.event_id)
    assert parked_id is not None
    return parked_id


def test_parked_event_is_listed_with_its_reason_until_the_checkout_names_the_buyer(
    bridge: Bridge, env: dict[str, str]
) -> None:
    runner = CliRunner()
    parked_id = park_a_subscription_created(bridge)

    listed = runner.invoke(main, ["jobs", "parked"], env=env)
    assert listed.exit_code == 0, listed.output
    text = " ".join(listed.output.split())
    assert parked_id in text
    assert CUSTOMER in text
    assert "STRIPE_API_KEY" in text
    assert bridge.final() == Final(0)

    deliver_one(bridge, checkout_sub(T0, paid=False))
    after = runner.invoke(main, ["jobs", "parked"], env=env)
    print(
        f"parking[listed]: 1 order, 2 events sent, 0 duplicates, final {bridge.final()}, "
        f"listing after: {after.output.strip()!r}",
        flush=True,
    )

    assert after.exit_code == 0, after.output
    assert "no parked events" in after.output
    assert parked_id not in after.output
    assert bridge.final() == Final(1, True, "active")


def test_parked_event_nothing_resolves_fails_after_the_parking_time_and_replays(
    bridge: Bridge, env: dict[str, str]
) -> None:
    bridge.start(park_hours=0.0003)  # about a second
    runner = CliRunner()
    parked_id = park_a_subscription_created(bridge)
    assert parked_id in bridge.queue.scheduled_job_registry.get_job_ids()

    time.sleep(0.0003 * 3600 + 0.3)
    scheduler = RQScheduler([bridge.queue], connection=bridge.redis, serializer=JSONSerializer)
    assert scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    scheduler.release_locks()
    drain(bridge.queue)

    failed = {job.id: job.reason for job in failed_jobs(bridge.queue)}
    assert parked_id in failed, failed
    assert CUSTOMER in failed[parked_id]
    assert "parked" in failed[parked_id]
    assert "no parked events" in runner.invoke(main, ["jobs", "parked"], env=env).output
    assert bridge.final() == Final(0)

    # The buyer becomes known (an unpaid checkout: it grants nothing by itself) ...
    deliver_one(bridge, checkout_sub(T0, paid=False))
    assert bridge.final() == Final(0)
    # ... and the replayed event grants the subscription.
    replayed = runner.invoke(main, ["jobs", "replay", parked_id], env=env)
    assert replayed.exit_code == 0, replayed.output
    drain(bridge.queue)
    final = bridge.final()
    print(
        f"parking[deadline]: 1 order, 2 events sent, 0 duplicates, failed reason "
        f"{failed[parked_id]!r}, final after replay {final}",
        flush=True,
    )

    assert final == Final(1, True, "active")
    assert parked_id not in bridge.queue.failed_job_registry.get_job_ids()
