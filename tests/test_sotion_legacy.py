"""The legacy members API behind the same interface, against the sandbox's legacy mode."""

from __future__ import annotations

import pytest

from bridge.sandbox import SandboxServer
from bridge.sotion import (
    AuthError,
    ConflictError,
    LegacySotionClient,
    NewMember,
    NotFoundError,
    SotionClient,
    UnsupportedOperationError,
)
from tests.conftest import LEGACY_SITE


def test_legacy_round_trip(legacy_client: LegacySotionClient, sotion_api: SotionClient) -> None:
    assert legacy_client.site().id == LEGACY_SITE
    created = legacy_client.create_member("Legacy@Example.com", paid=True)
    assert created.email == "legacy@example.com"
    assert created.paid is True and created.status == "active"
    found = legacy_client.find_member_by_email("legacy@example.com")
    assert found is not None and found.id == created.id
    assert legacy_client.get_member(created.id).paid is True
    updated = legacy_client.update_member(created.id, paid=False)
    assert updated.paid is False
    # The same site seen through the v1 API.
    assert sotion_api.get_member(created.id).paid is False
    link = legacy_client.create_login_link(created.id)
    assert link.url and "magic=verify" in link.url
    assert legacy_client.send_login_link(created.id).status == "sent"
    legacy_client.delete_member(created.id)
    with pytest.raises(NotFoundError):
        legacy_client.get_member(created.id)
    assert legacy_client.find_member_by_email("legacy@example.com") is None


def test_legacy_duplicate_becomes_a_conflict(legacy_client: LegacySotionClient) -> None:
    legacy_client.create_member("twice@example.com")
    with pytest.raises(ConflictError) as caught:
        legacy_client.create_member("twice@example.com")
    assert caught.value.status == 400


def test_legacy_filters(legacy_client: LegacySotionClient) -> None:
    legacy_client.create_member("a@example.com", paid=True)
    legacy_client.create_member("b@example.com", paid=False)
    assert [m.email for m in legacy_client.list_members(paid=True)] == ["a@example.com"]
    assert [m.email for m in legacy_client.iter_members(q="B@")] == ["b@example.com"]


def test_legacy_bulk_is_done_one_by_one(legacy_client: LegacySotionClient) -> None:
    legacy_client.create_member("old@example.com")
    result = legacy_client.bulk_create_members(
        [NewMember("fresh@example.com"), NewMember("old@example.com")]
    )
    assert [item.status for item in result.items] == ["created", "conflict"]


def test_legacy_wrong_key_is_an_auth_error(sotion: SandboxServer) -> None:
    template = f"{sotion.root_url}/legacy/{{key}}/sites/{{site_id}}"
    api = LegacySotionClient.connect("wrong-key", LEGACY_SITE, url_template=template)
    with pytest.raises(AuthError):
        api.find_member_by_email("x@example.com")


def test_legacy_cannot_do_what_it_lacks(legacy_client: LegacySotionClient) -> None:
    member = legacy_client.create_member("lacks@example.com")
    with pytest.raises(UnsupportedOperationError):
        legacy_client.update_member(member.id, status="blocked")
    with pytest.raises(UnsupportedOperationError):
        legacy_client.create_member("g@example.com", access_group_ids=["g1"])
    with pytest.raises(UnsupportedOperationError):
        legacy_client.create_access_group("Course")
    with pytest.raises(UnsupportedOperationError):
        legacy_client.list_members(sort="email")
    # Nothing was created by the refused call.
    assert legacy_client.find_member_by_email("g@example.com") is None
