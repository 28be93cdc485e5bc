"""The products file end to end: signed webhooks from Stripe, Lemon Squeezy and Gumroad,
through the queue and the worker, to the groups and paid flag of the member in the sandbox.

DESIGN §4 and README "The products file": listed purchases grant what their rule says
plus the default groups, unlisted ones are acknowledged and ignored, one email's groups are
the union of what its active purchases grant, and the bridge removes only what it added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, jsonify
from flask.testing import FlaskClient
from rq import Queue
from werkzeug.serving import make_server

from bridge.admin import failed_jobs
from bridge.app import create_app
from bridge.errors import SettingsError
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.sotion import Member, SotionClient
from tests.conftest import drain
from tests.stripe_events import event
from tests.test_stripe_flow import (
    EMAIL,
    T0,
    checkout_payment,
    checkout_subscription,
    deliver,
    job_of,
    post,
    record_requests,
    subscription,
)
from workers import runtime as worker_runtime

JSONObject = dict[str, Any]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LS_SECRET = "ls_products_secret"
GUMROAD_TOKEN = "gr_products_token"
FORM = "application/x-www-form-urlencoded"
COURSE_PRICE = "price_course"
BONUS_PRICE = "price_bonus"
# The groups every test's sandbox starts with (custom groups, created through the API).
GROUP_NAMES = ("Course", "Club", "Ebook", "Bonus", "Members", "VIP")

PRODUCTS = """
default_groups = ["Members"]

[[products]]
name = "Course"
stripe_prices = ["price_course"]
groups = ["Course"]

[[products]]
name = "Club"
gumroad_permalinks = ["members"]
groups = ["Club"]

[[products]]
name = "Ebook"
lemonsqueezy_variants = [1]
groups = ["Ebook"]

[[products]]
name = "Bonus"
stripe_prices = ["price_bonus"]
paid = false
groups = ["Bonus"]

[[products]]
name = "Checkout"
stripe_products = ["prod_x"]
groups = ["Course"]
"""

StartBridge = Callable[..., FlaskClient]


# -- setting up a bridge with a products file --------------------------------------------


@pytest.fixture
def groups(sotion_api: SotionClient) -> dict[str, str]:
    """The sandbox's custom access groups, by name → id."""
    return {name: sotion_api.create_access_group(name).id for name in GROUP_NAMES}


def bridge_settings(settings: Settings, products: Path, **changes: Any) -> Settings:
    """The test settings with a products file and every provider enabled."""
    return dataclasses.replace(
        settings,
        products_file=products,
        lemonsqueezy_webhook_secrets=(LS_SECRET,),
        gumroad_webhook_token=GUMROAD_TOKEN,
        **changes,
    )


def write_products(tmp_path: Path, text: str) -> Path:
    """A products file with this TOML text."""
    path = tmp_path / "products.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def start_bridge(
    settings: Settings,
    redis_conn: redis.Redis,
    tmp_path: Path,
    groups: dict[str, str],
) -> Iterator[StartBridge]:
    """Start web and worker runtime on a products file (the groups exist first)."""

    def start(products: str = PRODUCTS, **changes: Any) -> FlaskClient:
        new = bridge_settings(settings, write_products(tmp_path, products), **changes)
        app = create_app(new)
        worker_runtime.configure(new, redis_conn)
        return app.test_client()

    yield start
    worker_runtime.reset()


@pytest.fixture
def client(start_bridge: StartBridge) -> FlaskClient:
    """A bridge on the PRODUCTS file (overrides conftest's bridge without one)."""
    return start_bridge()


# -- deliveries ---------------------------------------------------------------------------


def course_subscription(
    status: str = "active",
    *,
    base: str = "customer_subscription_created",
    price: str = COURSE_PRICE,
) -> JSONObject:
    """A Stripe Subscription to ``price``."""
    obj = subscription(status, base=base)
    for item in obj["items"]["data"]:
        for key in ("price", "plan"):
            item[key].update(id=price, product=f"prod_of_{price}")
    return obj


def buy_stripe(client: FlaskClient, *, created: int = T0, price: str = COURSE_PRICE) -> None:
    """A Stripe Checkout for a subscription to ``price``: the email, then the price."""
    deliver(client, "checkout.session.completed", checkout_subscription(), created=created)
    deliver(
        client,
        "customer.subscription.created",
        course_subscription(price=price),
        created=created + 1,
    )


def end_stripe(client: FlaskClient, *, created: int) -> None:
    """The Stripe subscription is deleted."""
    ended = course_subscription("canceled", base="customer_subscription_deleted")
    deliver(client, "customer.subscription.deleted", ended, created=created)


def post_gumroad(client: FlaskClient, name: str) -> JSONObject:
    """POST a Gumroad ping fixture (form-encoded, as Gumroad sends it)."""
    body = (FIXTURES / "gumroad" / f"{name}.form").read_bytes().rstrip(b"\n")
    response = client.post(f"/webhooks/gumroad/{GUMROAD_TOKEN}", data=body, content_type=FORM)
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: JSONObject = response.get_json()
    assert answer["queued"] == 1, answer
    return answer


def post_lemonsqueezy(client: FlaskClient, name: str) -> JSONObject:
    """POST a signed Lemon Squeezy fixture, bought by ``EMAIL``."""
    payload = json.loads((FIXTURES / "lemonsqueezy" / f"{name}.json").read_text())
    payload["data"]["attributes"]["user_email"] = EMAIL
    body = json.dumps(payload).encode()
    signature = hmac.new(LS_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = client.post(
        "/webhooks/lemonsqueezy",
        data=body,
        headers={"X-Signature": signature, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: JSONObject = response.get_json()
    assert answer["queued"] == 1, answer
    return answer


def member_of(sotion_api: SotionClient, email: str = EMAIL) -> Member:
    """The member Sotion has for this email, with its access groups."""
    found = sotion_api.find_member_by_email(email)
    assert found is not None, f"no Sotion member for {email}"
    return sotion_api.get_member(found.id)


def ids(groups: dict[str, str], *names: str) -> frozenset[str]:
    """The ids of these group names."""
    return frozenset(groups[name] for name in names)


# -- grants -------------------------------------------------------------------------------


def test_listed_stripe_price_creates_a_paid_member_with_its_groups_in_one_call(
    client: FlaskClient,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    requests = record_requests(sotion)

    buy_stripe(client)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "Course", "Members")
    posts = [(path, body) for verb, path, body in requests.calls if verb == "POST"]
    assert len(posts) == 1, posts
    path, body = posts[0]
    assert path.endswith("/members")
    assert body is not None
    assert sorted(body["accessGroupIds"]) == sorted(ids(groups, "Course", "Members"))


def test_checkout_delivered_before_the_subscription_that_names_the_price_still_grants_it(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    # Stripe creates the subscription first (its event names the price) and completes the
    # Checkout Session a second later (its event names no price); delivery order varies.
    deliver(client, "checkout.session.completed", checkout_subscription(), created=T0 + 1)
    drain(queue)
    assert sotion_api.find_member_by_email(EMAIL) is None  # no listed product yet
    deliver(client, "customer.subscription.created", course_subscription(), created=T0)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "Course", "Members")
    assert queue.failed_job_registry.count == 0


def test_existing_member_who_buys_is_added_to_the_groups_through_the_group_endpoint(
    client: FlaskClient,
    queue: Queue,
    sotion: SandboxServer,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    existing = sotion_api.create_member(EMAIL, paid=False)
    requests = record_requests(sotion)

    buy_stripe(client)
    drain(queue)

    member = member_of(sotion_api)
    assert member.id == existing.id
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "Course", "Members")
    posts = [(path, body) for verb, path, body in requests.calls if verb == "POST"]
    # The create is refused (409: the member exists), then the groups are added one by one.
    assert posts[0][0].endswith("/members") and posts[0][1]["email"] == EMAIL
    group_posts = posts[1:]
    assert sorted(path.rpartition("/access-groups/")[2] for path, _ in group_posts) == sorted(
        f"{group_id}/members" for group_id in ids(groups, "Course", "Members")
    )
    assert [body for _, body in group_posts] == [{"memberId": existing.id}] * 2


@pytest.mark.parametrize("buyer", ["new", "existing"])
def test_rule_with_paid_false_grants_its_groups_without_making_the_buyer_paid(
    buyer: str,
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    if buyer == "existing":
        sotion_api.create_member(EMAIL, paid=False)

    buy_stripe(client, price=BONUS_PRICE)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"
    assert member.access_group_ids == ids(groups, "Bonus", "Members")


def test_unlisted_stripe_price_is_acknowledged_and_changes_nothing(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
) -> None:
    unlisted = course_subscription(price="price_not_in_the_file")

    answer = post(client, event("customer.subscription.created", unlisted, created=T0))
    drain(queue)

    assert answer["received"] is True
    assert queue.count == 0
    assert queue.failed_job_registry.count == 0  # ignored, not failed for want of an email
    assert sotion_api.find_member_by_email(EMAIL) is None


def test_group_given_by_id_in_the_products_file_is_granted(
    start_bridge: StartBridge,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    by_id = f"""
[[products]]
stripe_prices = ["{COURSE_PRICE}"]
groups = ["{groups["VIP"]}"]
"""
    client = start_bridge(by_id)

    buy_stripe(client)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "VIP")


# -- several purchases of one email -------------------------------------------------------


def test_stripe_and_gumroad_purchases_of_one_email_grant_the_union_of_their_groups(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    buy_stripe(client)
    post_gumroad(client, "sale_one_time")
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "Course", "Club", "Members")


def test_ending_one_of_two_purchases_removes_only_the_groups_nothing_else_grants(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    buy_stripe(client)
    post_gumroad(client, "sale_one_time")
    drain(queue)

    end_stripe(client, created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.status == "active"
    assert member.access_group_ids == ids(groups, "Club", "Members")


def test_ending_every_purchase_unpays_and_removes_every_group_the_bridge_added(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
) -> None:
    buy_stripe(client)
    post_gumroad(client, "sale_one_time")
    drain(queue)

    end_stripe(client, created=T0 + 100)
    post_gumroad(client, "refund")
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.status == "active"
    assert member.access_group_ids == frozenset()


def test_lemon_squeezy_variant_joins_stripe_and_gumroad_and_its_refund_removes_only_its_group(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    buy_stripe(client)
    post_gumroad(client, "sale_one_time")
    post_lemonsqueezy(client, "order_created")
    drain(queue)
    assert member_of(sotion_api).access_group_ids == ids(
        groups, "Course", "Club", "Ebook", "Members"
    )

    post_lemonsqueezy(client, "order_refunded")
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "Course", "Club", "Members")


def moved_subscription(price: str) -> JSONObject:
    """The Stripe subscription after its plan was changed to ``price`` (still active)."""
    obj = course_subscription(
        price=price, base="customer_subscription_updated_cancel_at_period_end"
    )
    obj["cancel_at_period_end"] = False
    return obj


def test_subscription_moved_to_another_listed_price_swaps_the_groups(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    buy_stripe(client)
    drain(queue)

    deliver(
        client, "customer.subscription.updated", moved_subscription(BONUS_PRICE), created=T0 + 50
    )
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False  # the Bonus rule says paid = false
    assert member.access_group_ids == ids(groups, "Bonus", "Members")


def test_listed_subscription_moved_to_an_unlisted_price_loses_access_when_it_ends(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
) -> None:
    # The purchase the ledger holds is no longer a listed product, and then it ends: the
    # bridge granted Course and Members for it, so nothing should be left.
    buy_stripe(client)
    drain(queue)
    unlisted = "price_not_in_the_file"

    post(
        client,
        event("customer.subscription.updated", moved_subscription(unlisted), created=T0 + 50),
    )
    ended = course_subscription("canceled", base="customer_subscription_deleted", price=unlisted)
    post(client, event("customer.subscription.deleted", ended, created=T0 + 100))
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.access_group_ids == frozenset()


# -- groups the bridge did not add --------------------------------------------------------


def test_group_added_by_hand_stays_when_every_purchase_ends(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    buy_stripe(client)
    drain(queue)
    sotion_api.add_group_member(groups["VIP"], member_of(sotion_api).id)

    end_stripe(client, created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.access_group_ids == ids(groups, "VIP")


def test_granted_group_the_member_already_had_by_hand_is_not_removed_when_access_ends(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
) -> None:
    existing = sotion_api.create_member(EMAIL, paid=False)
    sotion_api.add_group_member(groups["Course"], existing.id)

    buy_stripe(client)
    drain(queue)
    assert member_of(sotion_api).access_group_ids == ids(groups, "Course", "Members")

    end_stripe(client, created=T0 + 100)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is False
    assert member.access_group_ids == ids(groups, "Course")


# -- start-up checks ----------------------------------------------------------------------


def test_worker_refuses_to_start_when_a_group_name_does_not_exist_in_sotion(
    settings: Settings,
    redis_conn: redis.Redis,
    tmp_path: Path,
    groups: dict[str, str],
) -> None:
    products = write_products(
        tmp_path, PRODUCTS.replace('groups = ["Club"]', 'groups = ["Club", "Nowhere Club"]')
    )

    with pytest.raises(SettingsError) as caught:
        worker_runtime.build(bridge_settings(settings, products), redis_conn)

    assert "Nowhere Club" in str(caught.value)
    assert "BRIDGE_PRODUCTS" in str(caught.value)


def test_worker_refuses_to_start_when_a_group_id_does_not_exist_in_sotion(
    settings: Settings,
    redis_conn: redis.Redis,
    tmp_path: Path,
    groups: dict[str, str],
) -> None:
    missing = "7d1f0c52-4b8e-4f7e-9a39-1f2b3c4d5e6f"
    products = write_products(
        tmp_path, f'[[products]]\nstripe_prices = ["{COURSE_PRICE}"]\ngroups = ["{missing}"]\n'
    )

    with pytest.raises(SettingsError, match=missing):
        worker_runtime.build(bridge_settings(settings, products), redis_conn)


def test_worker_refuses_a_scope_group_in_the_products_file(
    settings: Settings,
    redis_conn: redis.Redis,
    tmp_path: Path,
    sotion: SandboxServer,
    groups: dict[str, str],
) -> None:
    sotion.state.add_scope_group("Notion Database")
    products = write_products(
        tmp_path,
        PRODUCTS.replace('default_groups = ["Members"]', 'default_groups = ["Notion Database"]'),
    )

    with pytest.raises(SettingsError) as caught:
        worker_runtime.build(bridge_settings(settings, products), redis_conn)

    assert "Notion Database" in str(caught.value)
    assert "scope" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param('[[products]\nstripe_prices = ["p"]\n', "invalid TOML", id="bad-toml"),
        pytest.param('default_group = ["Members"]\n', "default_group", id="unknown-top-key"),
        pytest.param(
            '[[products]]\nstripe_price = ["price_1"]\ngroups = ["Course"]\n',
            "stripe_price",
            id="unknown-rule-key",
        ),
    ],
)
def test_web_refuses_to_start_on_an_invalid_products_file(
    text: str,
    problem: str,
    settings: Settings,
    redis_conn: redis.Redis,
    tmp_path: Path,
) -> None:
    products = write_products(tmp_path, text)

    with pytest.raises(SettingsError) as caught:
        create_app(bridge_settings(settings, products))

    assert "BRIDGE_PRODUCTS" in str(caught.value)
    assert problem in str(caught.value)


# -- one-time Stripe Checkout: the product comes from the API ------------------------------


def test_one_time_checkout_under_a_products_file_without_an_api_key_fails_naming_the_key(
    client: FlaskClient,
    queue: Queue,
    sotion_api: SotionClient,
) -> None:
    event_id = deliver(client, "checkout.session.completed", checkout_payment(), created=T0)
    drain(queue)

    job = job_of(queue, event_id)
    reasons = {failed.id: failed.reason for failed in failed_jobs(queue)}
    assert job.id in reasons
    assert "STRIPE_API_KEY" in reasons[job.id]
    assert sotion_api.find_member_by_email(EMAIL) is None


class FakeStripeLineItems:
    """Stripe's ``GET /v1/checkout/sessions/<id>/line_items`` on a real socket."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        app = Flask("fake_stripe_line_items")
        app.add_url_rule("/v1/checkout/sessions/<session_id>/line_items", view_func=self._items)
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The API base, as STRIPE_API_BASE would be set."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _items(self, session_id: str) -> Any:
        self.requests.append(session_id)
        price = {"id": "price_x", "object": "price", "product": "prod_x"}
        return jsonify(
            object="list",
            data=[{"id": "li_1", "object": "item", "price": price}],
            has_more=False,
            url=f"/v1/checkout/sessions/{session_id}/line_items",
        )


@pytest.fixture
def stripe_line_items() -> Iterator[FakeStripeLineItems]:
    """A fake Stripe API serving one line item (price_x of prod_x) for any session."""
    fake = FakeStripeLineItems()
    yield fake
    fake.stop()


def test_one_time_checkout_with_an_api_key_grants_the_groups_of_its_line_items(
    start_bridge: StartBridge,
    queue: Queue,
    sotion_api: SotionClient,
    groups: dict[str, str],
    stripe_line_items: FakeStripeLineItems,
) -> None:
    client = start_bridge(stripe_api_key="sk_test_x", stripe_api_base=stripe_line_items.url)
    session = checkout_payment()

    deliver(client, "checkout.session.completed", session, created=T0)
    drain(queue)

    member = member_of(sotion_api)
    assert member.paid is True
    assert member.access_group_ids == ids(groups, "Course", "Members")
    assert stripe_line_items.requests == [session["id"]]
