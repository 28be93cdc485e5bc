"""Reading what the providers say now: their APIs' lists, as MembershipEvents.

A source lists one provider's current purchases (``backfill``) or what changed since a
moment (``changes``) and yields them in batches of observations: MembershipEvents built
from the API's objects, dated on the same clock as that provider's webhooks where the
object carries one, else by when the page was requested. The reconcile engine
(``workers/reconcile.py``) merges them into the ledger with the webhook path's rules.

Sources only read. They pace themselves to the provider's rate limit and back off on 429,
and never log a key, an email or a payload.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from bridge.events import MembershipEvent

# The event ids a source makes up for a listed object no webhook carries: merged on their
# own merits and never deduplicated (workers/observe.py), so a state that comes back is
# seen again.
SYNTHETIC_PREFIX = "list:"


class CursorError(ValueError):
    """A saved backfill cursor this source did not make (``bridge backfill --restart``)."""


@dataclass(frozen=True)
class Batch:
    """One page's worth of observations, and where to resume after it."""

    events: tuple[MembershipEvent, ...]
    # Opaque text to pass back as ``cursor`` to continue after this batch; None once the
    # listing is complete.
    cursor: str | None
    # Provider API calls this batch took (429s and retries included).
    calls: int = 1


class Source(Protocol):
    """What the reconcile engine needs of one provider."""

    provider: str
    # True when events are dated by the objects' own clock (the webhooks' too), not by
    # the read: the engine then leaves purchases made minutes ago to their webhooks.
    dated_by_objects: bool

    def backfill(self, cursor: str | None = None) -> Iterator[Batch]:
        """Every current and past purchase, from ``cursor`` (None: the start)."""
        ...

    def changes(self, since: float | None, known: Iterable[str] = ()) -> Iterator[Batch]:
        """What changed since the Unix time ``since`` (None: everything, as backfill).

        ``known`` are entitlement keys (``gumroad:sub_X``, ``gumroad:sale_Y`` ...) the
        ledger holds as granting access: a provider whose lists cannot show their changes
        re-reads them one by one.
        """
        ...
