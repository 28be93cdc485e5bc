"""Builders for the end-to-end tests of `bridge backfill` and `bridge reconcile`.

The commands run in-process through click's CliRunner, configured by the environment
only (as an operator runs them), against the providers' stand-ins on real sockets and the
Sotion sandbox. :class:`Bridge` runs one command; :class:`Outcome` reads what it printed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from click.testing import CliRunner, Result
from flask import Flask, Response, request

from bridge.cli import main
from bridge.sotion import Member, SotionClient
from tests.conftest import SANDBOX_KEY
from tests.standins.gumroad import TOKEN as GUMROAD_TOKEN
from tests.standins.server import StandInServer

# Keys shaped like real ones (placeholders are refused by bridge/settings.py), distinctive
# enough that a leak into the output is easy to spot.
LEMONSQUEEZY_KEY = "lsk_live_7Qm2vX9pL4sN8rT1wZ6y"
STRIPE_KEY = "sk_test_standin4eC39HqLyjWDarjtT1zdp7dc"
LEMONSQUEEZY_SECRET = "lswh_9d2f7a1c4e8b6h3k"
# Every variable the bridge reads starts so: each command sees only what a test sets.
_BRIDGE_PREFIXES = ("SOTION_", "STRIPE_", "LEMONSQUEEZY_", "GUMROAD_", "BRIDGE_", "REDIS_")
# Where a member row of the commands' "Sotion" table is: "│ a***@x.example │ patch:… │".
_ROW = re.compile(r"^│\s*(?P<email>\S+@\S+)\s*│\s*(?P<actions>.*?)\s*│\s*$")
_SUMMARY = re.compile(
    r"(?P<members>[\d,]+) member\(s\) compared, (?P<changed>[\d,]+) (?:changed|would change)"
    r"(?:, (?P<adopted>\d+) paid-by-hand adopted)?, (?P<failed>\d+) failed; "
    r"Sotion calls: (?P<calls>.*?); [\d.]+ s"
)


def lemonsqueezy_env(server: StandInServer) -> dict[str, str]:
    """The variables that point the bridge's Lemon Squeezy reads at the stand-in."""
    return {"LEMONSQUEEZY_API_KEY": LEMONSQUEEZY_KEY, "LEMONSQUEEZY_API_BASE": server.url}


def gumroad_env(server: StandInServer) -> dict[str, str]:
    """The variables that point the bridge's Gumroad reads at the stand-in."""
    return {"GUMROAD_ACCESS_TOKEN": GUMROAD_TOKEN, "GUMROAD_API_BASE": server.url}


def stripe_env(server: StandInServer) -> dict[str, str]:
    """The variables that point the bridge's Stripe reads at the stand-in (test mode)."""
    return {
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": server.url,
        "BRIDGE_ACCEPT_TEST_EVENTS": "true",
    }


@dataclass
class Outcome:
    """One command's exit code and what it printed, read back."""

    result: Result

    @property
    def code(self) -> int:
        return self.result.exit_code

    @property
    def output(self) -> str:
        return self.result.output

    def changes(self) -> dict[str, str]:
        """The Sotion table: masked email -> the actions, for every member row."""
        rows: dict[str, str] = {}
        for line in self.output.splitlines():
            match = _ROW.match(line)
            if match is not None:
                assert match["email"] not in rows, f"two rows for {match['email']}:\n{self.output}"
                rows[match["email"]] = match["actions"]
        return rows

    def summary(self) -> dict[str, Any]:
        """The last line's counts: members compared, changed, failed, Sotion calls by kind."""
        match = _SUMMARY.search(self.output)
        assert match is not None, f"no summary line in:\n{self.output}"
        calls: dict[str, int] = {}
        if match["calls"] != "none":
            for part in match["calls"].split(", "):
                kind, _, count = part.rpartition(" ")
                calls[kind] = int(count)
        return {
            "members": int(match["members"].replace(",", "")),
            "changed": int(match["changed"].replace(",", "")),
            "adopted": int(match["adopted"] or 0),
            "failed": int(match["failed"]),
            "calls": calls,
        }

    def provider(self, name: str) -> dict[str, str]:
        """The providers table's row of ``name``: its columns by header."""
        headers = ("provider", "objects read", "ledger changes", "API calls", "skipped")
        for line in self.output.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
            if len(cells) == len(headers) and cells[0].split(" ")[0] == name:
                return dict(zip(headers, cells, strict=True))
        raise AssertionError(f"no row for {name} in:\n{self.output}")

    def count(self, name: str, column: str) -> int:
        """A numeric column of a provider's row."""
        return int(self.provider(name)[column].replace(",", ""))


@dataclass
class Bridge:
    """Runs `bridge ...` in-process with exactly this environment (nothing inherited)."""

    env: dict[str, str]
    runs: list[Outcome] = field(default_factory=list)

    def run(self, *args: str, **overrides: str | None) -> Outcome:
        """One command; ``overrides`` set (or, None, unset) variables for this run only."""
        cleared: dict[str, str | None] = {
            name: None for name in os.environ if name.startswith(_BRIDGE_PREFIXES)
        }
        env = {**cleared, **self.env, **overrides}
        # The commands build their own runtime (workers.runtime.build): nothing is cached
        # between two runs, and the one jobs use (the `runtime` fixture's) is left alone.
        result = CliRunner().invoke(main, list(args), env=env)
        outcome = Outcome(result)
        self.runs.append(outcome)
        return outcome


def base_env(redis_url: str, sotion_url: str) -> dict[str, str]:
    """Redis and the Sotion sandbox, as the `settings` fixture wires them."""
    return {"REDIS_URL": redis_url, "SOTION_API_KEY": SANDBOX_KEY, "SOTION_API_URL": sotion_url}


class Clock:
    """A provider's clock: the real time, moved on by :meth:`advance` (changes made "later"),
    or held at one moment by :meth:`hold` (changes made within one second)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.held: float | None = None

    def __call__(self) -> float:
        return self.held if self.held is not None else time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def hold(self, moment: float) -> None:
        self.held = moment


class Outage:
    """Makes a stand-in answer 500 to the requests ``when`` picks, while switched on.

    Registered as the app's last ``before_request``: the stand-in's own gate (rate limit,
    auth) runs first and its call log records the 500, as it would a real one.
    """

    def __init__(self, app: Flask, when: Callable[[str, dict[str, str]], bool]) -> None:
        self.when = when
        self.on = False
        self.failed = 0
        app.before_request(self._maybe_fail)

    def _maybe_fail(self) -> Response | None:
        if self.on and self.when(request.path, request.args.to_dict()):
            self.failed += 1
            return Response('{"errors": [{"status": "500"}]}', status=500)
        return None

    @contextmanager
    def during(self) -> Iterator[Outage]:
        self.on = True
        try:
            yield self
        finally:
            self.on = False


def list_calls(calls: list[Any], path: str) -> list[tuple[int, int]]:
    """(page number, status) of every Lemon Squeezy list call to ``path``, in order."""
    return [(int(c.query.get("page[number]", "1")), c.status) for c in calls if c.path == path]


def find(sotion_api: SotionClient, email: str) -> Member:
    member = sotion_api.find_member_by_email(email)
    assert member is not None, f"no Sotion member {email}"
    return member
