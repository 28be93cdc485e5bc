"""The worker store's side of issue 10: the member as the bridge last saw it (``seen``), the
ledger and record read in one trip, and the owner claim and alias learning in one script."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis

from bridge.events import EntitlementState, MembershipEvent
from bridge.ledger import Entitlement
from bridge.membership import MemberSnapshot
from workers.records import MemberRecord
from workers.store import ALIAS_TTL_SECONDS, PREFIX, Store

EMAIL = "buyer@example.com"
OTHER = "other@example.com"
MEMBER_ID = "00000000-0000-4000-8000-000000000001"
NEW_ID = "00000000-0000-4000-8000-000000000002"
KEY = f"{PREFIX}member:{EMAIL}"
ENTITLEMENT = "stripe:sub_seen_1"
SEEN = MemberSnapshot(paid=True, blocked=True, groups=frozenset({"g_b", "g_a"}))


@pytest.fixture
def store(redis_conn: redis.Redis) -> Store:
    return Store(redis_conn)


def purchase(
    email: str | None = EMAIL,
    *,
    customer: str | None = "cus_seen_1",
    entitlement: str | None = ENTITLEMENT,
    **refs: str,
) -> MembershipEvent:
    """A Stripe event of the subscription ``sub_seen_1`` (its refs: ``refs``)."""
    return MembershipEvent(
        provider="stripe",
        event_id=f"evt_{customer}",
        event_type="invoice.paid",
        occurred_at=1_760_000_000.0,
        email=email,
        customer=customer,
        entitlement=entitlement,
        state=EntitlementState.ACTIVE if entitlement else None,
        refs=refs or {"subscription": "sub_seen_1"},
    )


# -- MemberRecord.seen ---------------------------------------------------------------------


def test_seen_round_trips_with_the_record(store: Store) -> None:
    record = MemberRecord(id=MEMBER_ID, bridge_paid=True, groups=frozenset({"g_a"}), seen=SEEN)

    store.save_member_record(EMAIL, record)

    assert store.member_record(EMAIL) == record
    assert store.member_records([EMAIL, OTHER]) == {EMAIL: record, OTHER: MemberRecord()}


def test_saving_a_record_without_seen_forgets_the_stored_one(store: Store) -> None:
    store.save_member_record(EMAIL, MemberRecord(id=MEMBER_ID, seen=SEEN))

    store.save_member_record(EMAIL, MemberRecord(id=MEMBER_ID))

    assert store.member_record(EMAIL) == MemberRecord(id=MEMBER_ID)
    assert not store.redis.hexists(KEY, "seen")


def test_seen_is_dropped_with_the_id(store: Store) -> None:
    store.save_member_record(EMAIL, MemberRecord(id=MEMBER_ID, bridge_paid=True, seen=SEEN))

    # A record without an id (the member is gone): what was seen belonged to that id.
    store.save_member_record(EMAIL, MemberRecord(bridge_paid=True, seen=SEEN))
    assert store.member_record(EMAIL) == MemberRecord(bridge_paid=True)

    # Nor does it come back with the next id.
    store.save_member_record(EMAIL, MemberRecord(id=NEW_ID, bridge_paid=True))
    assert store.member_record(EMAIL) == MemberRecord(id=NEW_ID, bridge_paid=True)


def test_seen_stored_without_an_id_is_not_read(store: Store, redis_conn: redis.Redis) -> None:
    store.save_member_record(EMAIL, MemberRecord(id=MEMBER_ID, seen=SEEN))
    redis_conn.hdel(KEY, "id")

    assert store.member_record(EMAIL).seen is None


def test_save_member_seen_leaves_the_claims_alone(store: Store) -> None:
    claims = MemberRecord(
        id=MEMBER_ID, bridge_blocked=True, bridge_paid=True, groups=frozenset({"g_a"})
    )
    store.save_member_record(EMAIL, claims)
    seen = MemberSnapshot(paid=False, blocked=False, groups=frozenset({"g_c"}))

    assert store.save_member_seen(EMAIL, NEW_ID, seen, read_before=store.member_record(EMAIL))

    assert store.member_record(EMAIL) == MemberRecord(
        id=NEW_ID, bridge_blocked=True, bridge_paid=True, groups=frozenset({"g_a"}), seen=seen
    )


def test_save_member_seen_stores_nothing_once_a_job_wrote_the_member(store: Store) -> None:
    before = MemberRecord(id=MEMBER_ID, bridge_paid=True, seen=SEEN)
    store.save_member_record(EMAIL, before)
    read = store.member_record(EMAIL)
    written = MemberSnapshot(paid=True, blocked=False, groups=frozenset())
    store.save_member_record(EMAIL, replace(before, seen=written))  # a job, after the read

    assert not store.save_member_seen(EMAIL, MEMBER_ID, SEEN, read_before=read)

    assert store.member_record(EMAIL).seen == written


def test_save_member_seen_of_a_new_email_claims_nothing(store: Store) -> None:
    # A record without bridge_paid reads as the bridge's (records from before it was
    # tracked): a listing's record must say it is not.
    assert store.save_member_seen(EMAIL, MEMBER_ID, SEEN, read_before=MemberRecord())

    assert store.member_record(EMAIL) == MemberRecord(id=MEMBER_ID, seen=SEEN)


# -- member_state ----------------------------------------------------------------------------


def test_member_state_is_the_ledger_and_the_record(store: Store) -> None:
    entitlement = Entitlement(
        key=ENTITLEMENT,
        provider="stripe",
        state=EntitlementState.ACTIVE,
        occurred_at=1_760_000_000.0,
        event_id="evt_1",
        products=("price_1",),
        products_at=1_760_000_000.0,
    )
    record = MemberRecord(id=MEMBER_ID, bridge_paid=True, seen=SEEN)
    store.save_entitlement(EMAIL, entitlement)
    store.save_member_record(EMAIL, record)

    assert store.member_state(EMAIL) == ({ENTITLEMENT: entitlement}, record)
    assert store.member_state(OTHER) == ({}, MemberRecord())


# -- claim_and_learn -------------------------------------------------------------------------


def test_the_first_email_owns_the_entitlement_and_teaches_its_aliases(store: Store) -> None:
    event = purchase(subscription="sub_seen_1", invoice="in_seen_1")

    owner = store.claim_and_learn(event, EMAIL, ENTITLEMENT)

    assert owner == EMAIL
    assert store.owner_of(ENTITLEMENT) == EMAIL
    for ref in ("cus_seen_1", "sub_seen_1", "in_seen_1"):
        assert store.email_for("stripe", ref) == EMAIL
    for ref in ("sub_seen_1", "in_seen_1"):
        assert store.entitlement_for("stripe", ref) == ENTITLEMENT
    keys = [
        f"{PREFIX}owner:{ENTITLEMENT}",
        store.email_key("stripe", "cus_seen_1"),
        f"{PREFIX}entitlement:stripe:in_seen_1",
    ]
    for key in keys:
        assert 0 < store.redis.ttl(key) <= ALIAS_TTL_SECONDS


def test_a_second_email_gets_the_owner_and_its_aliases_point_at_the_owner(store: Store) -> None:
    store.claim_and_learn(purchase(), EMAIL, ENTITLEMENT)
    renewal = purchase(OTHER, customer="cus_seen_2", subscription="sub_seen_1", invoice="in_2")

    owner = store.claim_and_learn(renewal, OTHER, ENTITLEMENT)

    assert owner == EMAIL
    assert store.owner_of(ENTITLEMENT) == EMAIL
    assert store.email_for("stripe", "cus_seen_2") == EMAIL
    assert store.email_for("stripe", "in_2") == EMAIL
    assert store.entitlement_for("stripe", "in_2") == ENTITLEMENT


def test_an_event_without_an_entitlement_teaches_its_email_and_claims_nothing(
    store: Store,
) -> None:
    event = purchase(entitlement=None, charge="ch_seen_1")

    owner = store.claim_and_learn(event, EMAIL, None)

    assert owner == EMAIL
    assert store.email_for("stripe", "cus_seen_1") == EMAIL
    assert store.email_for("stripe", "ch_seen_1") == EMAIL
    assert store.entitlement_for("stripe", "ch_seen_1") is None
    assert list(store.redis.scan_iter(f"{PREFIX}owner:*")) == []


def test_claim_and_learn_works_after_the_script_cache_is_flushed(
    store: Store, redis_conn: redis.Redis
) -> None:
    store.claim_and_learn(purchase(), EMAIL, ENTITLEMENT)
    redis_conn.script_flush()  # a Redis restarted, or failed over: NOSCRIPT on the next call

    owner = store.claim_and_learn(purchase(OTHER, customer="cus_seen_2"), OTHER, ENTITLEMENT)

    assert owner == EMAIL
    assert store.email_for("stripe", "cus_seen_2") == EMAIL
