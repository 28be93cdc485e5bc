"""The ``--json`` output of the report commands (``bridge member``, ``bridge status``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def dumps(values: Any) -> str:
    """``values`` (a report's ``dataclasses.asdict``) as indented JSON, times in ISO 8601."""
    return json.dumps(values, indent=2, default=_iso)


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
