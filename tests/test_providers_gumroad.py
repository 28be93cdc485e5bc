"""Gumroad provider: URL-token verification, body loading and normalization (pure)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ForbiddenError, PayloadError, SignatureError
from bridge.events import DisputeState, EntitlementState, MembershipEvent, parse_timestamp
from bridge.ledger import Entitlement, merge
from bridge.providers import gumroad

# Copies of shared/fixtures/gumroad (provenance in shared/fixtures/SOURCES.md): one
# application/x-www-form-urlencoded body per file, as Gumroad's HTTParty posts it.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gumroad"
FORM = "application/x-www-form-urlencoded"
TOKEN = "gr_3f9c2d7a1b8e4f60"
SELLER = "kL0paVL2SdmJSYsNs-OCMg=="
ONE_TIME_SALE = "FO8TXN-dvxYabdavG97Y-Q=="
SUBSCRIPTION = "GazW4_NBcQy-o7Gjjng7lw=="
FIRST_CHARGE = "Zx1cV2bN3mQ4wE5rT6yU7i=="
RENEWAL_CHARGE = "Pp9oO8iI7uU6yY5tT4rR3e=="
PRO_PRODUCT = "product:wAz3bLm5QeX9sT1kPq7YvA=="
PRO_PRODUCTS = (PRO_PRODUCT, "permalink:pro", "product:qWeRt", "permalink:qWeRt")
MEMBERS_PRODUCTS = (
    "product:32-nPainqpLj1B_WIwVlMw==",
    "permalink:members",
    "product:XCBbJ",
    "permalink:XCBbJ",
)


def raw(name: str) -> bytes:
    """A fixture body, without the newline that ends the file."""
    return (FIXTURES / f"{name}.form").read_bytes().rstrip(b"\n")


def payload(name: str, **changes: Any) -> dict[str, Any]:
    """A fixture loaded as the route loads it, with fields changed or (None) removed."""
    loaded = gumroad.load(raw(name), FORM)
    for key, value in changes.items():
        if value is None:
            loaded.pop(key, None)
        else:
            loaded[key] = value
    return loaded


def only(data: dict[str, Any], **options: Any) -> MembershipEvent:
    events = gumroad.parse(data, **options)
    assert len(events) == 1
    return events[0]


def ts(text: str) -> float:
    value = parse_timestamp(text)
    assert value is not None
    return value


def restarted() -> dict[str, Any]:
    """A subscription_restarted ping, rebuilt from the cancellation fixture's fields."""
    data = payload("cancellation", resource_name="subscription_restarted")
    for key in ("cancelled", "cancelled_at", "cancelled_by_buyer"):
        del data[key]
    data["restarted_at"] = "2026-04-02T10:00:00Z"
    return data


def plan_change(kind: str = "upgrade", *, tier: bool = True) -> dict[str, Any]:
    """A subscription_updated ping (tier change), as Subscription#send_updated_... sends it."""
    data = payload("cancellation", resource_name="subscription_updated")
    for key in ("cancelled", "cancelled_at", "cancelled_by_buyer"):
        del data[key]
    data["type"] = kind
    data["effective_as_of"] = "2026-02-20T12:00:00Z"
    data["old_plan"] = {"tier": {"id": "basic_tier==", "name": "Basic"}, "recurrence": "monthly"}
    data["new_plan"] = {"recurrence": "monthly", "price_cents": "1900", "quantity": "1"}
    if tier:
        data["new_plan"]["tier"] = {"id": "premium_tier==", "name": "Premium"}
    return data


# -- verify -------------------------------------------------------------------------------


def test_matching_token_passes() -> None:
    gumroad.verify(TOKEN, TOKEN)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(TOKEN[:-1] + "1", id="one-character-off"),
        pytest.param(TOKEN + "x", id="longer"),
        pytest.param(TOKEN.upper(), id="different-case"),
    ],
)
def test_wrong_token_is_rejected(token: str) -> None:
    with pytest.raises(SignatureError, match="Unknown Gumroad ping URL"):
        gumroad.verify(token, TOKEN)


def test_empty_token_is_rejected() -> None:
    with pytest.raises(SignatureError):
        gumroad.verify("", TOKEN)


def test_empty_configured_token_never_matches_even_an_empty_one() -> None:
    with pytest.raises(SignatureError):
        gumroad.verify("", "")


@pytest.mark.parametrize("token", ["tökén-🔑", "\udcff", "gr_\x00"])
def test_non_ascii_token_is_rejected_without_a_type_error(token: str) -> None:
    with pytest.raises(SignatureError):
        gumroad.verify(token, TOKEN)


def test_non_ascii_configured_token_matches_itself() -> None:
    gumroad.verify("clé-secrète", "clé-secrète")


# -- load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.form")))
def test_every_fixture_loads_into_a_dict_of_strings_lists_and_dicts(name: str) -> None:
    loaded = gumroad.load(raw(name), FORM)
    assert isinstance(loaded["resource_name"], str)
    assert not any("[" in key or "]" in key for key in loaded)
    for value in loaded.values():
        assert isinstance(value, str | list | dict)
    assert gumroad.parse(loaded)  # every fixture means one membership event


def test_fixtures_cover_the_seven_documented_examples() -> None:
    assert len(list(FIXTURES.glob("*.form"))) == 7


def test_card_fields_nest_into_a_dict_with_blank_values_kept() -> None:
    loaded = gumroad.load(raw("sale_one_time"), FORM)
    assert loaded["card"] == {
        "visual": "**** **** **** 4242",
        "type": "visa",
        "bin": "",
        "expiry_month": "",
        "expiry_year": "",
    }


def test_purchase_ids_become_a_list_in_order() -> None:
    loaded = gumroad.load(raw("cancellation"), FORM)
    assert loaded["purchase_ids"] == [FIRST_CHARGE, RENEWAL_CHARGE]


def test_values_are_percent_decoded_exactly_once() -> None:
    loaded = gumroad.load(raw("sale_one_time"), FORM)
    assert loaded["email"] == "buyer@example.com"
    assert loaded["product_name"] == "Members Area"
    # url_params arrive already encoded once by Gumroad: one decode leaves that encoding.
    assert loaded["url_params"] == {
        "source_url": "https%3A%2F%2Fexample.com%2Fjoin",
        "ref": "newsletter",
    }
    assert gumroad.load(raw("sale_recurring_charge"), FORM)["variants"] == {"Tier": "Pro"}


def test_booleans_stay_strings() -> None:
    loaded = gumroad.load(raw("refund"), FORM)
    assert loaded["refunded"] == "true"
    assert loaded["disputed"] == "false"


def test_deeper_nesting_builds_nested_dicts() -> None:
    body = (
        b"new_plan%5Btier%5D%5Bid%5D=T1&new_plan%5Btier%5D%5Bname%5D=Gold&new_plan%5Bquantity%5D=2"
    )
    assert gumroad.load(body, FORM) == {
        "new_plan": {"tier": {"id": "T1", "name": "Gold"}, "quantity": "2"}
    }


def test_unencoded_brackets_nest_too() -> None:
    assert gumroad.load(b"card[type]=visa&ids[]=a&ids[]=b", FORM) == {
        "card": {"type": "visa"},
        "ids": ["a", "b"],
    }


def test_percent_encoded_brackets_inside_a_name_stay_literal() -> None:
    # Gumroad escapes brackets in key names before HTTParty encodes: `%255B` on the wire.
    assert gumroad.load(b"What%255Brole%255D=dev", FORM) == {"What%5Brole%5D": "dev"}


def test_malformed_bracket_key_is_kept_as_a_literal_name() -> None:
    assert gumroad.load(b"a%5Bb=1&%5Bc%5D=2", FORM) == {"a[b": "1", "[c]": "2"}


def test_missing_content_type_is_read_as_a_form() -> None:
    assert gumroad.load(raw("refund"), None) == gumroad.load(raw("refund"), FORM)


def test_form_content_type_with_a_charset_is_read_as_a_form() -> None:
    loaded = gumroad.load(raw("dispute"), "application/x-www-form-urlencoded; charset=UTF-8")
    assert loaded["resource_name"] == "dispute"


def test_json_body_loads_as_sent() -> None:
    body = {"sale_id": "x", "refunded": False, "purchase_ids": ["a"], "card": {"type": "visa"}}
    loaded = gumroad.load(json.dumps(body).encode(), "Application/JSON; charset=utf-8")
    assert loaded == body


@pytest.mark.parametrize("body", [b"[1, 2]", b'"sale"', b"null", b"3"])
def test_json_body_must_be_an_object(body: bytes) -> None:
    with pytest.raises(PayloadError, match="JSON object"):
        gumroad.load(body, "application/json")


@pytest.mark.parametrize("body", [b"sale_id=1&email=a", b"{", b"", b"[" * 100_000])
def test_json_content_type_with_a_body_that_is_not_json_is_rejected(body: bytes) -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        gumroad.load(body, "application/json")


@pytest.mark.parametrize("content_type", [FORM, None, "application/json"])
def test_body_that_is_not_utf8_is_rejected(content_type: str | None) -> None:
    with pytest.raises(PayloadError, match="UTF-8"):
        gumroad.load(b"email=buyer\xff@example.com", content_type)


def test_percent_encoded_bytes_that_are_not_utf8_are_rejected() -> None:
    with pytest.raises(PayloadError):
        gumroad.load(b"email=buyer%FF%40example.com", FORM)


@pytest.mark.parametrize("body", [b"", b"&", b"&&&"])
def test_body_with_no_fields_is_rejected(body: bytes) -> None:
    with pytest.raises(PayloadError, match="empty"):
        gumroad.load(body, FORM)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"card=x&card[type]=visa", id="scalar-then-dict"),
        pytest.param(b"card[type]=visa&card=x", id="dict-then-scalar"),
        pytest.param(b"ids[]=a&ids[x]=b", id="list-then-dict"),
        pytest.param(b"ids[x]=a&ids[]=b", id="dict-then-list"),
        pytest.param(b"ids=a&ids[]=b", id="scalar-then-list"),
        pytest.param(b"ids[]=a&ids=b", id="list-then-scalar"),
        pytest.param(b"a[b]=1&a[b][c]=2", id="nested-scalar-then-dict"),
        pytest.param(b"a[b][c]=2&a[b]=1", id="nested-dict-then-scalar"),
        pytest.param(b"email=a@x.io&email=b@x.io", id="repeated-field"),
        pytest.param(b"items[][id]=1", id="dict-inside-a-list"),
    ],
)
def test_conflicting_nesting_is_rejected(body: bytes) -> None:
    with pytest.raises(PayloadError):
        gumroad.load(body, FORM)


def test_too_many_fields_are_rejected() -> None:
    body = "&".join(f"f{i}=x" for i in range(gumroad.MAX_FIELDS + 1)).encode()
    with pytest.raises(PayloadError):
        gumroad.load(body, FORM)


def test_as_many_fields_as_allowed_load() -> None:
    body = "&".join(f"f{i}=x" for i in range(gumroad.MAX_FIELDS)).encode()
    assert len(gumroad.load(body, FORM)) == gumroad.MAX_FIELDS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE ", True),
        ("1", True),
        (True, True),
        (1, True),
        ("false", False),
        ("", False),
        (None, False),
        (False, False),
        (0, False),
        ("yes please", False),
    ],
)
def test_flag_reads_form_and_json_booleans(value: Any, expected: bool) -> None:
    assert gumroad._flag(value) is expected


# -- parse: sales -------------------------------------------------------------------------


def test_one_time_sale_grants_the_sale() -> None:
    found = only(payload("sale_one_time"))
    assert found.provider == "gumroad"
    assert found.event_id == f"sale:{ONE_TIME_SALE}"
    assert found.event_type == "sale"
    assert found.occurred_at == ts("2026-01-05T19:38:56Z")
    assert found.email == "buyer@example.com"
    assert found.customer == "5530311507811"
    assert found.display_name == "Jane Buyer"
    assert found.entitlement == f"gumroad:sale_{ONE_TIME_SALE}"
    assert found.state is EntitlementState.ACTIVE
    assert found.products == MEMBERS_PRODUCTS
    assert found.refs == {"sale": f"sale_{ONE_TIME_SALE}"}
    assert found.test_mode is False
    assert found.dispute is None


def test_first_subscription_charge_grants_the_subscription() -> None:
    found = only(payload("sale_subscription_start"))
    assert found.event_id == f"sale:{FIRST_CHARGE}"
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.state is EntitlementState.ACTIVE
    assert found.products == PRO_PRODUCTS
    assert found.refs == {"sale": f"sale_{FIRST_CHARGE}", "subscription": f"sub_{SUBSCRIPTION}"}


def test_recurring_charge_renews_the_same_subscription() -> None:
    found = only(payload("sale_recurring_charge"))
    assert found.event_id == f"sale:{RENEWAL_CHARGE}"
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.state is EntitlementState.ACTIVE
    assert found.occurred_at == ts("2026-02-05T19:39:01Z")


def test_recurring_charges_have_distinct_event_ids() -> None:
    first = only(payload("sale_subscription_start"))
    renewal = only(payload("sale_recurring_charge"))
    assert first.entitlement == renewal.entitlement
    assert first.dedupe_key != renewal.dedupe_key


def test_retry_count_does_not_change_the_event_id() -> None:
    original = only(payload("sale_one_time"))
    for attempt in ("1", "2", "3"):
        retried = only(payload("sale_one_time", retry_count=attempt))
        assert retried.dedupe_key == original.dedupe_key
        assert retried == original


def test_retry_count_does_not_change_a_subscription_event_id() -> None:
    original = only(payload("subscription_ended_failed_payment"))
    retried = only(payload("subscription_ended_failed_payment", retry_count="2"))
    assert retried.dedupe_key == original.dedupe_key


def test_ping_without_resource_name_is_a_sale() -> None:
    found = only(payload("sale_one_time", resource_name=None))
    assert found.event_type == "sale"
    assert found.event_id == f"sale:{ONE_TIME_SALE}"
    assert found.state is EntitlementState.ACTIVE


def test_blank_resource_name_is_a_sale() -> None:
    assert only(payload("sale_one_time", resource_name="")).event_type == "sale"


def test_test_purchase_is_marked_test_mode() -> None:
    assert only(payload("sale_one_time", test="true")).test_mode is True
    assert only(payload("sale_one_time")).test_mode is False


def test_email_is_lowercased_and_trimmed() -> None:
    assert only(payload("sale_one_time", email=" Buyer@Example.COM ")).email == "buyer@example.com"


def test_sale_without_optional_fields_still_grants() -> None:
    data = payload("sale_one_time")
    for key in ("full_name", "purchaser_id", "permalink", "short_product_id"):
        del data[key]
    found = only(data)
    assert found.display_name is None
    assert found.customer is None
    assert found.products == ("product:32-nPainqpLj1B_WIwVlMw==",)
    assert found.state is EntitlementState.ACTIVE


def test_sale_pinged_after_a_full_refund_ends_the_entitlement() -> None:
    assert only(payload("sale_one_time", refunded="true")).state is EntitlementState.ENDED


def test_sale_pinged_after_a_chargeback_keeps_its_lifecycle_and_opens_the_dispute() -> None:
    found = only(payload("sale_one_time", disputed="true"))
    assert found.state is EntitlementState.ACTIVE
    assert found.dispute is DisputeState.OPEN
    assert found.dispute_id == f"sale_{ONE_TIME_SALE}"


def test_refunded_sale_pinged_after_a_chargeback_ends_and_opens_the_dispute() -> None:
    found = only(payload("sale_one_time", disputed="true", refunded="true"))
    assert found.state is EntitlementState.ENDED
    assert found.dispute is DisputeState.OPEN


def test_sale_pinged_after_a_won_dispute_grants_and_marks_the_dispute_won() -> None:
    # Gumroad keeps disputed=true once a chargeback happened; dispute_won says how it ended.
    found = only(payload("sale_one_time", disputed="true", dispute_won="true"))
    assert found.state is EntitlementState.ACTIVE
    assert found.dispute is DisputeState.WON
    assert found.dispute_id == f"sale_{ONE_TIME_SALE}"


def test_renewal_pinged_after_a_chargeback_disputes_that_charge_of_the_subscription() -> None:
    found = only(payload("sale_recurring_charge", disputed="true"))
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.dispute is DisputeState.OPEN
    assert found.dispute_id == f"sale_{RENEWAL_CHARGE}"


# -- parse: refunds and disputes ----------------------------------------------------------


def test_refund_ends_the_entitlement() -> None:
    found = only(payload("refund"))
    assert found.event_id == f"refund:{ONE_TIME_SALE}"
    assert found.event_type == "refund"
    assert found.state is EntitlementState.ENDED
    assert found.entitlement == f"gumroad:sale_{ONE_TIME_SALE}"
    assert found.email == "buyer@example.com"
    assert found.products == MEMBERS_PRODUCTS


def test_partial_refund_keeps_access() -> None:
    # Gumroad pings `refund` for partial refunds too, with refunded=false.
    found = only(payload("refund", refunded="false"))
    assert found.state is None
    assert found.entitlement == f"gumroad:sale_{ONE_TIME_SALE}"


def test_full_refund_after_a_partial_one_is_a_new_event() -> None:
    partial = only(payload("refund", refunded="false"))
    full = only(payload("refund"))
    assert partial.dedupe_key != full.dedupe_key


def test_refund_of_a_subscription_charge_ends_the_subscription_entitlement() -> None:
    data = payload("sale_recurring_charge", resource_name="refund", refunded="true")
    found = only(data)
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.state is EntitlementState.ENDED
    assert found.event_id == f"refund:{RENEWAL_CHARGE}"


def test_dispute_opens_a_dispute_and_leaves_the_lifecycle_alone() -> None:
    found = only(payload("dispute"))
    assert found.event_id == f"dispute:{ONE_TIME_SALE}"
    assert found.state is None
    assert found.dispute is DisputeState.OPEN
    assert found.changes_entitlement is True
    assert found.entitlement == f"gumroad:sale_{ONE_TIME_SALE}"
    assert found.dispute_id == f"sale_{ONE_TIME_SALE}"
    assert found.products == MEMBERS_PRODUCTS


def test_dispute_of_a_refunded_sale_ends_it_and_opens_the_dispute() -> None:
    found = only(payload("dispute", refunded="true"))
    assert found.state is EntitlementState.ENDED
    assert found.dispute is DisputeState.OPEN


def test_dispute_won_marks_the_dispute_won_and_leaves_the_lifecycle_alone() -> None:
    found = only(payload("dispute", resource_name="dispute_won", dispute_won="true"))
    assert found.event_id == f"dispute_won:{ONE_TIME_SALE}"
    assert found.event_type == "dispute_won"
    assert found.state is None
    assert found.dispute is DisputeState.WON
    assert found.entitlement == f"gumroad:sale_{ONE_TIME_SALE}"
    assert found.dispute_id == only(payload("dispute")).dispute_id


def test_dispute_won_on_a_refunded_sale_ends_it_and_marks_the_dispute_won() -> None:
    data = payload("dispute", resource_name="dispute_won", dispute_won="true", refunded="true")
    found = only(data)
    assert found.state is EntitlementState.ENDED
    assert found.dispute is DisputeState.WON


def test_refunds_and_disputes_are_dated_when_received() -> None:
    sold = ts("2026-01-05T19:38:56Z")
    later = sold + 86_400 * 30
    assert only(payload("refund"), received_at=later).occurred_at == later
    assert only(payload("dispute"), received_at=later).occurred_at == later
    # The sale itself keeps its own timestamp: Gumroad's retries arrive minutes late.
    assert only(payload("sale_one_time"), received_at=later).occurred_at == sold


def test_received_at_never_dates_an_event_before_its_sale() -> None:
    sold = ts("2026-01-05T19:38:56Z")
    assert only(payload("refund"), received_at=sold - 60).occurred_at == sold


def _ledger(*events: MembershipEvent) -> Entitlement:
    """The sale's entitlement after these events, in this order."""
    key = str(events[0].entitlement)
    held: Entitlement | None = None
    for event in events:
        held = merge(held, event, key) or held
    assert held is not None
    return held


def test_dispute_won_lifts_the_dispute_in_the_ledger_when_dated_by_arrival() -> None:
    sold = ts("2026-01-05T19:38:56Z")
    sale = only(payload("sale_one_time"))
    dispute = only(payload("dispute"), received_at=sold + 3600)
    won = only(
        payload("dispute", resource_name="dispute_won", dispute_won="true"),
        received_at=sold + 7200,
    )

    held = _ledger(sale, dispute, won)

    assert held.state is EntitlementState.ACTIVE
    assert [(d.state, d.at) for d in held.disputes] == [(DisputeState.WON, sold + 7200)]


def test_dispute_won_lifts_the_dispute_even_when_both_carry_the_sale_timestamp() -> None:
    # Undated, both pings share sale_timestamp: the tie goes to the later stage (won).
    sale = only(payload("sale_one_time"))
    dispute = only(payload("dispute"))
    won = only(payload("dispute", resource_name="dispute_won", dispute_won="true"))
    assert dispute.occurred_at == won.occurred_at == sale.occurred_at

    for order in ((sale, dispute, won), (won, dispute, sale), (dispute, won, sale)):
        held = _ledger(*order)
        assert held.state is EntitlementState.ACTIVE
        assert [d.state for d in held.disputes] == [DisputeState.WON]


def test_sale_pinged_again_after_the_dispute_keeps_it_open() -> None:
    sold = ts("2026-01-05T19:38:56Z")
    dispute = only(payload("dispute"), received_at=sold + 3600)
    repinged = only(payload("sale_one_time", disputed="true"))

    held = _ledger(dispute, repinged)

    assert held.state is EntitlementState.ACTIVE
    assert [d.state for d in held.disputes] == [DisputeState.OPEN]


# -- parse: subscription resources --------------------------------------------------------


def test_cancellation_keeps_access_until_the_subscription_ends() -> None:
    found = only(payload("cancellation"))
    assert found.event_id == f"cancellation:{SUBSCRIPTION}:2026-03-05T19:38:56Z"
    assert found.event_type == "cancellation"
    assert found.state is None
    assert found.occurred_at == ts("2026-03-05T19:38:56Z")
    assert found.email == "buyer@example.com"
    assert found.customer == "5530311507811"
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.products == (PRO_PRODUCT,)
    assert found.refs == {"subscription": f"sub_{SUBSCRIPTION}", "sale": f"sale_{RENEWAL_CHARGE}"}


def test_cancellation_for_failed_payments_keeps_access_too() -> None:
    data = payload("cancellation", cancelled_due_to_payment_failures="true")
    del data["cancelled_by_buyer"]
    assert only(data).state is None


def test_subscription_ended_revokes_the_subscription() -> None:
    found = only(payload("subscription_ended_failed_payment"))
    assert found.event_id == f"subscription_ended:{SUBSCRIPTION}:2026-03-12T08:00:03Z"
    assert found.event_type == "subscription_ended"
    assert found.state is EntitlementState.ENDED
    assert found.occurred_at == ts("2026-03-12T08:00:03Z")
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.email == "buyer@example.com"
    assert found.products == (PRO_PRODUCT,)


def test_subscription_restarted_grants_the_subscription_again() -> None:
    found = only(restarted())
    assert found.event_id == f"subscription_restarted:{SUBSCRIPTION}:2026-04-02T10:00:00Z"
    assert found.state is EntitlementState.ACTIVE
    assert found.occurred_at == ts("2026-04-02T10:00:00Z")
    assert found.entitlement == f"gumroad:sub_{SUBSCRIPTION}"
    assert found.products == (PRO_PRODUCT,)
    assert found.refs["sale"] == f"sale_{RENEWAL_CHARGE}"


def test_subscription_upgrade_grants_the_new_tier() -> None:
    found = only(plan_change("upgrade"))
    assert found.event_id == f"subscription_updated:{SUBSCRIPTION}:2026-02-20T12:00:00Z"
    assert found.event_type == "subscription_updated"
    assert found.state is EntitlementState.ACTIVE
    assert found.occurred_at == ts("2026-02-20T12:00:00Z")
    assert found.products == (PRO_PRODUCT, "variant:premium_tier==")


def test_subscription_downgrade_changes_nothing_until_it_takes_effect() -> None:
    found = only(plan_change("downgrade"))
    assert found.state is None
    assert found.products == (PRO_PRODUCT,)


def test_subscription_update_without_a_tier_changes_nothing() -> None:
    found = only(plan_change("upgrade", tier=False))
    assert found.state is None


def test_subscription_update_encoded_as_a_form_nests_its_plans() -> None:
    form = urllib.parse.urlencode(
        {
            "subscription_id": SUBSCRIPTION,
            "product_id": "wAz3bLm5QeX9sT1kPq7YvA==",
            "user_email": "buyer@example.com",
            "purchase_ids[]": FIRST_CHARGE,
            "created_at": "2026-01-05T19:38:56Z",
            "resource_name": "subscription_updated",
            "type": "upgrade",
            "effective_as_of": "2026-02-20T12:00:00Z",
            "new_plan[tier][id]": "premium_tier==",
            "new_plan[tier][name]": "Premium",
            "new_plan[recurrence]": "yearly",
        }
    ).encode()
    found = only(gumroad.load(form, FORM))
    assert found.state is EntitlementState.ACTIVE
    assert found.products == (PRO_PRODUCT, "variant:premium_tier==")
    assert found.refs["sale"] == f"sale_{FIRST_CHARGE}"


def test_subscription_ping_without_its_own_timestamp_is_dated_by_creation() -> None:
    data = payload("subscription_ended_failed_payment")
    del data["ended_at"]
    found = only(data)
    assert found.occurred_at == ts("2026-01-05T19:38:56Z")
    assert found.event_id == f"subscription_ended:{SUBSCRIPTION}:2026-01-05T19:38:56Z"


def test_repeated_cancellations_of_one_subscription_are_distinct_events() -> None:
    first = only(payload("cancellation"))
    again = only(payload("cancellation", cancelled_at="2026-05-05T19:38:56Z"))
    assert first.dedupe_key != again.dedupe_key


def test_empty_purchase_ids_leave_no_sale_reference() -> None:
    assert "sale" not in only(payload("cancellation", purchase_ids=[""])).refs


def test_unknown_resource_means_nothing() -> None:
    assert gumroad.parse(payload("sale_one_time", resource_name="license_key_rotated")) == []


# -- DESIGN §4, the Gumroad row ------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "state", "dispute"),
    [
        pytest.param(
            lambda: payload("sale_one_time"), EntitlementState.ACTIVE, None, id="grants-sale"
        ),
        pytest.param(
            lambda: payload("sale_subscription_start"),
            EntitlementState.ACTIVE,
            None,
            id="grants-subscription-sale",
        ),
        pytest.param(
            lambda: payload("sale_recurring_charge"),
            EntitlementState.ACTIVE,
            None,
            id="grants-renewal",
        ),
        pytest.param(restarted, EntitlementState.ACTIVE, None, id="grants-subscription_restarted"),
        pytest.param(lambda: payload("refund"), EntitlementState.ENDED, None, id="ends-refund"),
        pytest.param(
            lambda: payload("subscription_ended_failed_payment"),
            EntitlementState.ENDED,
            None,
            id="ends-subscription_ended",
        ),
        pytest.param(lambda: payload("dispute"), None, DisputeState.OPEN, id="dispute-action"),
        pytest.param(lambda: payload("cancellation"), None, None, id="keeps-cancellation"),
        pytest.param(
            lambda: payload("dispute", resource_name="dispute_won", dispute_won="true"),
            None,
            DisputeState.WON,
            id="restores-dispute_won",
        ),
    ],
)
def test_design_gumroad_row(
    build: Any, state: EntitlementState | None, dispute: DisputeState | None
) -> None:
    found = only(build())
    assert found.state is state
    assert found.dispute is dispute
    assert found.entitlement is not None
    assert found.email == "buyer@example.com"


# -- sale_dispute -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sale", "dispute"),
    [
        pytest.param({}, None, id="bare-sale"),
        pytest.param({"disputed": False, "dispute_won": False}, None, id="never-disputed"),
        pytest.param({"chargedback": True}, DisputeState.OPEN, id="chargedback"),
        pytest.param({"disputed": True}, DisputeState.OPEN, id="disputed"),
        pytest.param({"disputed": True, "dispute_won": True}, DisputeState.WON, id="won"),
        pytest.param(
            {"chargedback": True, "disputed": True, "dispute_won": True},
            DisputeState.OPEN,
            id="chargedback-outranks-won",
        ),
        pytest.param({"dispute_won": True}, None, id="won-without-disputed"),
        pytest.param({"disputed": "true"}, DisputeState.OPEN, id="form-style-boolean"),
        pytest.param({"disputed": "false", "chargedback": None}, None, id="form-style-false"),
        pytest.param({"refunded": True, "disputed": True}, DisputeState.OPEN, id="refunded-too"),
    ],
)
def test_sale_dispute_reads_the_sales_dispute_flags(
    sale: dict[str, Any], dispute: DisputeState | None
) -> None:
    assert gumroad.sale_dispute(sale) is dispute


@pytest.mark.parametrize(
    "sale", [{"chargedback": True}, {"disputed": True}, {"disputed": True, "dispute_won": True}]
)
def test_sale_state_leaves_disputes_to_sale_dispute(sale: dict[str, Any]) -> None:
    assert gumroad.sale_state(sale) is EntitlementState.ACTIVE


# -- parse: JSON bodies -------------------------------------------------------------------


def test_json_ping_means_what_the_form_ping_means() -> None:
    # notification_content_type=json (and Zapier URLs) send real booleans and numbers.
    for name in ("sale_recurring_charge", "refund", "dispute", "cancellation"):
        form = payload(name)
        as_json = {key: value for key, value in form.items()}
        for key, value in form.items():
            if value in ("true", "false"):
                as_json[key] = value == "true"
        for key in ("price", "gumroad_fee", "quantity", "order_number"):
            if key in as_json:
                as_json[key] = int(as_json[key])
        loaded = gumroad.load(json.dumps(as_json).encode(), "application/json")
        assert gumroad.parse(loaded) == gumroad.parse(form), name


def test_json_ping_with_numeric_ids_and_nulls_parses() -> None:
    data = payload("sale_one_time", purchaser_id=5530311507811)
    data["full_name"] = None
    found = only(json.loads(json.dumps(data)))
    assert found.customer == "5530311507811"
    assert found.display_name is None


# -- parse: seller check ------------------------------------------------------------------


def test_ping_for_the_configured_seller_passes() -> None:
    assert only(payload("sale_one_time"), seller_id=SELLER).state is EntitlementState.ACTIVE


@pytest.mark.parametrize("name", ["sale_one_time", "refund", "dispute"])
def test_ping_for_another_seller_is_forbidden(name: str) -> None:
    with pytest.raises(ForbiddenError, match="another seller"):
        gumroad.parse(payload(name), seller_id="someone-else==")


def test_sale_without_a_seller_id_is_forbidden_when_a_seller_is_configured() -> None:
    with pytest.raises(ForbiddenError):
        gumroad.parse(payload("sale_one_time", seller_id=None), seller_id=SELLER)


def test_unknown_resource_is_acknowledged_before_the_seller_check() -> None:
    # DESIGN §3: a valid but irrelevant event gets a 2xx; Gumroad would not retry a 403.
    data = payload("sale_one_time", resource_name="something_new")
    assert gumroad.parse(data, seller_id="someone-else==") == []


@pytest.mark.parametrize("build", [lambda: payload("cancellation"), restarted, plan_change])
def test_subscription_ping_passes_the_seller_check_although_it_names_no_seller(
    build: Any,
) -> None:
    # Gumroad's subscription payload has no seller_id field at all.
    data = build()
    assert "seller_id" not in data
    assert len(gumroad.parse(data, seller_id=SELLER)) == 1


def test_subscription_ping_naming_another_seller_is_forbidden() -> None:
    with pytest.raises(ForbiddenError):
        gumroad.parse(payload("cancellation", seller_id="someone-else=="), seller_id=SELLER)


def test_without_a_configured_seller_any_seller_passes() -> None:
    found = only(payload("sale_one_time", seller_id="someone-else=="))
    assert found.state is EntitlementState.ACTIVE


# -- parse: odd shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        pytest.param("sale_one_time", {"email": None}, id="sale-without-email"),
        pytest.param("sale_one_time", {"email": "  "}, id="sale-with-blank-email"),
        pytest.param("sale_one_time", {"sale_id": None}, id="sale-without-sale_id"),
        pytest.param("sale_one_time", {"sale_timestamp": None}, id="sale-without-timestamp"),
        pytest.param("sale_one_time", {"sale_timestamp": "yesterday"}, id="unreadable-timestamp"),
        pytest.param("sale_one_time", {"sale_timestamp": True}, id="boolean-timestamp"),
        pytest.param("sale_one_time", {"email": {"a": "b"}}, id="email-is-a-dict"),
        pytest.param("sale_one_time", {"email": ["a@b.c"]}, id="email-is-a-list"),
        pytest.param("sale_one_time", {"sale_id": 1.5}, id="sale_id-is-a-float"),
        pytest.param("sale_one_time", {"product_id": {"x": "y"}}, id="product_id-is-a-dict"),
        pytest.param("sale_one_time", {"resource_name": ["sale"]}, id="resource-is-a-list"),
        pytest.param("cancellation", {"user_email": None}, id="subscription-without-email"),
        pytest.param("cancellation", {"subscription_id": None}, id="without-subscription_id"),
        pytest.param("cancellation", {"cancelled_at": None, "created_at": None}, id="no-timestamp"),
        pytest.param("cancellation", {"cancelled_at": "soon"}, id="unreadable-cancelled_at"),
        pytest.param("cancellation", {"purchase_ids": {"0": "x"}}, id="purchase_ids-dict"),
        pytest.param(
            "cancellation",
            {"resource_name": "subscription_updated", "new_plan": "premium"},
            id="new_plan-is-text",
        ),
    ],
)
def test_odd_shapes_are_payload_errors(name: str, changes: dict[str, Any]) -> None:
    data = payload(name)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    with pytest.raises(PayloadError):
        gumroad.parse(data)


def test_very_long_ids_give_a_bounded_event_id() -> None:
    found = only(payload("sale_one_time", sale_id="x" * 5000))
    assert len(found.event_id) <= gumroad.MAX_EVENT_ID_LENGTH
    assert found.event_id != only(payload("sale_one_time", sale_id="y" * 5000)).event_id


def test_events_survive_the_json_round_trip_to_the_worker() -> None:
    for data in (payload("sale_recurring_charge"), payload("cancellation"), plan_change()):
        for event in gumroad.parse(data):
            assert MembershipEvent.from_json(json.loads(json.dumps(event.to_json()))) == event
