"""`bridge connect`: what each provider must send to this bridge, and the plan that gets it
there from what the provider already has. Pure: the HTTP lives in ``connect_<provider>.py``.

The events are the ones the parsers handle (``HANDLED_EVENTS`` of bridge/providers/), the
URLs the routes of bridge/web.py under the ``--url`` the operator gives. A plan creates
what is missing, updates what drifted (events, URL spelling, a disabled endpoint) and
otherwise changes nothing, so a second run is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from bridge.providers import gumroad, lemonsqueezy, stripe
from bridge.redact import redact

PROVIDERS = ("stripe", "lemonsqueezy", "gumroad")
# The variable holding the API credential each provider's registration needs.
API_KEYS = {
    "stripe": "STRIPE_API_KEY",
    "lemonsqueezy": "LEMONSQUEEZY_API_KEY",
    "gumroad": "GUMROAD_ACCESS_TOKEN",
}
# The variable the bridge reads the provider's webhook secret from.
SECRET_VARIABLES = {
    "stripe": "STRIPE_WEBHOOK_SECRET",
    "lemonsqueezy": "LEMONSQUEEZY_WEBHOOK_SECRET",
    "gumroad": "GUMROAD_WEBHOOK_TOKEN",
}
# Exactly the event types (Gumroad: resource names) each parser turns into membership events.
EVENTS: dict[str, tuple[str, ...]] = {
    "stripe": tuple(sorted(stripe.HANDLED_EVENTS)),
    "lemonsqueezy": tuple(sorted(lemonsqueezy.HANDLED_EVENTS)),
    "gumroad": tuple(sorted(gumroad.HANDLED_EVENTS)),
}
# Hosts a plain-http --url may name: the operator's own machine, for trying things out.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Action = Literal["create", "update", "nothing"]


class ConnectError(Exception):
    """A registration that cannot go on; ``exit_code`` is the command's."""

    exit_code = 1


class ConnectConfigError(ConnectError):
    """Something to fix in the command line or the environment (exit 2)."""

    exit_code = 2


class KeyRefusedError(ConnectError):
    """The provider answered 401 (or 403) to the API key."""


class UnreachableError(ConnectError):
    """The provider's API did not answer (DNS, refused connection, timeout, TLS)."""


@dataclass(frozen=True)
class Endpoint:
    """A webhook registration as the provider reports it."""

    id: str
    url: str
    events: tuple[str, ...]
    enabled: bool = True


@dataclass(frozen=True)
class Plan:
    """What one registration needs: ``create``, ``update`` (``changes`` says what), or
    ``nothing``; ``endpoint_id`` names the existing one, if any."""

    action: Action
    url: str
    events: tuple[str, ...]
    endpoint_id: str | None = None
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What `bridge connect` did (or, dry run, would do) for one provider."""

    provider: str
    url: str  # as shown: a Gumroad token is masked
    dry_run: bool
    plans: tuple[Plan, ...]
    # A signing secret created by this run, shown once (never one read from the settings).
    new_secret: str | None = None
    notes: tuple[str, ...] = field(default=())
    # Where the registration lives, when the key reaches several places ("store 12").
    scope: str | None = None

    @property
    def changed(self) -> bool:
        """Whether anything was (or, dry run, would be) written at the provider."""
        return any(plan.action != "nothing" for plan in self.plans)


def base_url(value: str) -> str:
    """The bridge's public base URL from ``--url``: https, or http on localhost only."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConnectConfigError(f"--url {text!r} is not a URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ConnectConfigError(
            "--url must be the bridge's public URL, e.g. https://bridge.example.com"
        )
    if parts.scheme == "http" and host not in LOCAL_HOSTS:
        raise ConnectConfigError(
            f"--url must use https (plain http only for {' or '.join(sorted(LOCAL_HOSTS))}): "
            "providers send payment data to it"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConnectConfigError("--url takes no query, fragment or credentials")
    if "/webhooks/" in f"{parts.path}/":
        raise ConnectConfigError(
            "--url is the bridge's base URL (e.g. https://bridge.example.com), not a webhook path"
        )
    netloc = host if port in (None, _DEFAULT_PORTS[parts.scheme]) else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def webhook_url(provider: str, base: str, gumroad_token: str | None = None) -> str:
    """The URL the provider posts to: the bridge's route under ``base``."""
    if provider == "gumroad":
        if not gumroad_token:
            raise ConnectConfigError(
                "set GUMROAD_WEBHOOK_TOKEN first (the secret path segment of the ping URL), "
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return f"{base}/webhooks/gumroad/{gumroad_token}"
    return f"{base}/webhooks/{provider}"


def shown(url: str) -> str:
    """A URL as it may be printed: the Gumroad token masked."""
    return redact(url)


def same_url(one: str, other: str) -> bool:
    """Whether two URLs name the same endpoint (scheme and host case, default port and a
    trailing slash aside)."""
    return _canonical(one) == _canonical(other)


def plan_endpoint(existing: Iterable[Endpoint], url: str, events: Sequence[str]) -> Plan:
    """Create, update or leave the registration of ``url`` among ``existing`` so that it
    is enabled, posts to exactly ``url`` and subscribes exactly ``events``."""
    wanted = tuple(sorted(set(events)))
    found = next((e for e in existing if same_url(e.url, url)), None)
    if found is None:
        return Plan("create", url, wanted)
    changes: list[str] = []
    added = sorted(set(wanted) - set(found.events))
    removed = sorted(set(found.events) - set(wanted))
    if added or removed:
        changes.append(
            "events " + " ".join([*(f"+{e}" for e in added), *(f"-{e}" for e in removed)])
        )
    if found.url != url:
        changes.append("url")
    if not found.enabled:
        changes.append("enable")
    action: Action = "update" if changes else "nothing"
    return Plan(action, url, wanted, found.id, tuple(changes))


def plan_resources(existing: Mapping[str, Sequence[Endpoint]], url: str) -> tuple[Plan, ...]:
    """Gumroad: one plan per handled resource, ``create`` where no subscription of it posts
    to ``url`` (a subscription cannot be edited, only added or removed)."""
    plans: list[Plan] = []
    for resource in EVENTS["gumroad"]:
        found = next((e for e in existing.get(resource, ()) if same_url(e.url, url)), None)
        if found is None:
            plans.append(Plan("create", url, (resource,)))
        else:
            plans.append(Plan("nothing", url, (resource,), found.id))
    return tuple(plans)


def stale_gumroad(existing: Mapping[str, Sequence[Endpoint]], url: str) -> tuple[str, ...]:
    """Resources that also post to this bridge's Gumroad route with another token (an old
    one: those pings are refused), for a note; never the token itself."""
    route = _canonical(url).rsplit("/", 1)[0] + "/"
    return tuple(
        sorted(
            resource
            for resource, found in existing.items()
            if any(_canonical(e.url).startswith(route) and not same_url(e.url, url) for e in found)
        )
    )


def _canonical(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
