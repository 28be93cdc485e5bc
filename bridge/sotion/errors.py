"""Typed errors for the Sotion API boundary.

Every failure of a Sotion call ends up as one of these, built in exactly one place
(:func:`bridge.sotion.transport.error_from_response` and ``error_from_exception``).
Whether a caller may retry is a property of the error (``retryable``), so the retry
policy reads it instead of guessing from status codes.
"""

from __future__ import annotations

import time

# How much of an error body is kept on the error (enough to diagnose, never a whole page).
BODY_EXCERPT_CHARS = 300


class SotionError(Exception):
    """Base class of every error raised by the Sotion client."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        code: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id
        self.code = code
        self.body_excerpt = (body or "")[:BODY_EXCERPT_CHARS]

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class PermanentError(SotionError):
    """A request Sotion will never accept as sent (a 4xx other than 408/409/429)."""


class NotFoundError(PermanentError):
    """The member, group or route does not exist (404)."""


class ConflictError(PermanentError):
    """The change collides with existing data, e.g. a duplicate email (409)."""


class AuthError(PermanentError):
    """The API key is missing, wrong, revoked or not allowed to do this (401)."""


class ForbiddenError(PermanentError):
    """The operation is not allowed on this object, e.g. a scope group (403)."""


class UnsupportedOperationError(PermanentError):
    """The configured API flavour (the legacy API) has no such operation."""


class TransientError(SotionError):
    """A failure that may pass: timeouts, connection errors, 5xx, malformed 2xx bodies."""

    retryable = True


class RateLimitedError(TransientError):
    """Sotion answered 429; ``reset_at`` says when the window reopens."""

    def __init__(
        self,
        message: str,
        *,
        reset_at: float | None = None,
        retry_after: float | None = None,
        status: int | None = 429,
        request_id: str | None = None,
        code: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id, code=code, body=body)
        self.reset_at = reset_at
        self.retry_after = retry_after

    def wait_seconds(self, now: float | None = None, default: float = 1.0) -> float:
        """Seconds to wait before the next call: Retry-After, else until the reset time."""
        if self.retry_after is not None:
            return max(self.retry_after, 0.0)
        if self.reset_at is not None:
            current = time.time() if now is None else now
            return max(self.reset_at - current, 0.0)
        return default
