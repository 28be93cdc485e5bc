"""Building and signing Stripe events for tests, from the shared fixtures or by hand."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

# Copies of shared/fixtures/stripe (provenance in tests/fixtures/SOURCES.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe"


def fixture(name: str) -> dict[str, Any]:
    """A Stripe example payload (tests/fixtures/stripe/<name>.json)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def event(
    kind: str,
    obj: dict[str, Any],
    *,
    created: int | None = None,
    event_id: str | None = None,
    livemode: bool = True,
) -> dict[str, Any]:
    """A Stripe event envelope around ``obj``."""
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2025-06-30.basil",
        "created": created if created is not None else int(time.time()),
        "type": kind,
        "livemode": livemode,
        "data": {"object": copy.deepcopy(obj)},
    }


def sign(body: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``body`` (what Stripe computes)."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def encode(payload: dict[str, Any]) -> bytes:
    """The raw body Stripe would send."""
    return json.dumps(payload).encode()
