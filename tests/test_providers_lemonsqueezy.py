"""Lemon Squeezy provider: signature verification, payload loading and normalization (pure)."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import PayloadError, SignatureError
from bridge.events import EntitlementState, MembershipEvent, parse_timestamp
from bridge.providers import lemonsqueezy

# Copies of shared/fixtures/lemonsqueezy (provenance in tests/fixtures/SOURCES.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lemonsqueezy"
SECRET = "ls_signing_secret"
ACTIVE = EntitlementState.ACTIVE
ENDED = EntitlementState.ENDED
PENDING = EntitlementState.PENDING
PAST_DUE = EntitlementState.PAST_DUE


def fixture(name: str) -> dict[str, Any]:
    """A Lemon Squeezy example payload (tests/fixtures/lemonsqueezy/<name>.json)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def encode(payload: dict[str, Any]) -> bytes:
    """The raw body Lemon Squeezy would send."""
    return json.dumps(payload).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    """The ``X-Signature`` header Lemon Squeezy computes for ``body``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


BODY = encode(fixture("order_created"))


def _only(payload: dict[str, Any]) -> MembershipEvent:
    events = lemonsqueezy.parse(payload)
    assert len(events) == 1
    return events[0]


def _with(name: str, event_name: str | None = None, **attributes: Any) -> dict[str, Any]:
    """A fixture with some attributes changed (and, optionally, another event name)."""
    payload = fixture(name)
    payload["data"]["attributes"].update(attributes)
    if event_name is not None:
        payload["meta"]["event_name"] = event_name
    return payload


# -- verify -------------------------------------------------------------------------------


def test_valid_signature_passes() -> None:
    lemonsqueezy.verify(BODY, sign(BODY), (SECRET,))


def test_signature_made_with_another_secret_is_rejected() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        lemonsqueezy.verify(BODY, sign(BODY, "someone_else"), (SECRET,))


def test_tampered_body_is_rejected() -> None:
    tampered = BODY.replace(b"dan@lemonsqueezy.com", b"thief@example.com")
    assert tampered != BODY
    with pytest.raises(SignatureError, match="does not match"):
        lemonsqueezy.verify(tampered, sign(BODY), (SECRET,))


@pytest.mark.parametrize("header", [None, ""])
def test_missing_signature_header_is_rejected(header: str | None) -> None:
    with pytest.raises(SignatureError, match="Missing"):
        lemonsqueezy.verify(BODY, header, (SECRET,))


def test_uppercase_hex_signature_is_accepted_because_it_is_the_same_digest() -> None:
    # Lemon Squeezy sends lowercase; the case of a hex digit carries no information, so an
    # uppercased header (a proxy, a hand-made test request) proves exactly the same thing.
    lemonsqueezy.verify(BODY, sign(BODY).upper(), (SECRET,))


def test_uppercased_signature_of_another_body_is_still_rejected() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        lemonsqueezy.verify(BODY, sign(BODY + b" ").upper(), (SECRET,))


_DIGEST = hmac.new(SECRET.encode(), BODY, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("z" * 64, id="not-hex"),
        pytest.param(sign(BODY)[:-1], id="one-digit-short"),
        pytest.param(sign(BODY) + "0", id="one-digit-long"),
        pytest.param(sign(BODY)[:32], id="half-a-digest"),
        pytest.param(base64.b64encode(_DIGEST).decode(), id="base64-of-the-right-digest"),
        pytest.param(f"sha256={sign(BODY)}", id="scheme-prefix"),
        pytest.param(f" {sign(BODY)}", id="leading-space"),
        pytest.param(f"{sign(BODY)}\n", id="trailing-newline"),
        pytest.param(" ".join(sign(BODY)[i : i + 2] for i in range(0, 64, 2)), id="spaced"),
        pytest.param(f"{sign(BODY)},{sign(BODY)}", id="two-digests"),
    ],
)
def test_signature_that_is_not_exactly_one_hex_digest_is_rejected(header: str) -> None:
    with pytest.raises(SignatureError, match="not a hex SHA-256 digest"):
        lemonsqueezy.verify(BODY, header, (SECRET,))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(sign(BODY)[:-1] + "\u00e9", id="latin-1-letter"),
        pytest.param("\uff10" * 64, id="fullwidth-digits"),
        pytest.param("\u0661" * 64, id="arabic-indic-digits"),
        pytest.param("\udcff" * 64, id="lone-surrogates"),
    ],
)
def test_non_ascii_signature_is_rejected_as_a_signature_error(header: str) -> None:
    with pytest.raises(SignatureError):
        lemonsqueezy.verify(BODY, header, (SECRET,))


def test_second_secret_verifies_during_rotation() -> None:
    lemonsqueezy.verify(BODY, sign(BODY), ("new_secret", SECRET))
    lemonsqueezy.verify(BODY, sign(BODY, "new_secret"), ("new_secret", SECRET))


def test_signature_by_neither_rotated_secret_is_rejected() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        lemonsqueezy.verify(BODY, sign(BODY, "third_secret"), ("new_secret", SECRET))


@pytest.mark.parametrize("secrets", [(), ("",)], ids=["no-secret", "empty-secret"])
def test_without_a_usable_secret_every_signature_is_rejected(secrets: tuple[str, ...]) -> None:
    with pytest.raises(SignatureError, match="secret"):
        lemonsqueezy.verify(BODY, sign(BODY, ""), secrets)


def test_empty_secret_next_to_a_real_one_cannot_be_used_to_forge() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        lemonsqueezy.verify(BODY, sign(BODY, ""), ("", SECRET))


def test_secret_read_from_non_utf8_environment_verifies_with_its_original_bytes() -> None:
    raw_secret = b"caf\xe9-secret"  # latin-1 bytes, as os.environ would surrogate-escape them
    signature = hmac.new(raw_secret, BODY, hashlib.sha256).hexdigest()
    lemonsqueezy.verify(BODY, signature, (raw_secret.decode("utf-8", "surrogateescape"),))


def test_unencodable_secret_fails_as_a_signature_error() -> None:
    with pytest.raises(SignatureError):
        lemonsqueezy.verify(BODY, sign(BODY), ("\ud800",))


# -- load ---------------------------------------------------------------------------------


def test_load_returns_the_webhook_dict() -> None:
    loaded = lemonsqueezy.load(BODY)
    assert loaded["meta"]["event_name"] == "order_created"
    assert loaded["data"]["type"] == "orders"
    assert loaded["data"]["attributes"]["user_email"] == "dan@lemonsqueezy.com"


def test_load_rejects_a_body_that_is_not_json() -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        lemonsqueezy.load(b"event_name=order_created")


def test_load_rejects_a_body_that_is_not_utf8() -> None:
    with pytest.raises(PayloadError, match="not JSON"):
        lemonsqueezy.load(b'{"meta": {"event_name": "\xff\xfe"}}')


def test_load_rejects_a_json_array() -> None:
    with pytest.raises(PayloadError, match="object"):
        lemonsqueezy.load(b"[1, 2, 3]")


def test_load_rejects_deeply_nested_json_without_crashing() -> None:
    with pytest.raises(PayloadError):
        lemonsqueezy.load(b'{"meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda p: p.pop("meta"), id="no-meta"),
        pytest.param(lambda p: p.update(meta="order_created"), id="meta-not-an-object"),
        pytest.param(lambda p: p["meta"].pop("event_name"), id="no-event-name"),
        pytest.param(lambda p: p["meta"].update(event_name=["order_created"]), id="name-a-list"),
        pytest.param(lambda p: p["meta"].update(event_name=""), id="empty-event-name"),
        pytest.param(lambda p: p.pop("data"), id="no-data"),
        pytest.param(lambda p: p.update(data=[]), id="data-not-an-object"),
        pytest.param(lambda p: p["data"].pop("type"), id="no-type"),
        pytest.param(lambda p: p["data"].pop("id"), id="no-id"),
        pytest.param(lambda p: p["data"].update(id=""), id="empty-id"),
        pytest.param(lambda p: p["data"].update(id={"id": "1"}), id="id-an-object"),
        pytest.param(lambda p: p["data"].update(id=True), id="id-a-boolean"),
        pytest.param(lambda p: p["data"].pop("attributes"), id="no-attributes"),
        pytest.param(lambda p: p["data"].update(attributes=[]), id="attributes-a-list"),
    ],
)
def test_load_rejects_json_that_is_not_a_lemonsqueezy_webhook(broken: Any) -> None:
    payload = fixture("order_created")
    broken(payload)
    with pytest.raises(PayloadError):
        lemonsqueezy.load(encode(payload))


def test_load_accepts_a_numeric_resource_id() -> None:
    payload = fixture("order_created")
    payload["data"]["id"] = 1
    assert _only(lemonsqueezy.load(encode(payload))).refs == {"order": "order_1"}


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_signed_fixture_goes_through_verify_load_and_parse(path: Path) -> None:
    raw = path.read_bytes()
    lemonsqueezy.verify(raw, sign(raw), (SECRET,))
    found = _only(lemonsqueezy.load(raw))
    assert found.provider == "lemonsqueezy"
    assert found.event_type == path.stem
    assert found.email is not None and "@" in found.email


# -- parse: orders ------------------------------------------------------------------------


def test_paid_order_grants_access_keyed_by_the_order() -> None:
    found = _only(fixture("order_created"))
    assert found.provider == "lemonsqueezy"
    assert found.event_id == "order_created:orders:1:2023-01-17T12:26:23.000000Z:paid"
    assert found.event_type == "order_created"
    assert found.occurred_at == parse_timestamp("2023-01-17T12:26:23Z")
    assert found.state is ACTIVE
    # The worker resolves the entitlement: the order may have started a subscription.
    assert found.entitlement is None
    assert found.refs == {"order": "order_1"}
    assert found.email == "dan@lemonsqueezy.com"
    assert found.display_name == "Dan R"
    assert found.customer == "customer_1"
    assert found.products == ("product:1", "variant:1")
    assert found.test_mode is False


@pytest.mark.parametrize("status", ["pending", "failed", "something_new"])
def test_order_created_that_is_not_paid_is_pending(status: str) -> None:
    found = _only(_with("order_created", status=status))
    assert found.state is PENDING
    assert found.refs == {"order": "order_1"}


def test_fully_refunded_order_ends_the_purchase() -> None:
    found = _only(fixture("order_refunded"))
    assert found.state is ENDED
    assert found.entitlement is None
    assert found.refs == {"order": "order_1"}
    assert found.occurred_at == parse_timestamp("2023-01-20T09:00:00Z")
    assert found.email == "dan@lemonsqueezy.com"
    assert found.products == ("product:1", "variant:1")


def test_partially_refunded_order_keeps_access_and_only_teaches_the_ledger() -> None:
    found = _only(_with("order_refunded", status="partial_refund", refunded=False))
    assert found.state is None
    assert found.refs == {"order": "order_1"}
    assert found.email == "dan@lemonsqueezy.com"
    assert found.customer == "customer_1"


@pytest.mark.parametrize("event_name", ["order_created", "order_refunded"])
def test_fraudulent_order_ends_the_purchase(event_name: str) -> None:
    found = _only(_with("order_refunded", event_name, status="fraudulent"))
    assert found.state is ENDED
    assert found.event_type == event_name


@pytest.mark.parametrize("status", ["paid", "pending", "failed", "mystery"])
def test_refund_event_never_grants_or_suspends_whatever_its_status(status: str) -> None:
    assert _only(_with("order_refunded", status=status)).state is None


def test_order_without_a_first_item_has_no_products() -> None:
    found = _only(_with("order_created", first_order_item=None))
    assert found.products == ()
    assert found.state is ACTIVE


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("paid", ACTIVE),
        ("pending", PENDING),
        ("failed", PENDING),
        ("refunded", ENDED),
        ("fraudulent", ENDED),
        ("partial_refund", None),
        ("unheard_of", PENDING),
        (None, PENDING),
        (["paid"], PENDING),
    ],
)
def test_order_state_maps_each_order_status(status: Any, state: EntitlementState | None) -> None:
    assert lemonsqueezy.order_state({"status": status}) is state


# -- parse: subscriptions -----------------------------------------------------------------


def test_subscription_on_trial_grants_the_subscription() -> None:
    found = _only(fixture("subscription_created"))
    assert (
        found.event_id
        == "subscription_created:subscriptions:1:2023-01-17T12:43:51.000000Z:on_trial"
    )
    assert found.event_type == "subscription_created"
    assert found.occurred_at == parse_timestamp("2023-01-17T12:43:51Z")
    assert found.state is ACTIVE
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.refs == {"subscription": "sub_1", "order": "order_2"}
    assert found.email == "dan@lemonsqueezy.com"
    assert found.display_name == "Dan R"
    assert found.customer == "customer_2"
    assert found.products == ("product:2", "variant:2")
    assert found.test_mode is False


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("on_trial", ACTIVE),
        ("active", ACTIVE),
        ("cancelled", ACTIVE),
        ("past_due", PAST_DUE),
        ("unpaid", ENDED),
        ("expired", ENDED),
        ("something_new", PENDING),
    ],
)
@pytest.mark.parametrize(
    "event_name",
    ["subscription_created", "subscription_updated", "subscription_resumed"],
)
def test_subscription_status_maps_to_its_entitlement_state(
    event_name: str, status: str, state: EntitlementState
) -> None:
    found = _only(_with("subscription_created", event_name, status=status))
    assert found.state is state
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.event_type == event_name


def test_cancelled_subscription_keeps_access_until_it_expires() -> None:
    payload = fixture("subscription_cancelled")
    assert payload["data"]["attributes"]["ends_at"] is not None
    found = _only(payload)
    assert found.state is ACTIVE
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.occurred_at == parse_timestamp("2023-02-01T10:00:00Z")


def test_past_due_subscription_is_in_grace() -> None:
    found = _only(_with("subscription_created", "subscription_updated", status="past_due"))
    assert found.state is PAST_DUE


def test_unpaid_subscription_ends_the_entitlement() -> None:
    found = _only(_with("subscription_created", "subscription_updated", status="unpaid"))
    assert found.state is ENDED


def test_expired_subscription_ends_the_entitlement() -> None:
    found = _only(fixture("subscription_expired"))
    assert found.state is ENDED
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.refs == {"subscription": "sub_1", "order": "order_2"}


def test_subscription_expired_ends_even_if_its_status_still_says_active() -> None:
    found = _only(_with("subscription_expired", status="active"))
    assert found.state is ENDED


@pytest.mark.parametrize(
    ("pause", "state"),
    [
        pytest.param({"mode": "void", "resumes_at": None}, ENDED, id="void"),
        pytest.param({"mode": "free", "resumes_at": "2023-03-01T00:00:00Z"}, ACTIVE, id="free"),
        pytest.param(None, ENDED, id="no-pause-object"),
        pytest.param({"mode": "frozen"}, ENDED, id="unknown-mode"),
        pytest.param("free", ENDED, id="pause-not-an-object"),
    ],
)
def test_paused_subscription_follows_its_pause_mode(pause: Any, state: EntitlementState) -> None:
    found = _only(
        _with("subscription_created", "subscription_paused", status="paused", pause=pause)
    )
    assert found.state is state
    assert found.event_type == "subscription_paused"


def test_unpaused_subscription_grants_again() -> None:
    payload = _with("subscription_created", "subscription_unpaused", status="active", pause=None)
    found = _only(payload)
    assert found.state is ACTIVE
    assert found.entitlement == "lemonsqueezy:sub_1"


def test_resumed_subscription_grants_again() -> None:
    payload = _with("subscription_cancelled", "subscription_resumed", status="active", ends_at=None)
    assert _only(payload).state is ACTIVE


def test_subscription_without_an_order_id_refers_to_the_subscription_only() -> None:
    found = _only(_with("subscription_created", order_id=None))
    assert found.refs == {"subscription": "sub_1"}


@pytest.mark.parametrize("status", [None, 3, ["active"]])
def test_subscription_state_of_an_unreadable_status_is_pending(status: Any) -> None:
    assert lemonsqueezy.subscription_state({"status": status}) is PENDING


# -- parse: subscription invoices ---------------------------------------------------------


@pytest.mark.parametrize(
    "event_name", ["subscription_payment_success", "subscription_payment_recovered"]
)
def test_paid_renewal_grants_its_subscription(event_name: str) -> None:
    found = _only(_with("subscription_payment_failed", event_name, status="paid"))
    assert found.state is ACTIVE
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.refs == {"subscription": "sub_1", "invoice": "invoice_1"}
    assert found.email == "gernser@yahoo.com"
    assert found.display_name == "Darlene Daugherty"
    assert found.customer == "customer_1"
    assert found.products == ()
    assert found.event_type == event_name


def test_payment_success_whose_invoice_is_not_paid_grants_nothing() -> None:
    found = _only(_with("subscription_payment_failed", "subscription_payment_success"))
    assert found.state is None
    assert found.entitlement == "lemonsqueezy:sub_1"


def test_failed_renewal_only_teaches_the_ledger() -> None:
    found = _only(fixture("subscription_payment_failed"))
    assert found.state is None
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.email == "gernser@yahoo.com"
    assert found.refs == {"subscription": "sub_1", "invoice": "invoice_1"}


def test_refunded_renewal_does_not_end_the_subscription() -> None:
    found = _only(fixture("subscription_payment_refunded"))
    assert found.state is None
    assert found.entitlement == "lemonsqueezy:sub_1"
    assert found.occurred_at == parse_timestamp("2023-01-18T12:16:24Z")
    assert found.event_id == (
        "subscription_payment_refunded:subscription-invoices:1:2023-01-18T12:16:24.000000Z:refunded"
    )


def test_invoice_names_products_only_when_it_carries_them() -> None:
    found = _only(
        _with(
            "subscription_payment_failed",
            "subscription_payment_success",
            status="paid",
            product_id=7,
            variant_id="8",
        )
    )
    assert found.products == ("product:7", "variant:8")


# -- email, test mode, timestamps ---------------------------------------------------------


def test_sotion_email_in_custom_data_overrides_the_buyer_email() -> None:
    payload = fixture("subscription_cancelled")
    payload["meta"]["custom_data"] = {"sotion_email": " Login@Example.COM ", "email": "x@y.z"}
    assert _only(payload).email == "login@example.com"


def test_email_in_custom_data_overrides_the_buyer_email() -> None:
    payload = fixture("order_created")
    payload["meta"]["custom_data"] = {"email": "Member@Example.com"}
    found = _only(payload)
    assert found.email == "member@example.com"
    assert found.display_name == "Dan R"


@pytest.mark.parametrize(
    "custom_data",
    [
        pytest.param({"member_ref": "abc123"}, id="no-email-key"),
        pytest.param({"sotion_email": ""}, id="empty"),
        pytest.param({"email": "not an email"}, id="not-email-shaped"),
        pytest.param({"email": 42}, id="a-number"),
        pytest.param(["member@example.com"], id="custom-data-a-list"),
        pytest.param(None, id="null"),
    ],
)
def test_custom_data_without_a_usable_email_falls_back_to_the_buyer(custom_data: Any) -> None:
    payload = fixture("subscription_cancelled")
    payload["meta"]["custom_data"] = custom_data
    assert _only(payload).email == "dan@lemonsqueezy.com"


def test_buyer_email_is_lowercased() -> None:
    found = _only(_with("order_created", user_email="  Dan@LemonSqueezy.COM"))
    assert found.email == "dan@lemonsqueezy.com"


@pytest.mark.parametrize("user_email", [None, "", "   "])
def test_event_without_an_email_still_carries_the_customer(user_email: Any) -> None:
    found = _only(_with("order_created", user_email=user_email))
    assert found.email is None
    assert found.customer == "customer_1"


def test_test_mode_in_meta_marks_the_event() -> None:
    payload = _with("subscription_cancelled", test_mode=False)
    assert payload["meta"]["test_mode"] is True
    assert _only(payload).test_mode is True


def test_test_mode_in_attributes_marks_the_event() -> None:
    payload = _with("order_created", test_mode=True)
    assert "test_mode" not in payload["meta"]
    assert _only(payload).test_mode is True


def test_live_event_is_not_test_mode() -> None:
    payload = _with("subscription_cancelled", test_mode=False)
    payload["meta"]["test_mode"] = False
    assert _only(payload).test_mode is False


def test_occurred_at_falls_back_to_created_at() -> None:
    payload = fixture("order_created")
    del payload["data"]["attributes"]["updated_at"]
    found = _only(payload)
    assert found.occurred_at == parse_timestamp("2023-01-17T12:26:23Z")
    assert found.event_id == "order_created:orders:1:2023-01-17T12:26:23.000000Z:paid"


@pytest.mark.parametrize(
    "stamps",
    [
        pytest.param({"updated_at": None, "created_at": None}, id="both-null"),
        pytest.param({"updated_at": "yesterday", "created_at": ""}, id="unreadable"),
        pytest.param({"updated_at": float("nan"), "created_at": float("inf")}, id="not-finite"),
    ],
)
def test_event_without_a_readable_timestamp_is_a_payload_error(stamps: dict[str, Any]) -> None:
    with pytest.raises(PayloadError, match="updated_at"):
        lemonsqueezy.parse(_with("order_created", **stamps))


# -- derived event ids --------------------------------------------------------------------


def test_redelivered_payload_gets_the_same_event_id() -> None:
    first = _only(lemonsqueezy.load(encode(fixture("subscription_cancelled"))))
    # A redelivery: same snapshot, serialized again.
    again = _only(
        lemonsqueezy.load(json.dumps(fixture("subscription_cancelled"), indent=2).encode())
    )
    assert first.event_id == again.event_id
    assert first.dedupe_key == again.dedupe_key == f"lemonsqueezy:{first.event_id}"


def test_change_of_status_within_the_same_second_gets_a_new_event_id() -> None:
    trial = _only(fixture("subscription_created"))
    active = _only(_with("subscription_created", status="active"))
    assert trial.occurred_at == active.occurred_at
    assert trial.event_id != active.event_id


def test_change_of_updated_at_gets_a_new_event_id() -> None:
    before = _only(fixture("subscription_created"))
    later = _only(_with("subscription_created", updated_at="2023-01-17T12:43:52.000000Z"))
    assert before.event_id != later.event_id


def test_another_event_about_the_same_snapshot_gets_a_new_event_id() -> None:
    created = _only(fixture("subscription_created"))
    updated = _only(_with("subscription_created", "subscription_updated"))
    assert created.event_id != updated.event_id
    assert created.occurred_at == updated.occurred_at


def test_same_id_on_another_resource_type_gets_a_new_event_id() -> None:
    refunded_invoice = _only(fixture("subscription_payment_refunded"))
    refunded_order = _only(_with("order_refunded", updated_at="2023-01-18T12:16:24.000000Z"))
    assert refunded_invoice.event_id != refunded_order.event_id


def test_overlong_event_id_is_replaced_by_its_sha256() -> None:
    payload = fixture("order_created")
    payload["data"]["id"] = "9" * 200
    found = _only(payload)
    plain = f"order_created:orders:{'9' * 200}:2023-01-17T12:26:23.000000Z:paid"
    assert found.event_id == hashlib.sha256(plain.encode()).hexdigest()
    assert found.refs == {"order": f"order_{'9' * 200}"}


def test_event_id_at_the_length_limit_is_kept_as_it_is() -> None:
    prefix = "order_created:orders:"
    suffix = ":2023-01-17T12:26:23.000000Z:paid"
    payload = fixture("order_created")
    payload["data"]["id"] = "1" * (lemonsqueezy.MAX_EVENT_ID_LENGTH - len(prefix) - len(suffix))
    found = _only(payload)
    assert len(found.event_id) == lemonsqueezy.MAX_EVENT_ID_LENGTH
    assert found.event_id.startswith(prefix)


# -- irrelevant and odd payloads ----------------------------------------------------------


@pytest.mark.parametrize(
    "event_name",
    ["license_key_created", "license_key_updated", "affiliate_activated", "order_shipped"],
)
def test_irrelevant_events_mean_nothing(event_name: str) -> None:
    payload = {
        "meta": {"event_name": event_name},
        "data": {"type": "license-keys", "id": "5", "attributes": {"status": "active"}},
    }
    assert lemonsqueezy.parse(lemonsqueezy.load(encode(payload))) == []


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda p: p["data"].update(type="subscriptions"), id="type-mismatch"),
        pytest.param(lambda p: p["data"].update(attributes=["x"]), id="attributes-a-list"),
        pytest.param(lambda p: p["data"].update(id=["1"]), id="id-a-list"),
        pytest.param(lambda p: p["data"].pop("id"), id="no-id"),
        pytest.param(lambda p: p.update(meta=["order_created"]), id="meta-a-list"),
        pytest.param(lambda p: p["meta"].update(event_name={"x": 1}), id="name-an-object"),
        pytest.param(lambda p: p["data"]["attributes"].update(first_order_item="1"), id="item"),
        pytest.param(lambda p: p["data"]["attributes"].update(customer_id={"id": 1}), id="cust"),
        pytest.param(lambda p: p["data"]["attributes"].update(user_email=42), id="email-42"),
        pytest.param(
            lambda p: p["data"]["attributes"]["first_order_item"].update(product_id=1.5),
            id="product-a-float",
        ),
    ],
)
def test_odd_order_shapes_are_payload_errors(broken: Any) -> None:
    payload = fixture("order_created")
    broken(payload)
    with pytest.raises(PayloadError):
        lemonsqueezy.parse(payload)


def test_invoice_without_a_subscription_id_is_a_payload_error() -> None:
    payload = fixture("subscription_payment_failed")
    del payload["data"]["attributes"]["subscription_id"]
    with pytest.raises(PayloadError, match="subscription_id"):
        lemonsqueezy.parse(payload)


def test_subscription_with_an_order_id_of_the_wrong_type_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        lemonsqueezy.parse(_with("subscription_created", order_id=[2]))


def test_parse_does_not_modify_the_payload() -> None:
    payload = fixture("subscription_cancelled")
    snapshot = copy.deepcopy(payload)
    lemonsqueezy.parse(payload)
    assert payload == snapshot


def test_parsed_event_survives_the_json_round_trip_to_the_worker() -> None:
    found = _only(fixture("subscription_cancelled"))
    assert MembershipEvent.from_json(json.loads(json.dumps(found.to_json()))) == found
