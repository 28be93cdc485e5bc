"""The Sotion API boundary: clients for the v1 and legacy APIs, their errors and models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from bridge.settings import Settings, SettingsError
from bridge.sotion.client import SotionClient, normalize_email
from bridge.sotion.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PermanentError,
    RateLimitedError,
    SotionError,
    TransientError,
    UnsupportedOperationError,
)
from bridge.sotion.legacy import LegacySotionClient
from bridge.sotion.models import (
    UNSET,
    AccessGroup,
    BulkItem,
    BulkResult,
    GroupRef,
    LoginLink,
    Member,
    NewMember,
    Page,
    RateLimit,
    Site,
)

__all__ = [
    "UNSET",
    "AccessGroup",
    "AuthError",
    "BulkItem",
    "BulkResult",
    "ConflictError",
    "ForbiddenError",
    "GroupRef",
    "LegacySotionClient",
    "LoginLink",
    "Member",
    "NewMember",
    "NotFoundError",
    "Page",
    "PermanentError",
    "RateLimit",
    "RateLimitedError",
    "Site",
    "SotionAPI",
    "SotionClient",
    "SotionError",
    "TransientError",
    "UnsupportedOperationError",
    "client_from_settings",
    "normalize_email",
]


class SotionAPI(Protocol):
    """What the bridge needs from Sotion; both API flavours implement it."""

    flavor: str

    @property
    def rate_limit(self) -> RateLimit | None: ...
    def close(self) -> None: ...
    def site(self) -> Site: ...
    def list_members(
        self,
        *,
        email: str | None = ...,
        q: str | None = ...,
        status: str | None = ...,
        paid: bool | None = ...,
        verified: bool | None = ...,
        sort: str | None = ...,
        order: str | None = ...,
        limit: int | None = ...,
        after: str | None = ...,
    ) -> Page[Member]: ...
    def iter_members(self, *, page_size: int = ..., **filters: Any) -> Iterator[Member]: ...
    def get_member(self, member_id: str) -> Member: ...
    def find_member_by_email(self, email: str) -> Member | None: ...
    def create_member(
        self,
        email: str,
        *,
        display_name: str | None = ...,
        paid: bool = ...,
        access_group_ids: Iterable[str] = ...,
    ) -> Member: ...
    def bulk_create_members(
        self, members: Iterable[NewMember], *, chunk_size: int = ...
    ) -> BulkResult: ...
    def update_member(
        self,
        member_id: str,
        *,
        email: str = ...,
        display_name: str | None = ...,
        paid: bool = ...,
        status: str = ...,
    ) -> Member: ...
    def delete_member(self, member_id: str) -> None: ...
    def send_login_link(self, member_id: str, *, redirect_path: str | None = ...) -> LoginLink: ...
    def create_login_link(self, member_id: str) -> LoginLink: ...
    def get_access_group(self, group_id: str) -> AccessGroup: ...
    def iter_access_groups(self, *, page_size: int = ...) -> Iterator[AccessGroup]: ...
    def create_access_group(self, name: str, *, description: str | None = ...) -> AccessGroup: ...
    def delete_access_group(self, group_id: str) -> None: ...
    def list_group_members(
        self, group_id: str, *, limit: int | None = ..., after: str | None = ...
    ) -> Page[Member]: ...
    def iter_group_members(self, group_id: str, *, page_size: int = ...) -> Iterator[Member]: ...
    def add_group_member(self, group_id: str, member_id: str) -> None: ...
    def remove_group_member(self, group_id: str, member_id: str) -> None: ...


def client_from_settings(settings: Settings, **transport_options: Any) -> SotionAPI:
    """The client the settings ask for; SettingsError names what is missing."""
    if settings.sotion_api_key is None:
        raise SettingsError("SOTION_API_KEY is required to talk to Sotion")
    transport_options.setdefault("timeout", settings.sotion_timeout)
    if settings.sotion_api_flavor == "legacy":
        assert settings.sotion_site_id is not None  # checked by Settings
        return LegacySotionClient.connect(
            settings.sotion_api_key,
            settings.sotion_site_id,
            url_template=settings.sotion_api_url,
            **transport_options,
        )
    return SotionClient.connect(
        settings.sotion_api_url, settings.sotion_api_key, **transport_options
    )
