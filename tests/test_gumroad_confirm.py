"""Confirming an unsigned Gumroad ping against Gumroad's API (bridge/gumroad_confirm.py)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.gumroad_confirm import GumroadMismatchError, confirm
from tests.test_providers_gumroad import ONE_TIME_SALE, SELLER, only, payload, restarted

PRODUCT = "32-nPainqpLj1B_WIwVlMw=="
SUB_PRODUCT = "wAz3bLm5QeX9sT1kPq7YvA=="


def sale_event(name: str = "sale_one_time", **changes: Any) -> MembershipEvent:
    """The event a sale-style fixture ping means (dated by arrival like the route does)."""
    return only(payload(name, **changes), received_at=2_000_000_000.0)


def api_sale(event: MembershipEvent, **fields: Any) -> dict[str, Any]:
    """The sale as Gumroad's API returns it for that ping, with ``fields`` changed."""
    return {
        "id": ONE_TIME_SALE,
        "email": event.email,
        "product_id": PRODUCT,
        "seller_id": SELLER,
        "refunded": False,
        "disputed": False,
        "dispute_won": False,
        **fields,
    }


def refused(event: MembershipEvent, sale: dict[str, Any], **options: Any) -> GumroadMismatchError:
    with pytest.raises(GumroadMismatchError) as caught:
        confirm(event, sale, **options)
    assert event.email is not None and event.email not in str(caught.value)
    return caught.value


# -- what Gumroad confirms is applied in Gumroad's state ----------------------------------


def test_confirmed_sale_keeps_its_grant() -> None:
    event = sale_event()
    confirmed = confirm(event, api_sale(event), seller_id=SELLER)
    assert confirmed.state is EntitlementState.ACTIVE and confirmed.dispute is None


def test_confirmed_refund_ends_the_purchase() -> None:
    event = sale_event("refund")
    confirmed = confirm(event, api_sale(event, refunded=True))
    assert confirmed.state is EntitlementState.ENDED


def test_confirmed_dispute_opens_one_and_leaves_the_lifecycle_alone() -> None:
    event = sale_event("dispute")
    confirmed = confirm(event, api_sale(event, disputed=True))
    assert (confirmed.state, confirmed.dispute) == (None, DisputeState.OPEN)


def test_confirmed_won_dispute_is_won() -> None:
    event = sale_event("dispute", resource_name="dispute_won", dispute_won="true")
    confirmed = confirm(event, api_sale(event, disputed=True, dispute_won=True))
    assert confirmed.dispute is DisputeState.WON


def test_ended_subscription_confirmed_by_its_subscriber_ends() -> None:
    event = only(payload("subscription_ended_failed_payment"))
    subscriber = {"user_email": event.email, "product_id": SUB_PRODUCT, "ended_at": "2026-04-01"}
    confirmed = confirm(event, {}, subscriber)
    assert confirmed.state is EntitlementState.ENDED


def test_restart_of_a_live_subscription_grants() -> None:
    event = only(restarted())
    subscriber = {"user_email": event.email, "product_id": SUB_PRODUCT, "status": "alive"}
    assert confirm(event, {}, subscriber).state is EntitlementState.ACTIVE


def test_email_matches_whichever_address_the_sale_carries() -> None:
    event = sale_event()
    sale = api_sale(event, email="account@example.com", purchase_email=event.email)
    assert confirm(event, sale).state is EntitlementState.ACTIVE


# -- what Gumroad does not confirm is refused, naming the mismatch ------------------------


def test_ping_for_another_email_is_refused() -> None:
    event = sale_event()
    error = refused(event, api_sale(event, email="someone.else@example.com"))
    assert error.code == "email" and "s***@example.com" in str(error)


def test_ping_for_another_product_is_refused() -> None:
    event = sale_event()
    assert refused(event, api_sale(event, product_id="other_product")).code == "product"


def test_sale_of_another_seller_is_refused() -> None:
    event = sale_event()
    error = refused(event, api_sale(event, seller_id="another_seller"), seller_id=SELLER)
    assert error.code == "seller"


def test_refund_gumroad_did_not_make_is_refused() -> None:
    event = sale_event("refund")
    assert refused(event, api_sale(event)).code == "refund"


def test_dispute_gumroad_does_not_report_is_refused() -> None:
    event = sale_event("dispute")
    assert refused(event, api_sale(event)).code == "dispute"


def test_won_dispute_gumroad_does_not_report_is_refused() -> None:
    event = sale_event("dispute", resource_name="dispute_won", dispute_won="true")
    assert refused(event, api_sale(event, disputed=True)).code == "dispute_won"


def test_end_of_a_live_subscription_is_refused() -> None:
    event = only(payload("subscription_ended_failed_payment"))
    subscriber = {"user_email": event.email, "product_id": SUB_PRODUCT, "status": "alive"}
    assert refused(event, {}, subscriber=subscriber).code == "ended"


def test_restart_of_an_ended_subscription_is_refused() -> None:
    event = only(restarted())
    subscriber = {"user_email": event.email, "status": "cancelled", "ended_at": "2026-04-01"}
    assert refused(event, {}, subscriber=subscriber).code == "restarted"
