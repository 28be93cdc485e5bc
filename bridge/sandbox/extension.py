"""The per-app bundle of sandbox objects kept in `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.faults import FaultInjector
from bridge.sandbox.ratelimit import FixedWindowLimiter, LoginLinkLimiter
from bridge.sandbox.state import SandboxState

# Key of the SandboxExtension in `app.extensions`.
EXTENSION_KEY = "sotion_sandbox"


@dataclass(frozen=True)
class SandboxExtension:
    """Everything one sandbox app serves from: settings, data, faults and rate limiters."""

    config: SandboxConfig
    state: SandboxState
    faults: FaultInjector
    limiter: FixedWindowLimiter
    login_links: LoginLinkLimiter

    def reset(self) -> None:
        """Clear the data, the queued faults and every rate-limit window."""
        self.state.reset()
        self.faults.clear()
        self.limiter.reset()
        self.login_links.reset()


def current_sandbox() -> SandboxExtension:
    """The sandbox extension of the app handling the current request."""
    extension = current_app.extensions[EXTENSION_KEY]
    if not isinstance(extension, SandboxExtension):
        raise RuntimeError("the current app is not a Sotion sandbox")
    return extension
