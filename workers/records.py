"""How the worker's Redis hashes read and write: a ledger's entitlements, and what the
bridge knows about a member (``MemberRecord``). Pure: ``workers/store.py`` does the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rq.utils import as_text

from bridge.ledger import Entitlement
from bridge.membership import MemberSnapshot


@dataclass(frozen=True)
class MemberRecord:
    """What the bridge knows about one member, and which of its fields the bridge set."""

    id: str | None = None  # the Sotion id, once known
    bridge_blocked: bool = False  # the member's block was made by the bridge
    bridge_paid: bool = False  # the member's paid=true was made by the bridge
    groups: frozenset[str] = frozenset()  # access groups the bridge added
    # The member as the bridge last read or wrote it (None: not known; read before planning).
    seen: MemberSnapshot | None = None
    # How many times the record was written (a listing stores what it saw only if no job
    # wrote the record since it was read); not part of what the record says.
    rev: int = field(default=0, compare=False)


def ledger_from_redis(raw: Mapping[Any, Any]) -> dict[str, Entitlement]:
    return {as_text(key): Entitlement.from_json(json.loads(value)) for key, value in raw.items()}


def seen_json(seen: MemberSnapshot) -> str:
    return json.dumps({"paid": seen.paid, "blocked": seen.blocked, "groups": sorted(seen.groups)})


def seen_from_redis(raw: bytes | None) -> MemberSnapshot | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return MemberSnapshot(
        paid=bool(data["paid"]), blocked=bool(data["blocked"]), groups=frozenset(data["groups"])
    )


def member_record_from_redis(raw: Mapping[Any, Any]) -> MemberRecord:
    if not raw:
        return MemberRecord()
    member_id = raw.get(b"id")
    groups = json.loads(raw[b"groups"]) if b"groups" in raw else []
    return MemberRecord(
        id=as_text(member_id) if member_id else None,
        bridge_blocked=raw.get(b"bridge_blocked") == b"1",
        # Records written before `paid` was tracked by origin: the bridge set it then.
        bridge_paid=raw.get(b"bridge_paid", b"1") == b"1",
        groups=frozenset(groups),
        # What was seen belongs to the id it was seen under.
        seen=seen_from_redis(raw.get(b"seen")) if member_id else None,
        rev=int(raw.get(b"rev", 0)),
    )
