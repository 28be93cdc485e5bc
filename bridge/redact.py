"""Redaction: what may never reach a log line or a stored failure is masked here, once.

Every log handler of the bridge (its own, RQ's through the root logger, gunicorn's
through ``bridge/gunicorn_conf.py``) formats through :class:`RedactingFormatter`, and the
worker passes every failure it stores through :func:`redact`. Two kinds of things go:
- the configured secrets, by value (``register_secrets`` at start-up): whatever text
  they appear in, a URL, a traceback, an error body;
- shapes that are secret or personal wherever they come from: email addresses (masked
  to ``a***@example.com``), the token segment of Gumroad ping URLs (any case), ``email=``
  query values, ``whsec_``/``so_``/Stripe keys, Bearer credentials, and the key the
  legacy Sotion API puts in its host name.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

MASK = "***"
# Shorter values are not registered as secrets: masking them would garble ordinary text.
MIN_SECRET_LENGTH = 6

_EMAIL = re.compile(r"([A-Za-z0-9._%+\-]{1,64})@([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+)")
_PATTERNS = [
    # The Gumroad ping URL's token, in any case, with any number of slashes.
    (re.compile(r"(?i)(webhooks/+gumroad/+)[^\s/?#\"'<>]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)(webhooks%2Fgumroad%2F)[^\s/?#&\"'<>]+"), rf"\1{MASK}"),
    # Query values that carry an email (Sotion's GET /members?email=...).
    (re.compile(r"(?i)((?:^|[?&])email=)[^&\s\"'#]+"), rf"\1{MASK}"),
    (re.compile(r"whsec_[A-Za-z0-9+/=_\-]+"), f"whsec_{MASK}"),
    (re.compile(r"\bso_[A-Za-z0-9_\-]{3,}"), f"so_{MASK}"),
    (re.compile(r"\b([sr]k_(?:live|test)_)[A-Za-z0-9]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), rf"\1{MASK}"),
    # The legacy Sotion API's key is the first label of its host name.
    (re.compile(r"(?i)[A-Za-z0-9\-]{8,}(\.api\.sotion\.app)"), rf"{MASK}\1"),
]

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these exact values wherever they appear (called once settings are read)."""
    global _secrets
    found = {value for value in values if value and len(value) >= MIN_SECRET_LENGTH}
    with _lock:
        # Longest first, so a secret containing another is masked whole.
        _secrets = tuple(sorted(set(_secrets) | found, key=len, reverse=True))


def mask_email(email: str | None) -> str:
    """``a***@example.com``: enough to correlate log lines, not enough to identify."""
    if not email:
        return "-"
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        return MASK
    return f"{local[:1]}{MASK}@{domain}"


def redact(text: str) -> str:
    """``text`` with every registered secret and secret or personal shape masked."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _EMAIL.sub(lambda match: f"{match.group(1)[:1]}{MASK}@{match.group(2)}", text)


# The shortest personal value masked by redact_values.
MIN_PRIVATE = 3


def redact_values(text: str, values: Iterable[str | None]) -> str:
    """:func:`redact`, and these values masked too wherever they stand as whole words
    (the personal fields of one payload: a display name; emails are masked as always).
    Values shorter than ``MIN_PRIVATE`` are left: "Jo" would turn every "Job" into "***b"."""
    text = redact(text)
    found = {v.strip() for v in values if v and len(v.strip()) >= MIN_PRIVATE and "@" not in v}
    for value in sorted(found, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", MASK, text)
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, arguments, traceback) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then mask."""
        return redact(super().format(record))
