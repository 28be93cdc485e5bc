"""Errors of the bridge: configuration errors, and the web side's request errors that one
handler in :mod:`bridge.web` maps to JSON responses."""

from __future__ import annotations


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class BridgeError(Exception):
    """Base of the errors a webhook request can end in; carries the HTTP status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SignatureError(BridgeError):
    """The signature (or token) is missing, malformed, stale or wrong."""

    status = 400
    code = "invalid_signature"


class PayloadError(BridgeError):
    """The body is signed correctly but is not a payload we can read."""

    status = 400
    code = "invalid_payload"


class ProviderDisabledError(BridgeError):
    """The provider has no secret configured: its endpoint does not exist."""

    status = 404
    code = "not_found"


class QueueUnavailableError(BridgeError):
    """Redis could not store the event; the provider should retry."""

    status = 503
    code = "queue_unavailable"


class ForbiddenError(BridgeError):
    """Authentic in form but not for us, e.g. a Gumroad ping for another seller."""

    status = 403
    code = "forbidden"


class BodyError(BridgeError):
    """The request body could not be read: its framing is malformed or it was cut off."""

    status = 400
    code = "malformed_body"
