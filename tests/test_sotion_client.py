"""The v1 sotion_api against the sandbox over a real socket: every operation, every error class."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import requests

from bridge.sandbox import SandboxServer
from bridge.sotion import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NewMember,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    SotionClient,
    TransientError,
)
from tests.conftest import SANDBOX_KEY, SandboxFactory


def _recording_client(server: SandboxServer, **options: Any) -> tuple[SotionClient, list[Any]]:
    """A sotion_api whose session records every request it sends."""
    sent: list[Any] = []
    session = requests.Session()
    session.hooks["response"].append(lambda response, **_: sent.append(response.request))
    options.setdefault("timeout", (2.0, 5.0))
    api = SotionClient.connect(server.url, SANDBOX_KEY, session=session, **options)
    return api, sent


def test_site_answers_and_rate_limit_headers_are_exposed(sotion_api: SotionClient) -> None:
    assert sotion_api.rate_limit is None
    site = sotion_api.site()
    assert site.id
    assert site.status == "active"
    assert sotion_api.rate_limit is not None
    assert sotion_api.rate_limit.limit is not None
    assert sotion_api.rate_limit.remaining is not None
    assert sotion_api.rate_limit.reset_at is not None and sotion_api.rate_limit.reset_at > 1e9
    assert sotion_api.transport.last_request_id


def test_rate_limit_remaining_drops_with_each_call(sandbox_factory: SandboxFactory) -> None:
    server = sandbox_factory(rate_limit="50/3600")
    api = SotionClient.connect(server.url, SANDBOX_KEY)
    api.site()
    first = api.rate_limit
    api.site()
    second = api.rate_limit
    assert first is not None and second is not None
    assert first.limit == 50
    assert second.remaining == (first.remaining or 0) - 1


def test_create_then_get_returns_member_with_groups(sotion_api: SotionClient) -> None:
    group = sotion_api.create_access_group("Course A")
    created = sotion_api.create_member(
        "  Ada@Example.COM ", display_name="Ada", paid=True, access_group_ids=[group.id]
    )
    assert created.email == "ada@example.com"
    assert created.paid is True
    assert created.status == "active"
    assert created.verified is False
    fetched = sotion_api.get_member(created.id)
    assert fetched.display_name == "Ada"
    assert fetched.access_group_ids == frozenset({group.id})


def test_duplicate_email_raises_conflict_with_details(sotion_api: SotionClient) -> None:
    sotion_api.create_member("dup@example.com")
    with pytest.raises(ConflictError) as caught:
        sotion_api.create_member("DUP@example.com")
    error = caught.value
    assert error.status == 409
    assert error.request_id
    assert error.body_excerpt
    assert not error.retryable


def test_find_member_by_email_normalizes_and_misses_cleanly(sotion_api: SotionClient) -> None:
    created = sotion_api.create_member("find.me@example.com")
    found = sotion_api.find_member_by_email(" FIND.me@Example.com")
    assert found is not None and found.id == created.id
    assert sotion_api.find_member_by_email("nobody@example.com") is None


def test_iter_members_follows_the_cursor_across_pages(sotion: SandboxServer) -> None:
    api, sent = _recording_client(sotion)
    emails = {f"m{i}@example.com" for i in range(7)}
    for email in sorted(emails):
        api.create_member(email)
    sent.clear()
    seen = [member.email for member in api.iter_members(page_size=3)]
    assert sorted(seen) == sorted(emails)
    assert len(seen) == len(set(seen))
    list_calls = [r for r in sent if r.method == "GET"]
    assert len(list_calls) == 3
    assert "after=" in (list_calls[1].url or "")


def test_list_members_page_reports_cursor_and_end(sotion_api: SotionClient) -> None:
    for i in range(3):
        sotion_api.create_member(f"p{i}@example.com")
    first = sotion_api.list_members(limit=2, order="asc")
    assert [m.email for m in first] == ["p0@example.com", "p1@example.com"]
    assert first.has_more and first.next_cursor == first.items[-1].id
    last = sotion_api.list_members(limit=2, order="asc", after=first.next_cursor)
    assert [m.email for m in last] == ["p2@example.com"]
    assert not last.has_more and last.next_cursor is None
    assert all(m.access_groups is None for m in last)


def test_list_members_applies_every_filter(sotion_api: SotionClient) -> None:
    paid = sotion_api.create_member("paid@example.com", display_name="Grace Hopper", paid=True)
    sotion_api.create_member("free@example.com")
    blocked = sotion_api.create_member("blocked@example.com")
    sotion_api.update_member(blocked.id, status="blocked")
    assert [m.id for m in sotion_api.iter_members(paid=True)] == [paid.id]
    assert [m.id for m in sotion_api.iter_members(status="blocked")] == [blocked.id]
    assert [m.id for m in sotion_api.iter_members(q="hopper")] == [paid.id]
    assert [m.email for m in sotion_api.iter_members(email="free@example.com")] == [
        "free@example.com"
    ]
    assert len(list(sotion_api.iter_members(verified=False))) == 3
    by_email = [m.email for m in sotion_api.iter_members(sort="email", order="asc")]
    assert by_email == sorted(by_email)


def test_invalid_list_parameter_is_a_permanent_error(sotion_api: SotionClient) -> None:
    with pytest.raises(PermanentError) as caught:
        sotion_api.list_members(limit=500)
    assert caught.value.status == 400
    assert not caught.value.retryable


def test_bulk_create_keeps_mixed_outcomes_per_email(sotion_api: SotionClient) -> None:
    sotion_api.create_member("taken@example.com")
    result = sotion_api.bulk_create_members(
        [
            NewMember("new1@example.com", paid=True),
            NewMember("taken@example.com"),
            NewMember("not-an-email"),
            NewMember("new2@example.com", display_name="Two"),
        ]
    )
    assert [item.status for item in result.items] == ["created", "conflict", "error", "created"]
    assert [item.email for item in result.created] == ["new1@example.com", "new2@example.com"]
    assert result.created[0].member is not None and result.created[0].member.paid is True
    assert result.conflicts[0].error_code
    assert result.errors[0].error_message
    assert sotion_api.find_member_by_email("new2@example.com") is not None


def test_bulk_create_chunks_large_inputs(sotion: SandboxServer) -> None:
    api, sent = _recording_client(sotion)
    members = [NewMember(f"bulk{i}@example.com") for i in range(1203)]
    result = api.bulk_create_members(members)
    bulk_calls = [r for r in sent if r.url.endswith("/members/bulk")]
    sizes = [len(json.loads(r.body)["members"]) for r in bulk_calls]
    assert sizes == [500, 500, 203]
    assert len(result.created) == 1203
    assert len(list(api.iter_members())) == 1203


def test_bulk_chunk_size_outside_bounds_is_refused(sotion_api: SotionClient) -> None:
    with pytest.raises(ValueError):
        sotion_api.bulk_create_members([NewMember("a@example.com")], chunk_size=501)


def test_update_patches_only_the_given_fields(sotion: SandboxServer) -> None:
    api, sent = _recording_client(sotion)
    member = api.create_member("patch@example.com", display_name="Before")
    updated = api.update_member(member.id, paid=True)
    patch = [r for r in sent if r.method == "PATCH"][-1]
    assert json.loads(patch.body) == {"paid": True}
    assert updated.paid is True and updated.display_name == "Before"
    cleared = api.update_member(member.id, display_name=None, status="blocked")
    assert json.loads([r for r in sent if r.method == "PATCH"][-1].body) == {
        "displayName": None,
        "status": "blocked",
    }
    assert cleared.display_name is None and cleared.blocked


def test_update_without_fields_sends_nothing(sotion: SandboxServer) -> None:
    api, sent = _recording_client(sotion)
    member = api.create_member("nothing@example.com")
    sent.clear()
    with pytest.raises(ValueError):
        api.update_member(member.id)
    assert sent == []


def test_update_to_a_taken_email_conflicts(sotion_api: SotionClient) -> None:
    sotion_api.create_member("one@example.com")
    two = sotion_api.create_member("two@example.com")
    with pytest.raises(ConflictError):
        sotion_api.update_member(two.id, email="ONE@example.com")


def test_delete_then_get_is_not_found(sotion_api: SotionClient) -> None:
    member = sotion_api.create_member("gone@example.com")
    sotion_api.delete_member(member.id)
    with pytest.raises(NotFoundError) as caught:
        sotion_api.get_member(member.id)
    assert caught.value.status == 404
    with pytest.raises(NotFoundError):
        sotion_api.delete_member(member.id)


def test_login_links_are_sent_or_returned(sotion_api: SotionClient) -> None:
    member = sotion_api.create_member("login@example.com")
    sent = sotion_api.send_login_link(member.id, redirect_path="/welcome")
    assert sent.status == "sent" and sent.url is None
    created = sotion_api.create_login_link(member.id)
    assert created.status == "created"
    assert created.url and created.url.startswith("https://")
    assert created.expires_at


def test_login_link_limit_per_member_is_rate_limited(sotion_api: SotionClient) -> None:
    member = sotion_api.create_member("spam@example.com")
    for _ in range(5):
        sotion_api.send_login_link(member.id)
    with pytest.raises(RateLimitedError) as caught:
        sotion_api.send_login_link(member.id)
    assert caught.value.retryable


def test_access_groups_round_trip(sotion_api: SotionClient) -> None:
    group = sotion_api.create_access_group("Members", description="Everyone who paid")
    assert group.type == "custom"
    with pytest.raises(ConflictError):
        sotion_api.create_access_group("Members")
    renamed = sotion_api.update_access_group(group.id, name="Paid members")
    assert renamed.name == "Paid members"
    assert sotion_api.get_access_group(group.id).description == "Everyone who paid"
    member = sotion_api.create_member("grouped@example.com")
    sotion_api.add_group_member(group.id, member.id)
    with pytest.raises(ConflictError):
        sotion_api.add_group_member(group.id, member.id)
    assert [m.id for m in sotion_api.iter_group_members(group.id)] == [member.id]
    assert sotion_api.get_access_group(group.id).member_count == 1
    assert sotion_api.get_member(member.id).access_group_ids == frozenset({group.id})
    sotion_api.remove_group_member(group.id, member.id)
    assert list(sotion_api.iter_group_members(group.id)) == []
    assert sotion_api.get_member(member.id).email == "grouped@example.com"
    sotion_api.delete_access_group(group.id)
    with pytest.raises(NotFoundError):
        sotion_api.get_access_group(group.id)


def test_access_groups_list_follows_the_cursor(sotion_api: SotionClient) -> None:
    names = {f"Group {i}" for i in range(5)}
    for name in names:
        sotion_api.create_access_group(name)
    assert {g.name for g in sotion_api.iter_access_groups(page_size=2)} == names


def test_scope_group_changes_are_forbidden(sotion: SandboxServer, sotion_api: SotionClient) -> None:
    scope = sotion.state.add_scope_group("Notion collection")
    member = sotion_api.create_member("scoped@example.com")
    with pytest.raises(ForbiddenError) as caught:
        sotion_api.add_group_member(scope.id, member.id)
    assert caught.value.status == 403
    with pytest.raises(ForbiddenError):
        sotion_api.update_access_group(scope.id, name="Renamed")
    with pytest.raises(ForbiddenError):
        sotion_api.create_member("scoped2@example.com", access_group_ids=[scope.id])


def test_wrong_key_is_an_auth_error(sotion: SandboxServer) -> None:
    api = SotionClient.connect(sotion.url, "so_wrong")
    with pytest.raises(AuthError) as caught:
        api.site()
    assert caught.value.status == 401
    assert caught.value.request_id
    assert not caught.value.retryable


def test_missing_key_flat_error_body_is_read(sotion: SandboxServer) -> None:
    api = SotionClient.connect(sotion.url, SANDBOX_KEY)
    del api.transport.session.headers["Authorization"]
    with pytest.raises(AuthError) as caught:
        api.site()
    assert "Missing API key" in caught.value.message


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_server_errors_are_transient(
    sotion: SandboxServer, sotion_api: SotionClient, kind: str
) -> None:
    sotion.faults.inject(kind)
    with pytest.raises(TransientError) as caught:
        sotion_api.site()
    assert caught.value.retryable
    assert caught.value.status == int(kind)
    assert caught.value.request_id
    assert sotion_api.site().id  # the fault was used up


def test_429_carries_the_reset_time(sotion: SandboxServer, sotion_api: SotionClient) -> None:
    sotion.faults.inject("429")
    with pytest.raises(RateLimitedError) as caught:
        sotion_api.site()
    error = caught.value
    assert error.status == 429
    assert error.reset_at is not None and error.reset_at > time.time() - 1
    assert error.retry_after is not None and error.retry_after >= 1
    assert error.wait_seconds() >= 1


def test_rate_limit_window_is_waited_out(sandbox_factory: SandboxFactory) -> None:
    server = sandbox_factory(rate_limit="2/2")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    api = SotionClient.connect(server.url, SANDBOX_KEY, rate_limit_waits=2, sleep=sleep)
    # Windows are aligned to the clock: start just after one opens so three calls share it.
    time.sleep(2 - time.time() % 2 + 0.05)
    for _ in range(3):
        api.site()
    assert len(waits) == 1
    assert 0 < waits[0] <= 2.5
    assert api.rate_limit is not None and api.rate_limit.remaining is not None


def test_rate_limit_without_waits_raises(sandbox_factory: SandboxFactory) -> None:
    server = sandbox_factory(rate_limit="1/3600")
    api = SotionClient.connect(server.url, SANDBOX_KEY)
    api.site()
    with pytest.raises(RateLimitedError) as caught:
        api.site()
    assert caught.value.reset_at is not None
    assert api.rate_limit is not None and api.rate_limit.remaining == 0
    assert 0 < caught.value.wait_seconds() <= 3601


def test_wait_longer_than_allowed_is_not_slept(sandbox_factory: SandboxFactory) -> None:
    server = sandbox_factory(rate_limit="1/3600")
    slept: list[float] = []
    api = SotionClient.connect(
        server.url, SANDBOX_KEY, rate_limit_waits=3, max_rate_limit_wait=1.0, sleep=slept.append
    )
    api.site()
    with pytest.raises(RateLimitedError):
        api.site()
    assert slept == []


def test_hang_hits_the_read_timeout(sandbox_factory: SandboxFactory) -> None:
    server = sandbox_factory(hang_seconds=5.0)
    server.faults.inject("hang")
    api = SotionClient.connect(server.url, SANDBOX_KEY, timeout=(1.0, 0.5))
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        api.site()
    elapsed = time.monotonic() - started
    assert "in time" in caught.value.message
    assert elapsed < 4.0


def test_unreachable_sotion_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = SotionClient.connect(f"http://127.0.0.1:{port}/api/v1", SANDBOX_KEY, timeout=(1, 1))
    with pytest.raises(TransientError) as caught:
        api.site()
    assert "connect" in caught.value.message.lower()


def test_unknown_route_is_not_found(sotion: SandboxServer) -> None:
    api = SotionClient.connect(sotion.root_url + "/nope", SANDBOX_KEY)
    with pytest.raises(NotFoundError):
        api.site()


def test_v1_prefix_without_api_also_works(sotion: SandboxServer) -> None:
    api = SotionClient.connect(sotion.root_url + "/v1", SANDBOX_KEY)
    assert api.site().id
