"""The Sotion sandbox, driven over a real socket the way the bridge's client will use it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from bridge.cli import main
from bridge.sandbox import SandboxConfig, SandboxServer, SandboxState
from bridge.sandbox.ratelimit import RateLimit

KEY = "so_test"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 5.0
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Unix seconds that only move when a test says so (drives the rate-limit windows)."""

    def __init__(self, now: float = 1_000_003.2) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ticker:
    """A datetime clock that advances one second per reading, so every change is visible."""

    def __init__(self, start: datetime = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        self.moment += timedelta(seconds=1)
        return self.moment


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., SandboxServer]]:
    """Start sandboxes with custom settings; all are stopped after the test."""
    servers: list[SandboxServer] = []

    def start(config: SandboxConfig | None = None, **kwargs: Any) -> SandboxServer:
        server = SandboxServer(config, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def sandbox(start_sandbox: Callable[..., SandboxServer]) -> SandboxServer:
    """A default sandbox on a free port."""
    return start_sandbox()


def call(
    server: SandboxServer, method: str, path: str, *, auth: bool = True, **kwargs: Any
) -> requests.Response:
    """One v1 API request with the sandbox's key."""
    headers = dict(AUTH) if auth else {}
    headers.update(kwargs.pop("headers", {}))
    kwargs.setdefault("timeout", TIMEOUT)
    return requests.request(method, server.url + path, headers=headers, **kwargs)


def create_member(server: SandboxServer, email: str, **fields: Any) -> dict[str, Any]:
    """Create a member through the API and return its JSON."""
    response = call(server, "POST", "/members", json={"email": email, **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def create_group(server: SandboxServer, name: str) -> dict[str, Any]:
    """Create a custom access group through the API and return its JSON."""
    response = call(server, "POST", "/access-groups", json={"name": name})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def list_all(server: SandboxServer, path: str, **params: Any) -> list[dict[str, Any]]:
    """Follow nextCursor until the last page, collecting every item."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = dict(params, **({"after": cursor} if cursor else {}))
        body = call(server, "GET", path, params=query).json()
        items.extend(body["data"])
        if not body["pagination"]["hasMore"]:
            assert body["pagination"]["nextCursor"] is None
            return items
        cursor = body["pagination"]["nextCursor"]
        assert cursor == body["data"][-1]["id"]


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Authentication


def test_missing_key_gets_401_with_flat_error(sandbox: SandboxServer) -> None:
    response = call(sandbox, "GET", "/members", auth=False)
    assert response.status_code == 401
    assert response.json() == {"error": "Missing API key. Pass Authorization: Bearer so_..."}


@pytest.mark.parametrize("header", ["Bearer so_wrong", "so_test", "Basic so_test", "Bearer"])
def test_wrong_key_gets_401_with_nested_error(sandbox: SandboxServer, header: str) -> None:
    response = call(sandbox, "GET", "/members", auth=False, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "unauthorized", "message": "Invalid API key"}}


def test_configured_key_is_accepted_on_both_base_paths(sandbox: SandboxServer) -> None:
    for base in ("/api/v1", "/v1"):
        response = requests.get(f"{sandbox.root_url}{base}/site", headers=AUTH, timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.json()["data"]["title"] == "Sandbox site"


def test_site_describes_the_fake_site(start_sandbox: Callable[..., SandboxServer]) -> None:
    server = start_sandbox(SandboxConfig(api_key="so_live_1", site_title="My course"))
    response = requests.get(
        server.url + "/site", headers={"Authorization": "Bearer so_live_1"}, timeout=TIMEOUT
    )
    data = response.json()["data"]
    assert response.status_code == 200
    assert data == {
        "id": server.state.site_id,
        "status": "active",
        "domain": "sandbox.sotion.site",
        "slug": "sandbox",
        "title": "My course",
    }


# Headers and error bodies on every response


def _responses_of_every_kind(server: SandboxServer) -> dict[str, requests.Response]:
    member = create_member(server, "everyone@example.com")
    return {
        "200": call(server, "GET", "/site"),
        "201": call(server, "POST", "/members", json={"email": "new@example.com"}),
        "204": call(server, "DELETE", f"/members/{member['id']}"),
        "400": call(server, "GET", "/members", params={"limit": "0"}),
        "401 missing": call(server, "GET", "/site", auth=False),
        "401 wrong": call(server, "GET", "/site", headers={"Authorization": "Bearer so_x"}),
        "404 route": call(server, "GET", "/no-such-thing"),
        "404 member": call(server, "GET", f"/members/{uuid.uuid4()}"),
        "405": call(server, "PUT", "/members"),
        "409": call(server, "POST", "/members", json={"email": "new@example.com"}),
        "control": requests.get(server.root_url + "/_sandbox/state", timeout=TIMEOUT),
    }


def test_every_response_carries_request_id_and_rate_limit_headers(
    sandbox: SandboxServer,
) -> None:
    responses = _responses_of_every_kind(sandbox)
    request_ids = set()
    for label, response in responses.items():
        assert str(response.status_code) == label.split()[0] or label == "control", label
        request_ids.add(str(uuid.UUID(response.headers["X-Request-Id"])))
        for header in RATE_HEADERS:
            assert int(response.headers[header]) >= 0, (label, header)
    assert len(request_ids) == len(responses)


def test_every_response_body_is_json_never_html(sandbox: SandboxServer) -> None:
    for label, response in _responses_of_every_kind(sandbox).items():
        if response.status_code == 204:
            assert response.content == b""
            continue
        assert response.headers["Content-Type"] == "application/json", label
        assert isinstance(response.json(), dict), label


def test_unknown_route_and_wrong_method_get_json_errors(sandbox: SandboxServer) -> None:
    missing = requests.get(sandbox.root_url + "/nowhere", timeout=TIMEOUT)
    wrong_method = call(sandbox, "PUT", "/site")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong_method.headers["Allow"]


@pytest.mark.parametrize(
    "body",
    [
        b"null",
        b"[]",
        b'[{"email": "a@example.com"}]',
        b'"a@example.com"',
        b"{",
        b"\xff\xfe",
        b'{"email": 5}',
        b'{"email": ["a@example.com"]}',
        b'{"email": "a@example.com", "paid": "yes"}',
        b'{"email": "a@example.com", "displayName": 3}',
        b'{"email": "a@example.com", "accessGroupIds": "g1"}',
        b'{"email": "a@example.com", "accessGroupIds": [1]}',
        b'{"email": "not-an-email"}',
        b'{"email": "a@example.com", "role": "admin"}',
        b"[" * 100_000,
    ],
)
def test_malformed_create_body_gets_400_validation_error(
    sandbox: SandboxServer, body: bytes
) -> None:
    response = call(
        sandbox, "POST", "/members", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


# Rate limiting


def test_rate_limit_allows_the_budget_then_429_until_the_window_resets(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    clock = FakeClock(1_000_003.2)
    server = start_sandbox(SandboxConfig(rate_limit="3/10"), clock=clock)
    remaining = [call(server, "GET", "/site").headers["X-RateLimit-Remaining"] for _ in range(3)]
    refused = call(server, "GET", "/site")

    assert remaining == ["2", "1", "0"]
    assert refused.status_code == 429
    assert refused.json() == {"error": {"code": "rate_limited", "message": "Too many requests"}}
    assert refused.headers["Retry-After"] == "7"
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert refused.headers["X-RateLimit-Reset"] == "1000010"

    clock.now = 1_000_010.0
    fresh = call(server, "GET", "/site")
    assert fresh.status_code == 200
    assert fresh.headers["X-RateLimit-Remaining"] == "2"
    assert fresh.headers["X-RateLimit-Reset"] == "1000020"


def test_retry_after_is_at_least_one_second_at_the_end_of_a_window(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(rate_limit="1/10"), clock=FakeClock(1_000_009.99))
    call(server, "GET", "/site")
    refused = call(server, "GET", "/site")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"


def test_unauthenticated_requests_do_not_spend_the_budget(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(rate_limit="2/10"), clock=FakeClock())
    for _ in range(5):
        assert call(server, "GET", "/site", auth=False).status_code == 401
    first = call(server, "GET", "/site")
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Remaining"] == "1"


def test_rate_limited_response_keeps_the_request_id(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(rate_limit="1/10"), clock=FakeClock())
    call(server, "GET", "/site")
    refused = call(server, "GET", "/no-such-route")
    limited = call(server, "GET", "/site")
    assert refused.status_code == 404
    assert limited.status_code == 429
    assert uuid.UUID(limited.headers["X-Request-Id"])


def test_no_configured_limit_still_reports_headers(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(clock=FakeClock(1_000_003.2))
    responses = [call(server, "GET", "/site") for _ in range(5)]
    assert all(response.status_code == 200 for response in responses)
    assert responses[-1].headers["X-RateLimit-Limit"] == "1000"
    assert responses[-1].headers["X-RateLimit-Remaining"] == "1000"
    assert responses[-1].headers["X-RateLimit-Reset"] == "1000020"


@pytest.mark.parametrize("text", ["100", "x/10", "10/x", "0/10", "10/0", "-1/5", "10/-2", ""])
def test_malformed_rate_limit_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="N/S"):
        RateLimit.parse(text)


def test_rate_limit_parses_requests_per_seconds() -> None:
    assert RateLimit.parse(" 100/10 ") == RateLimit(100, 10.0)


# Listing and pagination


def test_pagination_walks_every_member_newest_first_with_ties_in_insertion_order(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    frozen = datetime(2026, 5, 1, tzinfo=UTC)
    server = start_sandbox(state=SandboxState(clock=lambda: frozen))
    created = [create_member(server, f"m{index}@example.com")["id"] for index in range(7)]
    listed = list_all(server, "/members", limit=3)
    assert [member["id"] for member in listed] == list(reversed(created))
    assert all("accessGroups" not in member for member in listed)


def test_pagination_with_filters_returns_only_matches_across_pages(
    sandbox: SandboxServer,
) -> None:
    for index in range(9):
        create_member(sandbox, f"user{index}@example.com", paid=index % 2 == 0)
    paid = list_all(sandbox, "/members", paid="true", limit=2, order="asc")
    unpaid = list_all(sandbox, "/members", paid="false", limit=2)
    assert [member["email"] for member in paid] == [f"user{i}@example.com" for i in (0, 2, 4, 6, 8)]
    assert len(unpaid) == 4
    assert all(member["paid"] is False for member in unpaid)


def test_sort_by_email_ascending_and_descending(sandbox: SandboxServer) -> None:
    for email in ("carol@example.com", "alice@example.com", "bob@example.com"):
        create_member(sandbox, email)
    ascending = list_all(sandbox, "/members", sort="email", order="asc", limit=1)
    descending = list_all(sandbox, "/members", sort="email", order="desc", limit=2)
    assert [m["email"][0] for m in ascending] == ["a", "b", "c"]
    assert [m["email"][0] for m in descending] == ["c", "b", "a"]


def test_email_filter_is_exact_after_normalizing(sandbox: SandboxServer) -> None:
    create_member(sandbox, "ann@example.com")
    create_member(sandbox, "annie@example.com")
    found = call(sandbox, "GET", "/members", params={"email": "  ANN@example.com "}).json()
    assert [member["email"] for member in found["data"]] == ["ann@example.com"]
    assert found["pagination"] == {"hasMore": False, "nextCursor": None}


def test_q_matches_email_or_display_name_case_insensitively(sandbox: SandboxServer) -> None:
    create_member(sandbox, "zed@example.com", displayName="Grace Hopper")
    create_member(sandbox, "grace@example.com")
    create_member(sandbox, "other@example.com", displayName="Ada")
    found = list_all(sandbox, "/members", q="GRACE")
    assert sorted(member["email"] for member in found) == ["grace@example.com", "zed@example.com"]


def test_status_and_verified_filters(sandbox: SandboxServer) -> None:
    blocked = create_member(sandbox, "blocked@example.com")
    verified = create_member(sandbox, "verified@example.com")
    call(sandbox, "PATCH", f"/members/{blocked['id']}", json={"status": "blocked"})
    requests.post(f"{sandbox.root_url}/_sandbox/members/{verified['id']}/verify", timeout=TIMEOUT)
    assert [m["id"] for m in list_all(sandbox, "/members", status="blocked")] == [blocked["id"]]
    assert [m["id"] for m in list_all(sandbox, "/members", verified="true")] == [verified["id"]]
    assert len(list_all(sandbox, "/members", status="active", verified="false")) == 0


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"after": "no-such-member"},
        {"status": "deleted"},
        {"paid": "yes"},
        {"verified": "1"},
        {"sort": "name"},
        {"order": "sideways"},
    ],
)
def test_invalid_list_query_gets_400(sandbox: SandboxServer, params: dict[str, str]) -> None:
    response = call(sandbox, "GET", "/members", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_limit_bounds_are_accepted(sandbox: SandboxServer) -> None:
    create_member(sandbox, "one@example.com")
    assert call(sandbox, "GET", "/members", params={"limit": "1"}).status_code == 200
    assert call(sandbox, "GET", "/members", params={"limit": "100"}).status_code == 200


# Create, get and bulk create


def test_create_returns_201_location_and_full_member(sandbox: SandboxServer) -> None:
    group = create_group(sandbox, "VIP")
    response = call(
        sandbox,
        "POST",
        "/members",
        json={
            "email": "  Buyer@Example.COM ",
            "displayName": "Buyer",
            "paid": True,
            "accessGroupIds": [group["id"]],
        },
    )
    member = response.json()["data"]
    assert response.status_code == 201
    assert response.headers["Location"] == f"/api/v1/members/{member['id']}"
    assert member["email"] == "buyer@example.com"
    assert (member["status"], member["verified"], member["paid"]) == ("active", False, True)
    assert member["registeredAt"] == member["createdAt"] == member["updatedAt"]
    assert member["createdAt"].endswith("Z") and len(member["createdAt"]) == 24
    assert member["lastLoginAt"] is None
    assert member["accessGroups"] == [{"id": group["id"], "name": "VIP"}]
    fetched = requests.get(sandbox.root_url + response.headers["Location"], headers=AUTH)
    assert fetched.json()["data"] == member


def test_location_follows_the_base_path_used(sandbox: SandboxServer) -> None:
    response = requests.post(
        f"{sandbox.root_url}/v1/members", headers=AUTH, json={"email": "short@example.com"}
    )
    assert response.headers["Location"].startswith("/v1/members/")


def test_duplicate_email_gets_409_conflict(sandbox: SandboxServer) -> None:
    create_member(sandbox, "dup@example.com")
    response = call(sandbox, "POST", "/members", json={"email": "DUP@example.com "})
    assert response.status_code == 409
    assert response.json() == {
        "error": {"code": "conflict", "message": "A member with this email already exists"}
    }


def test_create_with_unknown_group_is_400_and_creates_nothing(sandbox: SandboxServer) -> None:
    response = call(
        sandbox, "POST", "/members", json={"email": "a@example.com", "accessGroupIds": ["nope"]}
    )
    assert response.status_code == 400
    assert "nope" in response.json()["error"]["message"]
    assert sandbox.state.find_member_by_email("a@example.com") is None


def test_create_with_scope_group_is_403_forbidden(sandbox: SandboxServer) -> None:
    scope = sandbox.state.add_scope_group("Notion course")
    response = call(
        sandbox, "POST", "/members", json={"email": "a@example.com", "accessGroupIds": [scope.id]}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_get_unknown_member_is_404_not_found(sandbox: SandboxServer) -> None:
    response = call(sandbox, "GET", f"/members/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Member not found"}}


def test_bulk_create_reports_each_outcome_in_input_order(sandbox: SandboxServer) -> None:
    create_member(sandbox, "existing@example.com")
    scope = sandbox.state.add_scope_group("Scope")
    batch = [
        {"email": "fresh@example.com", "displayName": "Fresh"},
        {"email": "Existing@example.com"},
        {"email": "not an email"},
        {"email": "twice@example.com"},
        {"email": "twice@example.com"},
        "just a string",
        {"email": "scoped@example.com", "accessGroupIds": [scope.id]},
        {"email": "paid@example.com", "paid": True},
    ]
    response = call(sandbox, "POST", "/members/bulk", json={"members": batch})
    body = response.json()
    statuses = [(item["email"], item["status"]) for item in body["data"]]

    assert response.status_code == 207
    assert statuses == [
        ("fresh@example.com", "created"),
        ("existing@example.com", "conflict"),
        ("not an email", "error"),
        ("twice@example.com", "created"),
        ("twice@example.com", "conflict"),
        (None, "error"),
        ("scoped@example.com", "error"),
        ("paid@example.com", "created"),
    ]
    assert body["summary"] == {"total": 8, "created": 3, "failed": 5}
    assert body["data"][0]["member"]["displayName"] == "Fresh"
    assert "accessGroups" not in body["data"][0]["member"]
    assert "error" not in body["data"][0]
    assert "member" not in body["data"][1]
    assert body["data"][1]["error"]["code"] == "conflict"
    assert body["data"][6]["error"]["code"] == "forbidden"
    assert body["data"][7]["member"]["paid"] is True
    assert len(sandbox.state.members_snapshot()) == 4


def test_bulk_top_level_groups_apply_to_every_created_member(sandbox: SandboxServer) -> None:
    shared = create_group(sandbox, "Shared")
    own = create_group(sandbox, "Own")
    body = {
        "members": [{"email": "a@example.com", "accessGroupIds": [own["id"]]}, {"email": "b@x.io"}],
        "accessGroupIds": [shared["id"]],
    }
    response = call(sandbox, "POST", "/members/bulk", json=body)
    snapshot = {m["email"]: m["accessGroupIds"] for m in sandbox.state.members_snapshot()}
    assert response.status_code == 207
    assert snapshot == {"a@example.com": [shared["id"], own["id"]], "b@x.io": [shared["id"]]}


@pytest.mark.parametrize(
    "body",
    [
        {"members": []},
        {"members": [{"email": f"u{i}@example.com"} for i in range(501)]},
        {"members": "a@example.com"},
        {},
        {"members": [{"email": "a@example.com"}], "accessGroupIds": "x"},
    ],
)
def test_bulk_outside_1_to_500_members_is_400(sandbox: SandboxServer, body: dict[str, Any]) -> None:
    response = call(sandbox, "POST", "/members/bulk", json=body)
    assert response.status_code == 400
    assert sandbox.state.members_snapshot() == []


def test_bulk_accepts_exactly_500_members(sandbox: SandboxServer) -> None:
    batch = [{"email": f"u{i}@example.com"} for i in range(500)]
    response = call(sandbox, "POST", "/members/bulk", json={"members": batch})
    assert response.status_code == 207
    assert response.json()["summary"] == {"total": 500, "created": 500, "failed": 0}


# Update


def test_patch_changes_fields_and_moves_updated_at(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(state=SandboxState(clock=Ticker()))
    member = create_member(server, "p@example.com", displayName="Old")
    response = call(
        server,
        "PATCH",
        f"/members/{member['id']}",
        json={"paid": True, "status": "blocked", "displayName": None, "email": "New@Example.com"},
    )
    updated = response.json()["data"]
    assert response.status_code == 200
    assert (updated["paid"], updated["status"], updated["displayName"]) == (True, "blocked", None)
    assert updated["email"] == "new@example.com"
    assert updated["updatedAt"] > member["updatedAt"]
    assert updated["createdAt"] == member["createdAt"]
    assert updated["accessGroups"] == []


def test_patch_without_a_real_change_keeps_updated_at(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(state=SandboxState(clock=Ticker()))
    member = create_member(server, "same@example.com", paid=True)
    response = call(server, "PATCH", f"/members/{member['id']}", json={"paid": True})
    assert response.status_code == 200
    assert response.json()["data"]["updatedAt"] == member["updatedAt"]


def test_patch_to_another_members_email_is_409(sandbox: SandboxServer) -> None:
    create_member(sandbox, "taken@example.com")
    member = create_member(sandbox, "mine@example.com")
    response = call(sandbox, "PATCH", f"/members/{member['id']}", json={"email": "TAKEN@x.io"})
    assert response.status_code == 200
    conflict = call(
        sandbox, "PATCH", f"/members/{member['id']}", json={"email": "taken@example.com"}
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("body", "message_part"),
    [
        ({}, "at least one"),
        ({"accessGroups": []}, "read-only"),
        ({"accessGroupIds": ["g"]}, "read-only"),
        ({"nickname": "x"}, "Unknown field"),
        ({"paid": "true"}, "paid"),
        ({"status": "deleted"}, "status"),
        ({"status": None}, "status"),
        ({"email": None}, "email"),
        ({"email": "broken"}, "email"),
        ({"displayName": 7}, "displayName"),
    ],
)
def test_invalid_patch_gets_400_and_changes_nothing(
    sandbox: SandboxServer, body: dict[str, Any], message_part: str
) -> None:
    member = create_member(sandbox, "stay@example.com")
    response = call(sandbox, "PATCH", f"/members/{member['id']}", json=body)
    assert response.status_code == 400
    assert message_part.lower() in response.json()["error"]["message"].lower()
    assert sandbox.state.get_member(member["id"]).to_json() == {
        k: v for k, v in member.items() if k != "accessGroups"
    }


def test_patch_unknown_member_is_404(sandbox: SandboxServer) -> None:
    response = call(sandbox, "PATCH", f"/members/{uuid.uuid4()}", json={"paid": True})
    assert response.status_code == 404


# Delete


def test_delete_member_cascades_out_of_every_group(sandbox: SandboxServer) -> None:
    first, second = create_group(sandbox, "One"), create_group(sandbox, "Two")
    member = create_member(sandbox, "gone@example.com", accessGroupIds=[first["id"], second["id"]])
    response = call(sandbox, "DELETE", f"/members/{member['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert call(sandbox, "GET", f"/members/{member['id']}").status_code == 404
    for group in (first, second):
        assert (
            call(sandbox, "GET", f"/access-groups/{group['id']}").json()["data"]["memberCount"] == 0
        )
    assert call(sandbox, "DELETE", f"/members/{member['id']}").status_code == 404
    assert create_member(sandbox, "gone@example.com")["accessGroups"] == []


# Login links


def test_login_link_without_body_is_sent_by_email(sandbox: SandboxServer) -> None:
    member = create_member(sandbox, "link@example.com")
    response = call(sandbox, "POST", f"/members/{member['id']}/login-links")
    assert response.status_code == 200
    assert response.json() == {"data": {"memberId": member["id"], "status": "sent"}}
    [link] = sandbox.state.login_links()
    assert (link.member_id, link.status, link.email) == (member["id"], "sent", "link@example.com")


def test_login_link_with_redirect_path_is_sent(sandbox: SandboxServer) -> None:
    member = create_member(sandbox, "redirect@example.com")
    response = call(
        sandbox, "POST", f"/members/{member['id']}/login-links", json={"redirectPath": "/course"}
    )
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "sent"
    assert sandbox.state.login_links()[0].redirect_path == "/course"


def test_login_link_with_send_email_false_returns_the_url(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    fixed = datetime(2026, 5, 1, 9, 30, 15, 123456, tzinfo=UTC)
    server = start_sandbox(state=SandboxState(clock=lambda: fixed))
    member = create_member(server, "url@example.com")
    response = call(
        server, "POST", f"/members/{member['id']}/login-links", json={"sendEmail": False}
    )
    data = response.json()["data"]
    assert response.status_code == 201
    assert data["memberId"] == member["id"]
    assert data["status"] == "created"
    assert data["url"].startswith("https://sandbox.sotion.site/_auth?token=")
    assert data["expiresAt"] == "2026-05-02T09:30:15.123Z"
    assert server.state.login_links()[0].url == data["url"]


def test_login_link_for_unknown_member_is_404(sandbox: SandboxServer) -> None:
    response = call(sandbox, "POST", f"/members/{uuid.uuid4()}/login-links")
    assert response.status_code == 404
    assert sandbox.state.login_links() == []


def test_login_link_body_with_wrong_types_is_400(sandbox: SandboxServer) -> None:
    member = create_member(sandbox, "types@example.com")
    response = call(
        sandbox, "POST", f"/members/{member['id']}/login-links", json={"sendEmail": "no"}
    )
    assert response.status_code == 400


def test_sixth_login_link_for_a_member_within_a_minute_is_429(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    clock = FakeClock(1_000_003.2)
    server = start_sandbox(clock=clock)
    member = create_member(server, "many@example.com")
    other = create_member(server, "other@example.com")
    path = f"/members/{member['id']}/login-links"
    statuses = [call(server, "POST", path).status_code for _ in range(5)]
    refused = call(server, "POST", path)

    assert statuses == [200] * 5
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert call(server, "POST", f"/members/{other['id']}/login-links").status_code == 200
    clock.now += 60
    assert call(server, "POST", path).status_code == 200
    assert len(server.state.login_links()) == 7


def test_fifty_first_login_link_on_a_site_within_a_minute_is_429(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(clock=FakeClock())
    members = [create_member(server, f"s{index}@example.com")["id"] for index in range(11)]
    statuses = [
        call(server, "POST", f"/members/{member_id}/login-links").status_code
        for member_id in members[:10]
        for _ in range(5)
    ]
    refused = call(server, "POST", f"/members/{members[10]}/login-links")
    assert statuses == [200] * 50
    assert refused.status_code == 429
    assert "site" in refused.json()["error"]["message"]


# Access groups


def test_create_group_returns_201_location_and_custom_type(sandbox: SandboxServer) -> None:
    response = call(
        sandbox, "POST", "/access-groups", json={"name": "Gold", "description": "Top tier"}
    )
    group = response.json()["data"]
    assert response.status_code == 201
    assert response.headers["Location"] == f"/api/v1/access-groups/{group['id']}"
    assert {k: group[k] for k in ("name", "description", "type", "memberCount")} == {
        "name": "Gold",
        "description": "Top tier",
        "type": "custom",
        "memberCount": 0,
    }
    assert call(sandbox, "GET", f"/access-groups/{group['id']}").json()["data"] == group


def test_group_names_are_unique_case_sensitively(sandbox: SandboxServer) -> None:
    create_group(sandbox, "Gold")
    duplicate = call(sandbox, "POST", "/access-groups", json={"name": "Gold"})
    other_case = call(sandbox, "POST", "/access-groups", json={"name": "gold"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "conflict"
    assert other_case.status_code == 201


@pytest.mark.parametrize(
    "body",
    [{}, {"name": ""}, {"name": "x" * 101}, {"name": 5}, {"name": "ok", "description": "d" * 501}],
)
def test_invalid_group_is_400(sandbox: SandboxServer, body: dict[str, Any]) -> None:
    assert call(sandbox, "POST", "/access-groups", json=body).status_code == 400


def test_group_name_and_description_limits_are_inclusive(sandbox: SandboxServer) -> None:
    body = {"name": "x" * 100, "description": "d" * 500}
    assert call(sandbox, "POST", "/access-groups", json=body).status_code == 201


def test_patch_group_renames_and_clears_description(sandbox: SandboxServer) -> None:
    group = create_group(sandbox, "Silver")
    create_group(sandbox, "Bronze")
    renamed = call(
        sandbox,
        "PATCH",
        f"/access-groups/{group['id']}",
        json={"name": "Platinum", "description": None},
    )
    clash = call(sandbox, "PATCH", f"/access-groups/{group['id']}", json={"name": "Bronze"})
    assert renamed.status_code == 200
    assert renamed.json()["data"]["name"] == "Platinum"
    assert renamed.json()["data"]["description"] is None
    assert clash.status_code == 409


def test_unknown_group_is_404_everywhere(sandbox: SandboxServer) -> None:
    member = create_member(sandbox, "m@example.com")
    missing = f"/access-groups/{uuid.uuid4()}"
    responses = [
        call(sandbox, "GET", missing),
        call(sandbox, "PATCH", missing, json={"name": "x"}),
        call(sandbox, "DELETE", missing),
        call(sandbox, "GET", f"{missing}/members"),
        call(sandbox, "POST", f"{missing}/members", json={"memberId": member["id"]}),
        call(sandbox, "DELETE", f"{missing}/members/{member['id']}"),
    ]
    assert [response.status_code for response in responses] == [404] * 6


def test_scope_groups_are_read_only_with_403(sandbox: SandboxServer) -> None:
    scope = sandbox.state.add_scope_group("From Notion")
    member = create_member(sandbox, "m@example.com")
    sandbox.state.add_member_to_group(scope.id, member["id"], allow_scope=True)
    path = f"/access-groups/{scope.id}"
    responses = [
        call(sandbox, "PATCH", path, json={"name": "Renamed"}),
        call(sandbox, "DELETE", path),
        call(sandbox, "POST", f"{path}/members", json={"memberId": member["id"]}),
        call(sandbox, "DELETE", f"{path}/members/{member['id']}"),
    ]
    assert [response.status_code for response in responses] == [403] * 4
    assert all(response.json()["error"]["code"] == "forbidden" for response in responses)
    group = call(sandbox, "GET", path).json()["data"]
    assert (group["type"], group["name"], group["memberCount"]) == ("scope", "From Notion", 1)


def test_group_membership_add_conflict_and_remove(sandbox: SandboxServer) -> None:
    group = create_group(sandbox, "Club")
    member = create_member(sandbox, "club@example.com")
    path = f"/access-groups/{group['id']}/members"
    added = call(sandbox, "POST", path, json={"memberId": member["id"]})
    again = call(sandbox, "POST", path, json={"memberId": member["id"]})
    unknown = call(sandbox, "POST", path, json={"memberId": str(uuid.uuid4())})
    fetched = call(sandbox, "GET", f"/members/{member['id']}").json()["data"]

    assert added.status_code == 201
    assert added.json() == {"data": {"groupId": group["id"], "memberId": member["id"]}}
    assert again.status_code == 409
    assert unknown.status_code == 404
    assert fetched["accessGroups"] == [{"id": group["id"], "name": "Club"}]

    removed = call(sandbox, "DELETE", f"{path}/{member['id']}")
    removed_again = call(sandbox, "DELETE", f"{path}/{member['id']}")
    assert removed.status_code == 204
    assert removed_again.status_code == 404
    assert call(sandbox, "GET", f"/members/{member['id']}").status_code == 200


def test_add_group_member_requires_member_id(sandbox: SandboxServer) -> None:
    group = create_group(sandbox, "Club")
    response = call(sandbox, "POST", f"/access-groups/{group['id']}/members", json={})
    assert response.status_code == 400


def test_delete_group_keeps_its_members(sandbox: SandboxServer) -> None:
    group = create_group(sandbox, "Temp")
    member = create_member(sandbox, "keep@example.com", accessGroupIds=[group["id"]])
    assert call(sandbox, "DELETE", f"/access-groups/{group['id']}").status_code == 204
    assert call(sandbox, "GET", f"/access-groups/{group['id']}").status_code == 404
    assert call(sandbox, "GET", f"/members/{member['id']}").json()["data"]["accessGroups"] == []


def test_groups_and_group_members_paginate(sandbox: SandboxServer) -> None:
    groups = [create_group(sandbox, f"G{index}")["id"] for index in range(5)]
    members = [create_member(sandbox, f"gm{index}@example.com")["id"] for index in range(5)]
    for member_id in members:
        call(sandbox, "POST", f"/access-groups/{groups[0]}/members", json={"memberId": member_id})
    listed_groups = list_all(sandbox, "/access-groups", limit=2)
    listed_members = list_all(sandbox, f"/access-groups/{groups[0]}/members", limit=2)
    assert [group["id"] for group in listed_groups] == groups
    assert listed_groups[0]["memberCount"] == 5
    assert [member["id"] for member in listed_members] == members
    assert all("accessGroups" not in member for member in listed_members)
    bad_cursor = call(sandbox, "GET", "/access-groups", params={"after": "nope"})
    assert bad_cursor.status_code == 400


# Faults


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_injected_server_error_answers_once_then_recovers(
    sandbox: SandboxServer, kind: str
) -> None:
    sandbox.faults.inject(kind)
    failed = call(sandbox, "GET", "/site")
    recovered = call(sandbox, "GET", "/site")
    assert failed.status_code == int(kind)
    assert failed.json() == {"error": "Injected fault"}
    assert uuid.UUID(failed.headers["X-Request-Id"])
    assert all(header in failed.headers for header in RATE_HEADERS)
    assert recovered.status_code == 200


def test_injected_429_carries_rate_limit_headers_and_retry_after(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(rate_limit="100/10"), clock=FakeClock(1_000_003.2))
    server.faults.inject("429")
    response = call(server, "GET", "/site")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.headers["X-RateLimit-Reset"] == "1000010"


def test_injected_hang_outlasts_a_short_client_timeout(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(hang_seconds=2.0))
    server.faults.inject("hang")
    with pytest.raises(requests.ReadTimeout):
        call(server, "GET", "/site", timeout=0.3)
    assert call(server, "GET", "/site").status_code == 200


def test_injected_hang_answers_normally_after_the_delay(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(hang_seconds=0.3))
    server.faults.inject("hang")
    started = time.monotonic()
    response = call(server, "GET", "/site")
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_injected_reset_drops_the_connection_without_a_response(sandbox: SandboxServer) -> None:
    sandbox.faults.inject("reset", method="POST", path_prefix="/members")
    with pytest.raises(requests.ConnectionError):
        call(sandbox, "POST", "/members", json={"email": "lost@example.com"})
    assert call(sandbox, "GET", "/site").status_code == 200


def test_scripted_faults_are_fifo_and_honour_method_path_and_count(
    sandbox: SandboxServer,
) -> None:
    sandbox.faults.inject("503", count=2, method="post", path_prefix="/members")
    sandbox.faults.inject("502")
    unmatched = call(sandbox, "GET", "/site")
    first = call(sandbox, "POST", "/members", json={"email": "a@example.com"})
    second = call(sandbox, "POST", "/members", json={"email": "a@example.com"})
    third = call(sandbox, "POST", "/members", json={"email": "a@example.com"})
    assert [r.status_code for r in (unmatched, first, second, third)] == [502, 503, 503, 201]
    assert sandbox.faults.pending() == []


def test_faults_apply_after_auth_and_skip_unauthenticated_requests(
    sandbox: SandboxServer,
) -> None:
    sandbox.faults.inject("500")
    assert call(sandbox, "GET", "/site", auth=False).status_code == 401
    assert call(sandbox, "GET", "/site").status_code == 500


def test_fault_rate_one_fails_every_api_call_but_not_control(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(fault_rate=1.0, seed=7))
    statuses = {call(server, "GET", "/site").status_code for _ in range(20)}
    control = requests.get(server.root_url + "/_sandbox/state", timeout=TIMEOUT)
    assert statuses <= {500, 502, 503, 429}
    assert len(statuses) > 1
    assert control.status_code == 200


def test_scripted_faults_take_precedence_over_random_ones(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(fault_rate=1.0, seed=1))
    server.faults.inject("reset")
    with pytest.raises(requests.ConnectionError):
        call(server, "GET", "/site")


def test_latency_delays_api_responses(start_sandbox: Callable[..., SandboxServer]) -> None:
    server = start_sandbox(SandboxConfig(latency=0.25))
    started = time.monotonic()
    assert call(server, "GET", "/site").status_code == 200
    assert time.monotonic() - started >= 0.25


def test_faults_can_be_scripted_and_cleared_over_http(sandbox: SandboxServer) -> None:
    control = sandbox.root_url + "/_sandbox/faults"
    created = requests.post(control, json={"kind": "503", "count": 3}, timeout=TIMEOUT)
    invalid = requests.post(control, json={"kind": "418"}, timeout=TIMEOUT)
    first = call(sandbox, "GET", "/site")
    cleared = requests.delete(control, timeout=TIMEOUT)
    assert created.status_code == 201
    assert created.json()["data"]["kind"] == "503"
    assert invalid.status_code == 400
    assert first.status_code == 503
    assert cleared.json() == {"data": {"cleared": 2}}
    assert call(sandbox, "GET", "/site").status_code == 200


# Control endpoints


def test_control_state_shows_members_groups_and_login_links(sandbox: SandboxServer) -> None:
    group = create_group(sandbox, "Seen")
    member = create_member(sandbox, "seen@example.com", accessGroupIds=[group["id"]])
    call(sandbox, "POST", f"/members/{member['id']}/login-links")
    state = requests.get(sandbox.root_url + "/_sandbox/state", timeout=TIMEOUT).json()["data"]
    assert state["members"][0]["accessGroupIds"] == [group["id"]]
    assert state["accessGroups"][0]["memberCount"] == 1
    assert state["loginLinks"][0]["memberId"] == member["id"]
    assert state["siteId"] == sandbox.state.site_id


def test_control_endpoints_need_no_key_and_no_budget(
    start_sandbox: Callable[..., SandboxServer],
) -> None:
    server = start_sandbox(SandboxConfig(rate_limit="1/60"), clock=FakeClock())
    call(server, "GET", "/site")
    scope = requests.post(
        server.root_url + "/_sandbox/scope-groups", json={"name": "Course"}, timeout=TIMEOUT
    )
    statuses = [
        requests.get(server.root_url + "/_sandbox/state", timeout=TIMEOUT).status_code
        for _ in range(3)
    ]
    assert scope.status_code == 201
    assert scope.json()["data"]["type"] == "scope"
    assert statuses == [200, 200, 200]


def test_control_reset_forgets_everything(start_sandbox: Callable[..., SandboxServer]) -> None:
    server = start_sandbox(SandboxConfig(rate_limit="2/60"), clock=FakeClock())
    create_member(server, "a@example.com")
    server.faults.inject("500", path_prefix="/access-groups")
    response = requests.post(server.root_url + "/_sandbox/reset", timeout=TIMEOUT)
    after = call(server, "GET", "/members")
    assert response.status_code == 200
    assert after.json()["data"] == []
    assert after.headers["X-RateLimit-Remaining"] == "1"
    assert server.faults.pending() == []


def test_control_verify_marks_member_verified(sandbox: SandboxServer) -> None:
    member = create_member(sandbox, "v@example.com")
    response = requests.post(
        f"{sandbox.root_url}/_sandbox/members/{member['id']}/verify", timeout=TIMEOUT
    )
    assert response.status_code == 200
    assert call(sandbox, "GET", f"/members/{member['id']}").json()["data"]["verified"] is True


# Persistence


def test_state_file_round_trip_survives_a_restart(
    start_sandbox: Callable[..., SandboxServer], tmp_path: Path
) -> None:
    state_file = tmp_path / "sandbox.json"
    first = start_sandbox(SandboxConfig(state_file=str(state_file)))
    group = create_group(first, "Persistent")
    member = create_member(first, "kept@example.com", paid=True, accessGroupIds=[group["id"]])
    call(first, "POST", f"/members/{member['id']}/login-links")
    first.stop()

    second = start_sandbox(SandboxConfig(state_file=str(state_file)))
    restored = call(second, "GET", f"/members/{member['id']}").json()["data"]
    later = create_member(second, "later@example.com")

    assert restored == member
    assert second.state.site_id == first.state.site_id
    assert len(second.state.login_links()) == 1
    newest_first = [m["id"] for m in list_all(second, "/members")]
    assert newest_first == [later["id"], member["id"]]
    assert json.loads(state_file.read_text())["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["sandbox.json"]


def test_corrupt_state_file_fails_at_start_with_its_path(tmp_path: Path) -> None:
    state_file = tmp_path / "broken.json"
    state_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        SandboxState(state_file=state_file)


# Legacy API


@pytest.fixture
def legacy(start_sandbox: Callable[..., SandboxServer]) -> SandboxServer:
    """A sandbox that also serves the legacy API."""
    return start_sandbox(SandboxConfig(legacy_key="legacy-key", legacy_site_id="E1CP6DYM2JF6H"))


def legacy_call(server: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    """One legacy API request."""
    return requests.request(method, f"{server.legacy_url}{path}", timeout=TIMEOUT, **kwargs)


def test_legacy_create_returns_site_envelope_visible_in_v1(legacy: SandboxServer) -> None:
    response = legacy_call(legacy, "POST", "/members", json={"email": "Old@Example.com"})
    body = response.json()
    [member] = body["config"]["members"]
    assert response.status_code == 200
    assert {k: body[k] for k in ("siteId", "status", "domain", "authType")} == {
        "siteId": "E1CP6DYM2JF6H",
        "status": "active",
        "domain": "sandbox.sotion.site",
        "authType": "email",
    }
    assert body["pageUrl"].startswith("https://sandbox.sotion.site/")
    assert member["email"] == "old@example.com"
    assert (member["verified"], member["blocked"], member["paid"]) == (False, False, False)
    v1 = call(legacy, "GET", f"/members/{member['uuid']}").json()["data"]
    assert v1["registeredAt"] == member["registeredAt"]
    assert uuid.UUID(response.headers["X-Request-Id"])


def test_legacy_sees_members_created_through_v1(legacy: SandboxServer) -> None:
    created = create_member(legacy, "v1@example.com", paid=True)
    call(legacy, "PATCH", f"/members/{created['id']}", json={"status": "blocked"})
    body = legacy_call(legacy, "GET", f"/members/{created['id']}").json()
    assert body["config"]["members"] == [
        {
            "email": "v1@example.com",
            "uuid": created["id"],
            "registeredAt": created["registeredAt"],
            "verified": False,
            "blocked": True,
            "paid": True,
        }
    ]


def test_legacy_search_filters_by_email_verified_and_paid(legacy: SandboxServer) -> None:
    for email, paid in (("a@example.com", True), ("b@example.com", False)):
        legacy_call(legacy, "POST", "/members", json={"email": email, "paid": paid})
    everyone = legacy_call(legacy, "GET", "/members").json()["config"]["members"]
    paid = legacy_call(legacy, "GET", "/members", params={"paid": "true"}).json()
    by_email = legacy_call(
        legacy, "GET", "/members", params={"email": "B@example.com", "verified": "false"}
    ).json()
    assert [m["email"] for m in everyone] == ["a@example.com", "b@example.com"]
    assert [m["email"] for m in paid["config"]["members"]] == ["a@example.com"]
    assert [m["email"] for m in by_email["config"]["members"]] == ["b@example.com"]


def test_legacy_update_and_delete(legacy: SandboxServer) -> None:
    created = legacy_call(legacy, "POST", "/members", json={"email": "u@example.com"}).json()
    member_id = created["config"]["members"][0]["uuid"]
    updated = legacy_call(
        legacy, "PATCH", f"/members/{member_id}", json={"email": "U2@example.com", "paid": True}
    )
    deleted = legacy_call(legacy, "DELETE", f"/members/{member_id}")
    assert updated.status_code == 200
    assert updated.json()["config"]["members"][0]["email"] == "u2@example.com"
    assert updated.json()["config"]["members"][0]["paid"] is True
    assert deleted.json() == {
        "siteId": "E1CP6DYM2JF6H",
        "memberId": member_id,
        "status": "Deleted",
    }
    gone = legacy_call(legacy, "GET", f"/members/{member_id}")
    assert gone.status_code == 404
    assert gone.json() == {"error": "Member not found"}


def test_legacy_errors_use_documented_messages(legacy: SandboxServer) -> None:
    legacy_call(legacy, "POST", "/members", json={"email": "dup@example.com"})
    missing_email = legacy_call(legacy, "POST", "/members", json={"paid": True})
    duplicate = legacy_call(legacy, "POST", "/members", json={"email": "dup@example.com"})
    wrong_key = requests.get(
        f"{legacy.root_url}/legacy/nope/sites/E1CP6DYM2JF6H/members", timeout=TIMEOUT
    )
    wrong_site = requests.get(
        f"{legacy.root_url}/legacy/legacy-key/sites/OTHER/members", timeout=TIMEOUT
    )
    wrong_method = legacy_call(legacy, "PUT", "/members")
    assert (missing_email.status_code, missing_email.json()) == (
        400,
        {"error": "Bad Request: Member email required"},
    )
    assert (duplicate.status_code, duplicate.json()) == (
        400,
        {"error": "Bad Request: Member already exists"},
    )
    assert (wrong_key.status_code, wrong_key.json()) == (401, {"error": "Unauthorized"})
    assert (wrong_site.status_code, wrong_site.json()) == (
        400,
        {"error": "Bad Request: Invalid siteId"},
    )
    assert (wrong_method.status_code, wrong_method.json()) == (
        405,
        {"error": "Method Not Allowed"},
    )
    assert all(
        "X-Request-Id" in r.headers for r in (missing_email, wrong_key, wrong_site, wrong_method)
    )


def test_legacy_login_link_and_send(legacy: SandboxServer) -> None:
    created = legacy_call(legacy, "POST", "/members", json={"email": "name@email.com"}).json()
    member_id = created["config"]["members"][0]["uuid"]
    link = legacy_call(legacy, "GET", f"/members/{member_id}/login-link").json()
    sent = legacy_call(legacy, "GET", f"/members/{member_id}/login-link/send")
    assert link == {
        "loginLink": (
            f"https://sandbox.sotion.site/_auth?uuid={member_id}"
            "&email=name%40email.com&magic=verify"
        )
    }
    assert sent.json()["config"]["members"][0]["uuid"] == member_id
    assert [entry.status for entry in legacy.state.login_links()] == ["created", "sent"]


def test_faults_apply_to_the_legacy_api_too(legacy: SandboxServer) -> None:
    legacy.faults.inject("503", path_prefix="/members")
    failed = legacy_call(legacy, "GET", "/members")
    recovered = legacy_call(legacy, "GET", "/members")
    assert (failed.status_code, failed.json()) == (503, {"error": "Injected fault"})
    assert recovered.status_code == 200


def test_legacy_api_is_absent_unless_configured(sandbox: SandboxServer) -> None:
    assert sandbox.legacy_url is None
    response = requests.get(f"{sandbox.root_url}/legacy/k/sites/s/members", timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


# Configuration


@pytest.mark.parametrize(
    "kwargs",
    [
        {"api_key": "sk_test"},
        {"rate_limit": "fast"},
        {"latency": -1.0},
        {"fault_rate": 1.5},
        {"hang_seconds": -2.0},
        {"legacy_key": "only-the-key"},
    ],
)
def test_invalid_config_is_rejected_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(**kwargs)


# Command line


def test_cli_rejects_a_key_without_so_prefix() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--key", "sk_live"])
    assert result.exit_code == 2
    assert "--key" in result.output


def test_cli_rejects_a_malformed_rate_limit() -> None:
    result = CliRunner().invoke(main, ["sandbox", "--rate-limit", "lots"])
    assert result.exit_code == 2
    assert "--rate-limit" in result.output


def test_cli_sandbox_serves_the_api_until_terminated(tmp_path: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bridge.cli",
        "sandbox",
        "--port",
        str(port),
        "--key",
        "so_cli",
        "--rate-limit",
        "100/10",
        "--seed-scope-group",
        "Course",
        "--state-file",
        str(tmp_path / "state.json"),
    ]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # A watchdog so a server that never prints cannot hang the suite.
    watchdog = threading.Timer(20, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        site = requests.get(
            f"http://127.0.0.1:{port}/api/v1/site",
            headers={"Authorization": "Bearer so_cli"},
            timeout=TIMEOUT,
        )
        groups = requests.get(
            f"http://127.0.0.1:{port}/api/v1/access-groups",
            headers={"Authorization": "Bearer so_cli"},
            timeout=TIMEOUT,
        )
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    assert f"http://127.0.0.1:{port}/api/v1" in banner
    assert site.status_code == 200
    assert site.headers["X-RateLimit-Limit"] == "100"
    assert [(g["name"], g["type"]) for g in groups.json()["data"]] == [("Course", "scope")]
    assert (tmp_path / "state.json").exists()
