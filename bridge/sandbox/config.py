"""Settings of one sandbox instance, validated when constructed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bridge.sandbox.ratelimit import RateLimit

# Sotion's per-site keys all carry this prefix.
API_KEY_PREFIX = "so_"


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox authenticates, limits, slows down, breaks and persists."""

    api_key: str = "so_test"
    rate_limit: str | None = None
    latency: float = 0.0
    fault_rate: float = 0.0
    hang_seconds: float = 30.0
    state_file: str | None = None
    legacy_key: str | None = None
    legacy_site_id: str | None = None
    site_title: str = "Sandbox site"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.api_key.startswith(API_KEY_PREFIX):
            raise ValueError(f"api_key must start with {API_KEY_PREFIX!r}")
        if self.rate_limit is not None:
            RateLimit.parse(self.rate_limit)
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"latency must be >= 0 seconds, got {self.latency}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {self.fault_rate}")
        if not (math.isfinite(self.hang_seconds) and self.hang_seconds >= 0):
            raise ValueError(f"hang_seconds must be >= 0 seconds, got {self.hang_seconds}")
        if (self.legacy_key is None) != (self.legacy_site_id is None):
            raise ValueError("legacy_key and legacy_site_id must be set together")
        if self.legacy_key is not None and ("/" in self.legacy_key or not self.legacy_key):
            raise ValueError("legacy_key must be a non-empty path segment")
        if self.legacy_site_id is not None and (
            "/" in self.legacy_site_id or not self.legacy_site_id
        ):
            raise ValueError("legacy_site_id must be a non-empty path segment")

    @property
    def legacy_enabled(self) -> bool:
        """Whether the legacy members API is served."""
        return self.legacy_key is not None and self.legacy_site_id is not None

    def parsed_rate_limit(self) -> RateLimit | None:
        """The per-key API budget, or None for no limit."""
        return None if self.rate_limit is None else RateLimit.parse(self.rate_limit)
