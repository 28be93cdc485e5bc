"""Domain errors of the Sotion sandbox, each carrying the HTTP status and error code it maps to."""

from __future__ import annotations

from typing import ClassVar


class SandboxError(Exception):
    """Base of every error the sandbox turns into a JSON error response."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidError(SandboxError):
    """The request is malformed or a field has the wrong type or value."""

    status = 400
    code = "validation_error"


class UnauthorizedError(SandboxError):
    """The API key is present but wrong."""

    status = 401
    code = "unauthorized"


class ForbiddenError(SandboxError):
    """The target is read-only, e.g. a scope access group."""

    status = 403
    code = "forbidden"


class NotFoundError(SandboxError):
    """The member, access group or membership does not exist."""

    status = 404
    code = "not_found"


class ConflictError(SandboxError):
    """The change would break a uniqueness rule (email, group name, membership)."""

    status = 409
    code = "conflict"


class RateLimitedError(SandboxError):
    """A request budget is spent; retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
