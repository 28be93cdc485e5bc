"""A scripted Source (the engine's side of the interface) and event builders for its tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from bridge.events import DisputeState, EntitlementState, MembershipEvent
from bridge.sources import Batch


def observed(
    email: str | None,
    subscription: str,
    state: EntitlementState = EntitlementState.ACTIVE,
    *,
    at: float = 1_700_000_000.0,
    products: tuple[str, ...] = ("price_basic",),
    customer: str | None = None,
    provider: str = "stripe",
    dispute: DisputeState | None = None,
    event_id: str | None = None,
    test_mode: bool = False,
) -> MembershipEvent:
    """A listed subscription as a source yields it (a synthetic ``list:`` id by default)."""
    return MembershipEvent(
        provider=provider,
        event_id=event_id or f"list:{subscription}:{state.value}",
        event_type="customer.subscription.listed",
        occurred_at=at,
        email=email,
        customer=customer,
        entitlement=f"{provider}:{subscription}",
        state=state,
        products=products,
        refs={"subscription": subscription},
        test_mode=test_mode,
        dispute=dispute,
    )


@dataclass
class ScriptedSource:
    """Yields the given pages; ``fail_after`` pages, raises (an interrupted listing)."""

    pages: list[list[MembershipEvent]]
    provider: str = "stripe"
    dated_by_objects: bool = False
    fail_after: int | None = None
    cursors: list[str | None] = field(default_factory=list)  # what each call was given
    since: list[float | None] = field(default_factory=list)
    known: list[list[str]] = field(default_factory=list)

    def backfill(self, cursor: str | None = None) -> Iterator[Batch]:
        self.cursors.append(cursor)
        start = json.loads(cursor)["page"] if cursor else 0
        for index in range(start, len(self.pages)):
            if self.fail_after is not None and index >= self.fail_after:
                self.fail_after = None  # fails once
                raise ConnectionError("the provider went away")
            last = index == len(self.pages) - 1
            yield Batch(tuple(self.pages[index]), None if last else json.dumps({"page": index + 1}))

    def changes(self, since: float | None, known: Iterable[str] = ()) -> Iterator[Batch]:
        self.since.append(since)
        self.known.append(list(known))
        for index, page in enumerate(self.pages):
            yield Batch(tuple(page), None if index == len(self.pages) - 1 else str(index))
