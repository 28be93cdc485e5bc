"""The HTTP routes. Each webhook view is a checklist: raw bytes → verify → parse →
enqueue → respond. One error handler turns every failure into a JSON response.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Blueprint, Response, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from bridge import activity, metrics
from bridge.app import current_bridge
from bridge.errors import BodyError, BridgeError, PayloadError, ProviderDisabledError
from bridge.events import MembershipEvent, clamped, unusable_reason
from bridge.providers import gumroad, lemonsqueezy, stripe
from bridge.redact import redact

log = logging.getLogger(__name__)

bp = Blueprint("bridge", __name__)

# A request header asking the webhook answer to name its jobs and why events were ignored.
EXPLAIN_HEADER = "X-Bridge-Explain"


@bp.post("/webhooks/stripe")
def stripe_webhook() -> ResponseReturnValue:
    """Stripe: ``Stripe-Signature`` over the raw body, one event per request."""
    secrets = current_bridge().settings.stripe_webhook_secrets
    if not secrets:
        raise ProviderDisabledError("Stripe webhooks are not configured on this bridge")
    raw = _raw_body()
    stripe.verify(raw, request.headers.get("Stripe-Signature"), secrets, now=time.time())
    events = stripe.parse(stripe.load(raw))
    return _accept(stripe.PROVIDER, events)


@bp.post("/webhooks/lemonsqueezy")
def lemonsqueezy_webhook() -> ResponseReturnValue:
    """Lemon Squeezy: ``X-Signature``, the hex HMAC-SHA256 of the raw body."""
    secrets = current_bridge().settings.lemonsqueezy_webhook_secrets
    if not secrets:
        raise ProviderDisabledError("Lemon Squeezy webhooks are not configured on this bridge")
    raw = _raw_body()
    lemonsqueezy.verify(raw, request.headers.get("X-Signature"), secrets)
    events = lemonsqueezy.parse(lemonsqueezy.load(raw))
    return _accept(lemonsqueezy.PROVIDER, events)


@bp.post("/webhooks/gumroad/<token>")
def gumroad_webhook(token: str) -> ResponseReturnValue:
    """Gumroad: unsigned pings, authenticated by the secret token in the URL."""
    settings = current_bridge().settings
    if not settings.gumroad_webhook_token:
        raise ProviderDisabledError("Gumroad pings are not configured on this bridge")
    gumroad.verify(token, settings.gumroad_webhook_token)
    raw = _raw_body()
    payload = gumroad.load(raw, request.mimetype)
    # Refunds and disputes carry only the sale's time: date them by their arrival.
    events = gumroad.parse(payload, seller_id=settings.gumroad_seller_id, received_at=time.time())
    return _accept(gumroad.PROVIDER, events)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Ready when Redis answers (events can be stored)."""
    try:
        current_bridge().redis.ping()
    except redis.RedisError:
        return jsonify(status="unavailable", redis=False), 503
    return jsonify(status="ok", redis=True)


@bp.get("/metrics")
def prometheus_metrics() -> ResponseReturnValue:
    """Prometheus text format."""
    body = metrics.render(current_bridge().queue)
    return Response(body, mimetype="text/plain; version=0.0.4")


def _raw_body() -> bytes:
    """The request body exactly as sent; 413 past the limit.

    Werkzeug refuses a declared Content-Length over MAX_CONTENT_LENGTH, but silently
    truncates a chunked body there; the app allows one byte more so this check sees it.
    """
    try:
        raw = request.get_data(cache=False)
    except HTTPException:
        raise
    except Exception as exc:
        # The server's body parser: malformed chunked framing, a body cut off mid-way.
        # Which exception it raises is the server's own (gunicorn's ParseException, an
        # OSError): whatever it is, the client sent it, so it is a 400, never a 500.
        raise BodyError(f"The request body could not be read: {type(exc).__name__}") from exc
    if len(raw) > current_bridge().settings.max_body_bytes:
        raise RequestEntityTooLarge()
    return raw


def _accept(provider: str, events: list[MembershipEvent]) -> ResponseReturnValue:
    """Queue the events the bridge applies; 200 only once they are all in Redis.

    A signed event with an email or id no buyer can have is acknowledged and counted as
    unusable (Stripe and Lemon Squeezy would only resend the same body); from Gumroad,
    whose pings are unsigned, it is refused.
    """
    bridge = current_bridge()
    now = time.time()
    usable = []
    # Why events were acknowledged without being queued, for the sender (`bridge trigger`).
    reasons: dict[str, int] = {}
    for event in events:
        reason = unusable_reason(event)
        if reason is None:
            usable.append(clamped(event, now))
            continue
        if provider == gumroad.PROVIDER:
            raise PayloadError(f"Gumroad ping refused: {reason}")
        log.warning("unusable event acknowledged key=%.80s reason=%s", event.dedupe_key, reason)
        metrics.count(bridge.redis, "bridge_events", provider=provider, outcome="unusable")
        reasons["unusable"] = reasons.get("unusable", 0) + 1
    # Products no rule lists are ignored by the worker, which sees the whole ledger: here
    # an unlisted price may still be the update or the end of a purchase once granted.
    wanted = [e for e in usable if bridge.settings.accept_test_events or not e.test_mode]
    if len(wanted) < len(usable):
        reasons["test_mode"] = len(usable) - len(wanted)
    # Stored and counted (bridge_webhooks, bridge_events) in one round trip.
    result = bridge.intake.receive(provider, wanted)
    # The operator page's chart: what was acknowledged without a job (duplicates are
    # counted by the intake's script, queued ones by the worker where they end). Nothing
    # to write, no round trip.
    acknowledged = {"ignored": reasons.get("test_mode", 0), "unusable": reasons.get("unusable", 0)}
    for outcome, amount in acknowledged.items():
        activity.record(bridge.redis, provider, outcome, amount)
    answer: dict[str, object] = {
        "received": True,
        "queued": len(result.queued),
        "duplicates": len(result.duplicates),
        "ignored": len(events) - len(wanted),
    }
    if request.headers.get(EXPLAIN_HEADER) == "1":
        # Asked for by `bridge trigger`: the job ids to follow and why events were ignored.
        answer.update(jobs=result.queued, ignored_reasons=reasons)
    return jsonify(answer)


@bp.before_app_request
def _start_timer() -> None:
    g.started = time.monotonic()


@bp.after_app_request
def _log_request(response: Response) -> Response:
    """The access log, written here so the Gumroad token in the path is never logged."""
    if log.isEnabledFor(logging.INFO):  # redacting the path is work: only when logged
        elapsed = (time.monotonic() - g.get("started", time.monotonic())) * 1000
        log.info(
            "request method=%s path=%s status=%s ms=%.1f",
            request.method,
            _masked_path(),
            response.status_code,
            elapsed,
        )
    return response


def _masked_path() -> str:
    return redact(request.path)


@bp.app_errorhandler(BridgeError)
def _bridge_error(error: BridgeError) -> ResponseReturnValue:
    log.info("webhook refused status=%s code=%s reason=%s", error.status, error.code, error)
    if error.status < 500 and error.status != 404:
        metrics.count(
            current_bridge().redis, "bridge_webhooks", provider=_provider(), outcome=error.code
        )
    return jsonify(error={"code": error.code, "message": error.message}), error.status


@bp.app_errorhandler(redis.RedisError)
def _redis_error(error: redis.RedisError) -> ResponseReturnValue:
    log.error("redis unavailable, event not stored: %s", type(error).__name__)
    body = {"code": "queue_unavailable", "message": "Events cannot be stored right now"}
    return jsonify(error=body), 503, {"Retry-After": "30"}


@bp.app_errorhandler(HTTPException)
def _http_error(error: HTTPException) -> ResponseReturnValue:
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_")
    headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
    return jsonify(error={"code": code, "message": error.description}), status, headers


@bp.app_errorhandler(Exception)
def _unexpected(error: Exception) -> ResponseReturnValue:
    log.error("unexpected error path=%s", _masked_path(), exc_info=error)
    body = {"code": "internal_error", "message": "The event was not stored; please retry"}
    return jsonify(error=body), 500


def _provider() -> str:
    parts = request.path.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0] == "webhooks" else "-"
