"""`bridge connect stripe`: the webhook endpoint, through the stripe SDK.

docs.stripe.com/api/webhook_endpoints: list (``limit`` up to 100, ``starting_after``),
create (``url``, ``enabled_events``; the answer, and only that one, carries the signing
``secret``) and update (``url``, ``enabled_events``, ``disabled``). The endpoint gets the
account's default API version, as one made in the Dashboard does.
"""

from __future__ import annotations

from typing import Any

import stripe

from bridge.connect import (
    EVENTS,
    ConnectError,
    Endpoint,
    KeyRefusedError,
    Outcome,
    Plan,
    UnreachableError,
    plan_endpoint,
    webhook_url,
)
from bridge.redact import redact

# The largest page the list returns.
PAGE_SIZE = 100
# (connect, read) seconds for each call; a registration has no reason to wait long.
TIMEOUT = (3.05, 20.0)
# Shown on the endpoint in the Dashboard.
DESCRIPTION = "Sotion bridge (bridge connect stripe)"


def connect(
    api_key: str,
    base: str,
    *,
    api_base: str | None = None,
    dry_run: bool = False,
    configured_secret: bool = False,
) -> Outcome:
    """Make the endpoint of ``base``'s Stripe route exist, enabled, with exactly the events
    the bridge handles; ``configured_secret``: STRIPE_WEBHOOK_SECRET is set here."""
    options: dict[str, Any] = {
        "max_network_retries": 0,  # one try: the operator runs it again
        "http_client": stripe.RequestsClient(timeout=TIMEOUT),
    }
    if api_base is not None:
        options["base_addresses"] = {"api": api_base}
    client = stripe.StripeClient(api_key, **options)
    url = webhook_url("stripe", base)
    plan = plan_endpoint(_endpoints(client), url, EVENTS["stripe"])
    notes: list[str] = []
    secret: str | None = None
    if not dry_run and plan.action == "create":
        created = _call(
            client.v1.webhook_endpoints.create,
            {"url": url, "enabled_events": list(plan.events), "description": DESCRIPTION},
        )
        secret = created.get("secret") or None
        plan = Plan("create", url, plan.events, str(created.get("id")))
    elif not dry_run and plan.action == "update":
        assert plan.endpoint_id is not None
        _call(
            client.v1.webhook_endpoints.update,
            plan.endpoint_id,
            {"url": url, "enabled_events": list(plan.events), "disabled": False},
        )
    if plan.action != "create" and not configured_secret:
        notes.append(
            "STRIPE_WEBHOOK_SECRET is not set here: Stripe shows an endpoint's signing secret "
            "only when it is created; reveal it in the Dashboard (Developers -> Webhooks)"
        )
    return Outcome("stripe", url, dry_run, (plan,), new_secret=secret, notes=tuple(notes))


def _endpoints(client: stripe.StripeClient) -> list[Endpoint]:
    """Every webhook endpoint of the account, page by page."""
    found: list[Endpoint] = []
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    while True:
        page = _call(client.v1.webhook_endpoints.list, params)
        data = [item for item in page.get("data") or [] if isinstance(item, dict)]
        found.extend(
            Endpoint(
                str(item.get("id")),
                str(item.get("url") or ""),
                tuple(str(e) for e in item.get("enabled_events") or ()),
                item.get("status") != "disabled",
            )
            for item in data
        )
        if not page.get("has_more") or not data:
            return found
        params = {"limit": PAGE_SIZE, "starting_after": data[-1].get("id")}


def _call(method: Any, *args: Any) -> dict[str, Any]:
    """One SDK call, its answer as a dict; every failure one ConnectError line."""
    try:
        result = method(*args)
    except stripe.AuthenticationError as exc:
        # Stripe's own message quotes part of the key: never shown.
        raise KeyRefusedError(
            f"Stripe: the provider refused the key (check STRIPE_API_KEY){_request(exc)}"
        ) from exc
    except stripe.PermissionError as exc:
        raise KeyRefusedError(
            "Stripe: the provider refused the key: a restricted key needs write access to "
            f"Webhook Endpoints{_request(exc)}"
        ) from exc
    except stripe.APIConnectionError as exc:
        raise UnreachableError(
            "Stripe: the API is unreachable (check the network, or STRIPE_API_BASE)"
        ) from exc
    except stripe.StripeError as exc:
        status = getattr(exc, "http_status", None)
        detail = redact(str(getattr(exc, "user_message", None) or "")).strip()
        message = f"Stripe: status={status}{_request(exc)}" + (f": {detail}" if detail else "")
        raise ConnectError(message) from exc
    data = result.to_dict()
    return data if isinstance(data, dict) else {}


def _request(exc: stripe.StripeError) -> str:
    request_id = getattr(exc, "request_id", None)
    return f" request_id={request_id}" if request_id else ""
