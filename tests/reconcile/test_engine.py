"""The reconcile engine against a real Redis and the Sotion sandbox, with a scripted source.

The providers' own listings are tested in tests/sources; the commands end to end, against
the providers' stand-ins, in tests/reconcile/test_commands.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import redis
from rq import Queue

from bridge.events import DisputeState, EntitlementState
from bridge.intake import Intake
from bridge.sandbox import SandboxServer
from bridge.settings import Settings, retry_policy
from bridge.sotion import SotionClient
from bridge.sources import Source
from tests.conftest import drain
from tests.reconcile.scripted import ScriptedSource, observed
from tests.stripe_events import event
from tests.test_stripe_flow import post, record_requests
from workers import runtime as worker_runtime
from workers.reconcile import ReconcileBusyError, Reconciler
from workers.store import Store

Build = Callable[..., Reconciler]


@pytest.fixture
def build(runtime: worker_runtime.Runtime, queue: Queue, settings: Settings) -> Build:
    """A Reconciler over the given sources, sharing the worker runtime's parts."""

    def make(**sources: Source) -> Reconciler:
        return Reconciler(
            runtime.store,
            runtime.applier,
            runtime.sotion,
            Intake(queue, retry_policy(settings)),
            sources,
            accept_test_events=False,
        )

    return make


def _emails(count: int, start: int = 0) -> list[str]:
    return [f"buyer{i:05d}@example.com" for i in range(start, start + count)]


def _pages(emails: list[str], size: int = 100) -> list[list]:
    events = [observed(email, f"sub_{i:05d}") for i, email in enumerate(emails)]
    return [events[i : i + size] for i in range(0, len(events), size)]


def test_backfill_creates_every_new_member_in_bulk(
    build: Build, sotion: SandboxServer, sotion_api: SotionClient
) -> None:
    emails = _emails(1200)
    requests = record_requests(sotion)
    report = build(stripe=ScriptedSource(_pages(emails))).backfill(["stripe"])
    members = {m.email: m for m in sotion_api.iter_members()}
    assert set(members) == set(emails)
    assert all(m.paid for m in members.values())
    posts = [path for verb, path, _ in requests.calls if verb != "GET"]
    # One list page of an empty site, then 1,200 members in ceil(1200/500) bulk calls.
    assert posts == ["/api/v1/members/bulk"] * math.ceil(1200 / 500)
    assert report.sync.calls["list members"] == 1
    assert report.providers[0].observed == 1200 and report.providers[0].merged == 1200


def test_a_second_backfill_makes_no_write(
    build: Build, sotion: SandboxServer, redis_conn: redis.Redis
) -> None:
    source = ScriptedSource(_pages(_emails(250)))
    build(stripe=source).backfill(["stripe"])
    requests = record_requests(sotion)
    report = build(stripe=ScriptedSource(_pages(_emails(250)))).backfill(["stripe"])
    assert [verb for verb, _, _ in requests.calls if verb != "GET"] == []
    assert report.sync.changes == []
    # The cursor of a finished backfill is gone: the next one reads everything again.
    assert redis_conn.get("bridge:backfill:cursor:stripe") is None


def test_existing_members_are_patched_only_where_they_differ(
    build: Build, sotion: SandboxServer, sotion_api: SotionClient, runtime: worker_runtime.Runtime
) -> None:
    unpaid = sotion_api.create_member("unpaid@example.com", paid=False)
    by_hand = sotion_api.create_member("comp@example.com", paid=True)
    blocked = sotion_api.create_member("blocked@example.com", paid=False)
    sotion_api.update_member(blocked.id, status="blocked")
    # Members with no purchase at all are left alone.
    stranger = sotion_api.create_member("stranger@example.com", paid=True)
    requests = record_requests(sotion)
    events = [
        observed("unpaid@example.com", "sub_1"),
        observed("comp@example.com", "sub_2"),
        observed("blocked@example.com", "sub_3"),
    ]
    report = build(stripe=ScriptedSource([events])).backfill(["stripe"])
    patches = [(path, body) for verb, path, body in requests.calls if verb == "PATCH"]
    # The unpaid buyer and the blocked one are paid; nobody is unblocked by a payment.
    assert patches == [
        (f"/api/v1/members/{blocked.id}", {"paid": True}),
        (f"/api/v1/members/{unpaid.id}", {"paid": True}),
    ]
    assert sotion_api.get_member(blocked.id).blocked
    assert sotion_api.get_member(stranger.id).paid
    # comp@ was paid by hand: already right, and still not the bridge's to un-pay.
    assert not runtime.store.member_record("comp@example.com").bridge_paid
    assert sotion_api.get_member(by_hand.id).paid
    assert report.sync.members == 3 and len(report.sync.changes) == 2


def test_a_member_paid_by_hand_stays_paid_when_the_purchase_ends_unless_adopted(
    build: Build, sotion_api: SotionClient
) -> None:
    kept = sotion_api.create_member("kept@example.com", paid=True)
    adopted = sotion_api.create_member("adopted@example.com", paid=True)
    both = [observed("kept@example.com", "sub_k"), observed("adopted@example.com", "sub_a")]
    assert build(stripe=ScriptedSource([both])).backfill(["stripe"]).sync.adopted == 0
    end_kept = observed("kept@example.com", "sub_k", EntitlementState.ENDED, at=1_700_000_100.0)
    build(stripe=ScriptedSource([[end_kept]])).reconcile(["stripe"])
    assert sotion_api.get_member(kept.id).paid  # paid by hand: not the bridge's to undo
    # --adopt-paid: paid members with an active purchase become the bridge's.
    report = build(stripe=ScriptedSource([[]])).backfill(["stripe"], adopt_paid=True)
    assert report.sync.adopted == 1 and report.sync.changes == []
    end = observed("adopted@example.com", "sub_a", EntitlementState.ENDED, at=1_700_000_100.0)
    build(stripe=ScriptedSource([[end]])).reconcile(["stripe"])
    assert not sotion_api.get_member(adopted.id).paid
    assert sotion_api.get_member(kept.id).paid


def test_an_interrupted_backfill_continues_where_it_stopped(
    build: Build, sotion_api: SotionClient, redis_conn: redis.Redis
) -> None:
    emails = _emails(500)
    source = ScriptedSource(_pages(emails), fail_after=3)
    with pytest.raises(ConnectionError):
        build(stripe=source).backfill(["stripe"])
    # Three pages were merged; Sotion is written only once the listing is complete.
    assert redis_conn.get("bridge:backfill:cursor:stripe") == b'{"page": 3}'
    assert list(sotion_api.iter_members()) == []
    report = build(stripe=source).backfill(["stripe"])
    assert source.cursors == [None, '{"page": 3}']
    assert report.providers[0].resumed and report.providers[0].observed == 200
    assert {m.email for m in sotion_api.iter_members()} == set(emails)


def test_dry_run_writes_nothing_and_says_what_it_would_do(
    build: Build, sotion: SandboxServer, sotion_api: SotionClient, redis_conn: redis.Redis
) -> None:
    sotion_api.create_member("old@example.com", paid=False)
    events = [observed("new@example.com", "sub_n"), observed("old@example.com", "sub_o")]
    requests = record_requests(sotion)
    report = build(stripe=ScriptedSource([events])).backfill(["stripe"], dry_run=True)
    assert [verb for verb, _, _ in requests.calls if verb != "GET"] == []
    assert Store(redis_conn).ledger_emails() == set()
    assert redis_conn.get("bridge:backfill:cursor:stripe") is None
    assert sorted((c.email, c.actions) for c in report.sync.changes) == [
        ("n***@example.com", ["create:paid=True"]),
        ("o***@example.com", ["patch:paid=True"]),
    ]


def test_reconcile_repairs_drift_made_by_hand_where_the_bridge_owns_the_field(
    build: Build, sotion_api: SotionClient
) -> None:
    build(stripe=ScriptedSource([[observed("drift@example.com", "sub_d")]])).backfill(["stripe"])
    member = sotion_api.find_member_by_email("drift@example.com")
    assert member is not None and member.paid
    sotion_api.update_member(member.id, paid=False)  # someone un-pays a paying buyer
    report = build(stripe=ScriptedSource([[]])).reconcile(["stripe"])
    assert sotion_api.get_member(member.id).paid
    assert [c.actions for c in report.sync.changes] == [["patch:paid=True"]]
    again = build(stripe=ScriptedSource([[]])).reconcile(["stripe"])
    assert again.sync.changes == []


def test_a_stale_observation_never_regresses_the_ledger(
    build: Build, sotion_api: SotionClient
) -> None:
    ended = observed("late@example.com", "sub_l", EntitlementState.ENDED, at=2_000.0)
    build(stripe=ScriptedSource([[ended]])).backfill(["stripe"])
    older = observed("late@example.com", "sub_l", EntitlementState.ACTIVE, at=1_000.0)
    report = build(stripe=ScriptedSource([[older]])).reconcile(["stripe"])
    assert report.providers[0].merged == 0
    assert sotion_api.find_member_by_email("late@example.com") is None


def test_an_event_a_webhook_delivered_is_left_to_its_job_and_vice_versa(
    build: Build, client, queue: Queue, sotion_api: SotionClient
) -> None:
    body = event(
        "customer.subscription.updated",
        {"id": "sub_w", "object": "subscription", "customer": "cus_w", "status": "active"},
        event_id="evt_webhook",
    )
    assert post(client, body)["queued"] == 1
    replayed = observed("w@example.com", "sub_w", event_id="evt_webhook", customer="cus_w")
    fresh = observed("x@example.com", "sub_x", event_id="evt_missed")
    report = build(stripe=ScriptedSource([[replayed, fresh]])).reconcile(["stripe"])
    assert report.providers[0].skipped["already applied (a webhook or an earlier run)"] == 1
    assert report.providers[0].merged == 1
    # The missed event was applied by the reconcile: its late delivery is a duplicate.
    late = event("customer.subscription.updated", {"id": "sub_x"}, event_id="evt_missed")
    assert post(client, late)["queued"] == 0
    assert queue.count == 1  # only the first webhook's job waits


def test_test_mode_observations_are_skipped_unless_accepted(build: Build) -> None:
    report = build(
        stripe=ScriptedSource([[observed("t@example.com", "sub_t", test_mode=True)]])
    ).backfill(["stripe"])
    assert report.providers[0].skipped == {"test mode": 1}
    assert report.sync.members == 0


def test_an_unknown_email_is_taken_from_what_the_ledger_learned(
    build: Build, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    # A deleted customer: the listing has no email, an earlier event taught it.
    first = observed("known@example.com", "sub_first", customer="cus_gone")
    build(stripe=ScriptedSource([[first]])).backfill(["stripe"])
    second = observed(None, "sub_second", customer="cus_gone")
    nobody = observed(None, "sub_nobody", customer="cus_never")
    report = build(stripe=ScriptedSource([[second, nobody]])).reconcile(["stripe"])
    assert "stripe:sub_second" in runtime.store.entitlements("known@example.com")
    assert report.providers[0].skipped == {"no email known for the customer": 1}


def test_a_dispute_blocks_and_a_member_blocked_by_the_bridge_is_unblocked_when_won(
    build: Build, sotion_api: SotionClient
) -> None:
    build(stripe=ScriptedSource([[observed("d@example.com", "sub_d")]])).backfill(["stripe"])
    opened = observed("d@example.com", "sub_d", dispute=DisputeState.OPEN, at=1_700_000_050.0)
    build(stripe=ScriptedSource([[opened]])).reconcile(["stripe"])
    member = sotion_api.find_member_by_email("d@example.com")
    assert member is not None and member.blocked
    won = observed("d@example.com", "sub_d", dispute=DisputeState.WON, at=1_700_000_090.0)
    build(stripe=ScriptedSource([[won]])).reconcile(["stripe"])
    assert not sotion_api.get_member(member.id).blocked


def test_an_email_a_job_holds_is_repaired_after_the_job(
    build: Build, runtime: worker_runtime.Runtime, sotion_api: SotionClient
) -> None:
    import threading

    lease_taken = threading.Event()

    def hold() -> None:
        with runtime.store.email_lock("busy@example.com"):
            lease_taken.set()
            threading.Event().wait(1.0)

    holder = threading.Thread(target=hold)
    holder.start()
    lease_taken.wait(5)
    events = [observed("busy@example.com", "sub_b"), observed("free@example.com", "sub_f")]
    report = build(stripe=ScriptedSource([events])).backfill(["stripe"])
    holder.join()
    assert {m.email for m in sotion_api.iter_members()} == {"busy@example.com", "free@example.com"}
    assert report.sync.failures == []


def test_a_member_created_meanwhile_is_patched_not_duplicated(
    build: Build, runtime: worker_runtime.Runtime, sotion_api: SotionClient, monkeypatch
) -> None:
    original = runtime.sotion.bulk_create_members

    def racing(members):  # a signup lands between the listing and the bulk create
        members = list(members)
        sotion_api.create_member("race@example.com", paid=False)
        return original(members)

    monkeypatch.setattr(runtime.sotion, "bulk_create_members", racing)
    report = build(stripe=ScriptedSource([[observed("race@example.com", "sub_r")]])).backfill(
        ["stripe"]
    )
    members = [m for m in sotion_api.iter_members() if m.email == "race@example.com"]
    assert len(members) == 1 and sotion_api.get_member(members[0].id).paid
    assert report.sync.changes[0].actions == ["create:conflict", "patch:paid=True"]
    # Someone else made it: its paid is the bridge's (the bridge set it), nothing more.
    record = runtime.store.member_record("race@example.com")
    assert record.bridge_paid and record.id == members[0].id


def test_one_run_at_a_time(build: Build, redis_conn: redis.Redis) -> None:
    redis_conn.set("bridge:reconcile:lock", "someone", px=5000)
    with pytest.raises(ReconcileBusyError):
        build(stripe=ScriptedSource([[]])).reconcile(["stripe"])


def test_reconcile_passes_the_last_run_and_the_granting_keys(build: Build) -> None:
    first = ScriptedSource([[observed("k@example.com", "sub_k")]])
    reconciler = build(stripe=first)
    reconciler.backfill(["stripe"])
    started = reconciler.last_run("stripe")
    assert started is not None
    second = ScriptedSource([[]])
    build(stripe=second).reconcile(["stripe"])
    assert second.since == [started]
    assert second.known == [["stripe:sub_k"]]


def test_jobs_queued_meanwhile_still_apply(
    build: Build, client, queue: Queue, sotion_api: SotionClient
) -> None:
    build(stripe=ScriptedSource([[observed("j@example.com", "sub_j", customer="cus_j")]])).backfill(
        ["stripe"]
    )
    body = event(
        "customer.subscription.deleted",
        {"id": "sub_j", "object": "subscription", "customer": "cus_j", "status": "canceled"},
        event_id="evt_end",
        created=1_800_000_000,
    )
    assert post(client, body)["queued"] == 1
    drain(queue)
    member = sotion_api.find_member_by_email("j@example.com")
    assert member is not None and not member.paid


def test_the_cursor_does_not_pass_a_page_whose_buyer_is_still_unknown(
    build: Build, runtime: worker_runtime.Runtime, redis_conn: redis.Redis
) -> None:
    # Page 1: a deleted customer's subscription (no email); page 2 teaches the email.
    unknown = observed(None, "sub_gone", customer="cus_gone")
    teacher = observed("gone@example.com", "sub_other", customer="cus_gone")
    pages = [[unknown], [teacher], [observed("x@example.com", "sub_x")], [], []]
    source = ScriptedSource(pages, fail_after=4)
    cursors: list[bytes | None] = []

    class Watched(ScriptedSource):
        def backfill(self, cursor=None):
            for batch in source.backfill(cursor):
                yield batch
                cursors.append(redis_conn.get("bridge:backfill:cursor:stripe"))

    with pytest.raises(ConnectionError):
        build(stripe=Watched([])).backfill(["stripe"])
    # Not past page 1 while its observation waited; past page 3 once page 2 taught it.
    assert cursors[:2] == [None, None]
    assert redis_conn.get("bridge:backfill:cursor:stripe") == b'{"page": 4}'
    assert "stripe:sub_gone" in runtime.store.entitlements("gone@example.com")


def test_a_listing_of_an_unchanged_past_due_does_not_restart_its_grace(
    build: Build, runtime: worker_runtime.Runtime
) -> None:
    first = observed("p@example.com", "sub_p", EntitlementState.PAST_DUE, at=1_000.0)
    build(stripe=ScriptedSource([[first]])).backfill(["stripe"])
    again = observed("p@example.com", "sub_p", EntitlementState.PAST_DUE, at=900_000.0)
    report = build(stripe=ScriptedSource([[again]])).reconcile(["stripe"])
    assert report.providers[0].merged == 0
    held = runtime.store.entitlements("p@example.com")["stripe:sub_p"]
    assert held.occurred_at == 1_000.0  # the grace counts from the real change


def test_known_purchases_are_re_read_in_turn_a_bounded_share_per_run(
    build: Build, monkeypatch
) -> None:
    from workers import reconcile as engine

    monkeypatch.setattr(engine, "KNOWN_PER_RUN", 3)
    events = [observed(f"k{i}@example.com", f"sub_{i}") for i in range(7)]
    build(stripe=ScriptedSource([events])).backfill(["stripe"])
    seen: list[list[str]] = []
    for _ in range(3):
        source = ScriptedSource([[]])
        build(stripe=source).reconcile(["stripe"])
        seen.append(source.known[0])
    keys = sorted(f"stripe:sub_{i}" for i in range(7))
    assert seen == [keys[0:3], keys[3:6], [keys[6], *keys[0:2]]]


def test_with_no_earlier_run_a_reconcile_looks_back_three_days(build: Build) -> None:
    import time

    source = ScriptedSource([[]])
    before = time.time()
    build(stripe=source).reconcile(["stripe"])
    [since] = source.since
    assert since is not None and before - 3 * 86400 - 5 <= since <= before - 3 * 86400 + 5


def test_a_run_that_loses_its_lease_stops_before_writing_more(
    build: Build, redis_conn: redis.Redis, sotion_api: SotionClient
) -> None:
    from workers.lease import LeaseLostError

    class Stealing(ScriptedSource):
        def backfill(self, cursor=None):
            for batch in super().backfill(cursor):
                yield batch
                redis_conn.set("bridge:reconcile:lock", "another run")  # a failover, a stall

    source = Stealing(_pages(_emails(300)))
    with pytest.raises(LeaseLostError):
        build(stripe=source).backfill(["stripe"])
    assert list(sotion_api.iter_members()) == []


def test_a_purchase_minutes_old_is_left_to_its_webhook_by_sources_on_the_objects_clock(
    build: Build, runtime: worker_runtime.Runtime
) -> None:
    import time

    now = time.time()
    fresh = observed("fresh@example.com", "sub_fresh", at=now - 60)
    older = observed("older@example.com", "sub_older", at=now - 3600)
    source = ScriptedSource([[fresh, older]], dated_by_objects=True)
    report = build(stripe=source).reconcile(["stripe"])
    assert report.providers[0].skipped == {"bought in the last 10 minutes (left to its webhook)": 1}
    assert runtime.store.owner_of("stripe:sub_fresh") is None  # its webhook may name another
    assert runtime.store.owner_of("stripe:sub_older") == "older@example.com"
    # A source dated by its reads cannot tell: it merges at once.
    build(stripe=ScriptedSource([[fresh]])).reconcile(["stripe"])
    assert runtime.store.owner_of("stripe:sub_fresh") == "fresh@example.com"


def test_a_member_sotion_refuses_is_reported_masked_and_the_rest_repaired(
    build: Build, runtime: worker_runtime.Runtime, sotion_api: SotionClient, monkeypatch
) -> None:
    from bridge.sotion import PermanentError

    sotion_api.create_member("refused@example.com", paid=False)
    sotion_api.create_member("fine@example.com", paid=False)
    original = runtime.sotion.update_member

    def refusing(member_id: str, **fields):  # Sotion's message quotes the address
        if member_id == sotion_api.find_member_by_email("refused@example.com").id:
            raise PermanentError("invalid member refused@example.com", status=422)
        return original(member_id, **fields)

    monkeypatch.setattr(runtime.sotion, "update_member", refusing)
    events = [observed("refused@example.com", "sub_r"), observed("fine@example.com", "sub_f")]
    report = build(stripe=ScriptedSource([events])).backfill(["stripe"])
    assert report.sync.failures == ["r***@example.com: invalid member r***@example.com status=422"]
    assert sotion_api.find_member_by_email("fine@example.com").paid


def test_an_email_no_page_teaches_holds_the_cursor_back_a_few_pages_only(
    build: Build, redis_conn: redis.Redis
) -> None:
    from workers.reconcile import MAX_HELD_PAGES

    pages = [[observed(None, "sub_nobody", customer="cus_nobody")]]
    pages += [[observed(f"p{i}@example.com", f"sub_p{i}")] for i in range(MAX_HELD_PAGES + 4)]
    source = ScriptedSource(pages, fail_after=MAX_HELD_PAGES + 3)
    with pytest.raises(ConnectionError):
        build(stripe=source).backfill(["stripe"])
    # Settled after MAX_HELD_PAGES pages (no email anywhere: skipped), then the cursor moves.
    cursor = redis_conn.get("bridge:backfill:cursor:stripe")
    assert cursor == f'{{"page": {MAX_HELD_PAGES + 3}}}'.encode()
