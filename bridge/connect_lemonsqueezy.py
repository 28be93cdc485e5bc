"""`bridge connect lemonsqueezy`: the store's webhook, through the JSON:API.

docs.lemonsqueezy.com/api/stores (``GET /v1/stores``) and /api/webhooks: list
(``filter[store_id]``, ``page[number]``/``page[size]``), create (``POST /v1/webhooks``:
``url``, ``events``, ``secret``, the store as a relationship) and update (``PATCH
/v1/webhooks/:id``: ``url``, ``events``, ``secret``). The secret is never returned, so an
existing webhook's cannot be compared: it is set on every update when one is configured,
and replaced by a new one only with ``new_secret``.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

import requests

from bridge.connect import (
    EVENTS,
    ConnectConfigError,
    ConnectError,
    Endpoint,
    KeyRefusedError,
    Outcome,
    Plan,
    UnreachableError,
    plan_endpoint,
    webhook_url,
)
from bridge.lemonsqueezy_api import DEFAULT_API_BASE, DEFAULT_TIMEOUT, JSON_API
from bridge.redact import redact
from bridge.settings import Settings, SettingsError

# The largest page[size] the list endpoints accept.
PAGE_SIZE = 100
# Bytes of randomness in a generated secret (32 URL-safe characters).
SECRET_BYTES = 24
# The most pages read from one list: far beyond any real account, short of forever.
MAX_PAGES = 100


def connect(
    api_key: str,
    base: str,
    *,
    secret: str | None,
    store: str | None = None,
    api_base: str = DEFAULT_API_BASE,
    dry_run: bool = False,
    new_secret: bool = False,
    session: requests.Session | None = None,
) -> Outcome:
    """Make the webhook of ``base``'s Lemon Squeezy route exist in the store with exactly
    the events the bridge handles; ``secret``: the configured LEMONSQUEEZY_WEBHOOK_SECRET."""
    api = _API(api_key, api_base, session or requests.Session())
    store_id = _store(api, store)
    url = webhook_url("lemonsqueezy", base)
    hooks = [
        Endpoint(str(item.get("id")), str(attrs.get("url") or ""), tuple(attrs.get("events") or ()))
        for item in api.pages("/v1/webhooks", {"filter[store_id]": store_id})
        if str((attrs := item.get("attributes") or {}).get("store_id")) == store_id
    ]
    plan = plan_endpoint(hooks, url, EVENTS["lemonsqueezy"])
    notes: list[str] = []
    created: str | None = None
    if (plan.action == "create" and not secret) or new_secret:
        secret = created = generate_secret()
    if plan.action != "create" and new_secret:
        plan = replace(plan, action="update", changes=(*plan.changes, "secret"))
    if plan.action == "nothing" and not secret:
        notes.append(
            "LEMONSQUEEZY_WEBHOOK_SECRET is not set here: Lemon Squeezy never shows a webhook's "
            "secret; set the one printed when it was made, or run with --new-secret"
        )
    if not dry_run and plan.action == "create":
        assert secret is not None
        body = api.send("POST", "/v1/webhooks", _document(plan, secret, store_id=store_id))
        plan = Plan("create", url, plan.events, str((body.get("data") or {}).get("id")))
    elif not dry_run and plan.action == "update":
        assert plan.endpoint_id is not None
        document = _document(plan, secret, webhook_id=plan.endpoint_id)
        api.send("PATCH", f"/v1/webhooks/{plan.endpoint_id}", document)
    if plan.action == "update" and not secret:
        notes.append("the webhook's secret was left as it is (LEMONSQUEEZY_WEBHOOK_SECRET unset)")
    return Outcome(
        "lemonsqueezy",
        url,
        dry_run,
        (plan,),
        new_secret=None if dry_run else created,
        notes=tuple(notes),
        scope=f"store {store_id}",
    )


def generate_secret() -> str:
    """A random signing secret the bridge's own settings accept."""
    while True:
        value = secrets.token_urlsafe(SECRET_BYTES)
        try:  # a random string may, rarely, spell a placeholder word ("your", "xxxx")
            Settings.from_env({"LEMONSQUEEZY_WEBHOOK_SECRET": value})
        except SettingsError:
            continue
        return value


def _store(api: _API, wanted: str | None) -> str:
    """``--store`` checked against the key's stores, else the key's only store."""
    stores = {str(item.get("id")): item.get("attributes") or {} for item in api.pages("/v1/stores")}
    listed = ", ".join(
        f"{ident} ({stores[ident].get('name') or '-'})" for ident in sorted(stores, key=_number)
    )
    if wanted is not None:
        if wanted not in stores:
            raise ConnectConfigError(
                f"Lemon Squeezy: store {wanted} is not one of this key's stores: {listed or 'none'}"
            )
        return wanted
    if not stores:
        raise ConnectConfigError("Lemon Squeezy: this API key sees no store")
    if len(stores) > 1:
        raise ConnectConfigError(
            f"Lemon Squeezy: this key has {len(stores)} stores ({listed}): pass --store ID"
        )
    return next(iter(stores))


def _number(ident: str) -> tuple[int, str]:
    return (int(ident), ident) if ident.isdigit() else (0, ident)


def _document(
    plan: Plan, secret: str | None, *, store_id: str | None = None, webhook_id: str | None = None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"url": plan.url, "events": list(plan.events)}
    if secret:
        attributes["secret"] = secret
    data: dict[str, Any] = {"type": "webhooks", "attributes": attributes}
    if webhook_id is not None:
        data["id"] = webhook_id
    if store_id is not None:
        data["relationships"] = {"store": {"data": {"type": "stores", "id": store_id}}}
    return {"data": data}


class _API:
    """The few calls a registration makes, each failure one ConnectError line."""

    def __init__(self, api_key: str, api_base: str, session: requests.Session) -> None:
        # requests quotes a malformed header value in its error: refuse it unnamed first.
        if not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise ConnectConfigError("LEMONSQUEEZY_API_KEY is not a printable ASCII token")
        self._key = api_key
        self._base = api_base.rstrip("/")
        self._session = session

    def pages(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every resource of a list, page by page."""
        found: list[dict[str, Any]] = []
        for number in range(1, MAX_PAGES + 1):
            query = {**(params or {}), "page[number]": str(number), "page[size]": str(PAGE_SIZE)}
            body = self.send("GET", path, params=query)
            data = body.get("data")
            if not isinstance(data, list):
                raise ConnectError(f"Lemon Squeezy: GET {path} returned no data list")
            found.extend(item for item in data if isinstance(item, dict))
            links = body.get("links")
            if not data or not (isinstance(links, dict) and links.get("next")):
                break
        return found

    def send(
        self,
        method: str,
        path: str,
        document: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {
            "Accept": JSON_API,
            "Content-Type": JSON_API,
            "Authorization": f"Bearer {self._key}",
        }
        try:
            response = self._session.request(
                method,
                self._base + path,
                params=params,
                json=document,
                headers=headers,
                timeout=DEFAULT_TIMEOUT,
            )
        except requests.RequestException as exc:
            raise UnreachableError(
                f"Lemon Squeezy: the API is unreachable ({type(exc).__name__}; check the "
                "network, or LEMONSQUEEZY_API_BASE)"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code in (401, 403):
            raise KeyRefusedError(
                "Lemon Squeezy: the provider refused the key (check LEMONSQUEEZY_API_KEY)"
            )
        if not 200 <= response.status_code < 300 or not isinstance(body, dict):
            request_id = response.headers.get("X-Request-Id")
            where = f" request_id={request_id}" if request_id else ""
            detail = _detail(body)
            raise ConnectError(
                f"Lemon Squeezy: {method} {path} status={response.status_code}{where}"
                + (f": {detail}" if detail else "")
            )
        return body


def _detail(body: Any) -> str:
    """The first JSON:API error's detail (or title), masked and short."""
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, dict):
        return ""
    text = first.get("detail") or first.get("title") or ""
    return redact(str(text))[:200]
