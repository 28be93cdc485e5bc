"""Provider API calls of a backfill: pages read against the fewest the APIs allow.

Run: python -m bench.provider_pages [--objects 10000] [--gumroad-sales 2000]

Each provider's stand-in (tests/standins, faithful to the API docs) is seeded with
``--objects`` purchases (Gumroad: ``--gumroad-sales``, 10 a page) and its source's
backfill is run with the pacing's waits counted instead of slept. Printed side by side:
the calls made, the fewest the documented page sizes allow, and the time the client's
pace takes at least (the documented rate limit, or our choice under it). Then one Lemon
Squeezy run paced for real against a stand-in enforcing 300 calls a minute counts the
429s it drew (goal: none).
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime, timedelta

from bridge.gumroad_api import GumroadAPI
from bridge.lemonsqueezy_api import LemonSqueezyAPI
from bridge.sources.gumroad import GumroadSource
from bridge.sources.lemonsqueezy import LemonSqueezySource
from bridge.sources.pacing import Pacer
from bridge.sources.stripe import StripeSource
from bridge.stripe_api import StripeAPI
from tests.standins.gumroad import TOKEN, GumroadStandIn
from tests.standins.lemonsqueezy import LemonSqueezyStandIn
from tests.standins.server import StandInServer
from tests.standins.stripe import StripeStandIn

LS_KEY = "ls_bench_key_0123456789abcdef"


class _Counted:
    """A pacing clock and sleep: the waits are added up, and the clock moves by them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, seconds: float) -> None:
        self.seconds += seconds

    def clock(self) -> float:
        return time.monotonic() + self.seconds

    def pacer(self, per_minute: float) -> Pacer:
        return Pacer(per_minute, clock=self.clock, sleep=self)


def _drain(source: StripeSource | LemonSqueezySource | GumroadSource) -> tuple[int, int]:
    events = calls = 0
    for batch in source.backfill():
        events += len(batch.events)
        calls += batch.calls
    return events, calls


def _row(name: str, objects: int, calls: int, fewest: int, paced: float) -> None:
    print(
        f"{name:14s} {objects:8,d} {calls:7,d} {fewest:7,d} {calls / fewest:6.2f}x {paced:9.1f} s"
    )


def _stripe(count: int) -> None:
    standin = StripeStandIn()
    for index in range(count):
        customer = standin.add_customer(f"buyer{index}@example.com")
        standin.add_subscription(customer)
    waits = _Counted()
    with StandInServer(standin.app) as server:
        api = StripeAPI(standin.api_key, api_base=server.url, pacer=waits.pacer(600))
        _, calls = _drain(StripeSource(api))
    # Subscriptions, then the (empty) checkout and dispute lists: one page each.
    _row("stripe", count, calls, math.ceil(count / 100) + 2, waits.seconds)


def _lemonsqueezy_standin(count: int, per_minute: int) -> LemonSqueezyStandIn:
    """A stand-in enforcing ``per_minute`` with ``count`` subscriptions (and their orders)."""
    standin = LemonSqueezyStandIn(LS_KEY, per_minute=per_minute)
    variant = standin.add_variant()
    for index in range(count):
        standin.add_subscription(f"buyer{index}@example.com", variant_id=variant)
    return standin


def _lemonsqueezy(count: int) -> None:
    standin = _lemonsqueezy_standin(count, per_minute=1_000_000)
    waits = _Counted()
    with StandInServer(standin.app) as server:
        api = LemonSqueezyAPI(LS_KEY, api_base=server.url, pacer=waits.pacer(300))
        _, calls = _drain(LemonSqueezySource(api))
    # Each subscription comes with its first order: two lists of `count`.
    _row("lemonsqueezy", count * 2, calls, 2 * math.ceil(count / 100), waits.seconds)


def _gumroad(count: int) -> None:
    standin = GumroadStandIn()
    product = standin.add_product("Course")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for index in range(count):
        standin.sell(product, f"buyer{index}@example.com", at=start + timedelta(minutes=index))
    waits = _Counted()
    with StandInServer(standin.app) as server:
        api = GumroadAPI(TOKEN, api_base=server.url, pacer=waits.pacer(60))
        _, calls = _drain(GumroadSource(api))
    # The sales (10 a page) and the products list (for permalinks).
    _row("gumroad", count, calls, math.ceil(count / 10) + 1, waits.seconds)


def _paced_lemonsqueezy(count: int) -> None:
    standin = _lemonsqueezy_standin(count, per_minute=300)
    with StandInServer(standin.app) as server:
        api = LemonSqueezyAPI(LS_KEY, api_base=server.url)
        started = time.perf_counter()
        _, calls = _drain(LemonSqueezySource(api))
        elapsed = time.perf_counter() - started
    refused = sum(1 for call in standin.calls if call.status == 429)
    print(
        f"lemonsqueezy paced for real against 300/min: {calls} calls in {elapsed:.1f} s, "
        f"{refused} answered 429"
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--gumroad-sales", type=int, default=2_000)
    parser.add_argument("--paced", type=int, default=1_000, help="Lemon Squeezy subscriptions")
    args = parser.parse_args()
    header = ("provider", "objects", "calls", "fewest", "ratio", "paced")
    print("{:14s} {:>8s} {:>7s} {:>7s} {:>7s} {:>11s}".format(*header))
    _stripe(args.objects)
    _lemonsqueezy(args.objects)
    _gumroad(args.gumroad_sales)
    _paced_lemonsqueezy(args.paced)


if __name__ == "__main__":
    main()
