"""Building Gumroad pings for tests, from the shared fixtures or by hand.

Mirrors ``tests/stripe_events.py``. Gumroad signs nothing (the secret is the ping URL's
last segment), so there is no ``sign``: :func:`fixture` loads an example ping as a dict,
:func:`purchase_ping` sets the fields the bridge reads for a purchase ping (``sale``,
``refund``, ``dispute``, ``dispute_won``), and :func:`encode` form-encodes it the way
Gumroad's HTTParty posts it (``card[visual]=...``, ``purchase_ids[]=...``).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Copies of shared/fixtures/gumroad (provenance in tests/fixtures/SOURCES.md): one
# application/x-www-form-urlencoded body per file.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gumroad"
FORM = "application/x-www-form-urlencoded"
# The seller every fixture belongs to (GUMROAD_SELLER_ID in tests that check it).
SELLER = "kL0paVL2SdmJSYsNs-OCMg=="

JSONObject = dict[str, Any]

_NESTED = re.compile(r"([^\[\]]+)\[([^\[\]]*)\]")


def fixture(name: str) -> JSONObject:
    """A fixture ping (tests/fixtures/gumroad/<name>.form) as a dict, one level nested."""
    text = (FIXTURES / f"{name}.form").read_text().rstrip("\n")
    data: JSONObject = {}
    for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
        nested = _NESTED.fullmatch(key)
        if nested is None:
            data[key] = value
        elif nested.group(2) == "":
            data.setdefault(nested.group(1), []).append(value)
        else:
            data.setdefault(nested.group(1), {})[nested.group(2)] = value
    return data


def timestamp(unix: float) -> str:
    """A Unix time as Gumroad writes ``sale_timestamp``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def purchase_ping(
    resource: str = "sale",
    *,
    sale_id: str,
    email: str,
    sale_timestamp: float,
    purchaser_id: str | None = None,
    full_name: str | None = None,
    **changes: Any,
) -> JSONObject:
    """A ping about a one-time sale: ``sale``, ``refund`` (full), ``dispute`` or ``dispute_won``.

    ``changes`` set further fields (``refunded="false"`` for a partial refund,
    ``retry_count="1"`` for Gumroad's retry of the same ping).
    """
    base = {"sale": "sale_one_time", "refund": "refund", "dispute": "dispute"}
    data = fixture(base.get(resource, "dispute"))
    data.update(
        resource_name=resource,
        sale_id=sale_id,
        email=email,
        sale_timestamp=timestamp(sale_timestamp),
    )
    if resource == "dispute_won":
        data["dispute_won"] = "true"
    if purchaser_id is not None:
        data["purchaser_id"] = purchaser_id
    if full_name is not None:
        data["full_name"] = full_name
    data.update({key: str(value) for key, value in changes.items()})
    return data


def _pairs(data: JSONObject, prefix: str = "") -> Iterator[tuple[str, str]]:
    """HTTParty's flattening: ``a[b]=x`` for hashes, ``a[]=x`` for arrays."""
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            yield from _pairs(value, name)
        elif isinstance(value, list):
            for item in value:
                yield f"{name}[]", str(item)
        else:
            yield name, str(value)


def encode(data: JSONObject) -> bytes:
    """The raw form body Gumroad would post for ``data``."""
    return urllib.parse.urlencode(list(_pairs(data)), quote_via=urllib.parse.quote).encode()
