"""`bridge connect gumroad`: one resource subscription per resource the bridge handles.

gumroad.com/api "Resource subscriptions" (antiwork/gumroad,
app/controllers/api/v2/resource_subscriptions_controller.rb): ``GET
/v2/resource_subscriptions?resource_name=`` lists the seller's live ones for one resource,
``PUT /v2/resource_subscriptions`` (``resource_name``, ``post_url``) adds one; both need the
``view_sales`` scope and answer HTTP 200 with ``success: false`` when they refuse. A PUT
always adds another subscription, so the ones already posting to this bridge are kept.

The ping URL carries GUMROAD_WEBHOOK_TOKEN: every URL shown or raised here is masked.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import requests

from bridge.connect import (
    EVENTS,
    LOCAL_HOSTS,
    ConnectConfigError,
    ConnectError,
    Endpoint,
    KeyRefusedError,
    Outcome,
    Plan,
    UnreachableError,
    plan_resources,
    stale_gumroad,
    webhook_url,
)
from bridge.gumroad_api import API_BASE, DEFAULT_TIMEOUT
from bridge.redact import redact

PATH = "/v2/resource_subscriptions"
# Doorkeeper answers these with an empty body: say what they mean.
_REFUSED = {
    401: "the provider refused the key (check GUMROAD_ACCESS_TOKEN)",
    403: "the provider refused the key: GUMROAD_ACCESS_TOKEN lacks the view_sales scope",
}


def connect(
    access_token: str,
    base: str,
    *,
    webhook_token: str | None,
    api_base: str = API_BASE,
    dry_run: bool = False,
    session: requests.Session | None = None,
) -> Outcome:
    """Subscribe ``base``'s Gumroad route (with the webhook token) to every resource the
    bridge handles that does not post there yet."""
    url = webhook_url("gumroad", base, webhook_token)
    if urlsplit(url).hostname in LOCAL_HOSTS:
        # ResourceSubscription.valid_post_url? refuses them: say so before any call.
        raise ConnectConfigError(
            "Gumroad posts only to public addresses: --url must be the bridge's public URL"
        )
    api = _API(access_token, api_base, session or requests.Session())
    existing = {resource: api.subscriptions(resource) for resource in EVENTS["gumroad"]}
    plans = list(plan_resources(existing, url))
    if not dry_run:
        for index, plan in enumerate(plans):
            if plan.action == "create":
                try:
                    made = api.subscribe(plan.events[0], url)
                except ConnectError as exc:
                    done = sum(1 for p in plans[:index] if p.action == "create")
                    more = f" ({done} added before it: run again to finish)" if done else ""
                    raise type(exc)(f"{exc}{more}") from exc
                plans[index] = Plan("create", url, plan.events, made)
    notes: list[str] = []
    stale = stale_gumroad(existing, url)
    if stale:
        notes.append(
            f"{', '.join(stale)}: also subscribed with another token (an old "
            "GUMROAD_WEBHOOK_TOKEN? those pings are refused): remove them in Gumroad's settings"
        )
    return Outcome("gumroad", redact(url), dry_run, tuple(plans), notes=tuple(notes))


class _API:
    """The two calls a registration makes, each failure one ConnectError line."""

    def __init__(self, token: str, api_base: str, session: requests.Session) -> None:
        # requests quotes a malformed header value in its error: refuse it unnamed first.
        if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
            raise ConnectConfigError("GUMROAD_ACCESS_TOKEN is not a printable ASCII token")
        self._token = token
        self._base = api_base.rstrip("/")
        self._session = session

    def subscriptions(self, resource: str) -> list[Endpoint]:
        """The live subscriptions of one resource."""
        body = self._send("GET", {"resource_name": resource}, f"reading {resource}")
        found = body.get("resource_subscriptions")
        if not isinstance(found, list):
            raise ConnectError(f"Gumroad: reading {resource} returned no resource_subscriptions")
        return [
            Endpoint(str(item.get("id")), str(item.get("post_url") or ""), (resource,))
            for item in found
            if isinstance(item, dict)
        ]

    def subscribe(self, resource: str, url: str) -> str:
        """Add a subscription of ``resource`` posting to ``url``; its id."""
        body = self._send("PUT", {"resource_name": resource, "post_url": url}, f"adding {resource}")
        made = body.get("resource_subscription")
        return str(made.get("id")) if isinstance(made, dict) else "-"

    def _send(self, method: str, fields: dict[str, str], subject: str) -> dict[str, Any]:
        # The token as a Bearer header (Doorkeeper takes it so), never in a URL.
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        reading = method == "GET"
        try:
            response = self._session.request(
                method,
                self._base + PATH,
                headers=headers,
                timeout=DEFAULT_TIMEOUT,
                params=fields if reading else None,
                data=None if reading else fields,
            )
        except requests.RequestException as exc:
            raise UnreachableError(
                f"Gumroad: the API is unreachable ({type(exc).__name__}; check the network, "
                "or GUMROAD_API_BASE)"
            ) from exc
        if response.status_code in _REFUSED:
            raise KeyRefusedError(f"Gumroad: {_REFUSED[response.status_code]}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict):
            raise ConnectError(f"Gumroad: {subject}: status={response.status_code}")
        if body.get("success") is not True:
            message = body.get("message") or "refused"
            # "Invalid post URL '<the url>'" quotes the token: masked.
            detail = redact(str(message)).replace(self._token, "***")[:200]
            raise ConnectError(f"Gumroad: {subject}: {detail}")
        return body
