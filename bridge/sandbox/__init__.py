"""A faithful local fake of Sotion's REST API (v1 and legacy) for tests, demos and operators."""

from bridge.sandbox.app import create_sandbox_app
from bridge.sandbox.config import SandboxConfig
from bridge.sandbox.server import SandboxServer
from bridge.sandbox.state import SandboxState

__all__ = ["SandboxConfig", "SandboxServer", "SandboxState", "create_sandbox_app"]
