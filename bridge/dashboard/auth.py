"""Who may see the page: a login with the token, then a signed session cookie.

The cookie is Flask's signed session (HttpOnly, SameSite=Strict, Secure over HTTPS,
scoped to /admin) under a key derived from the token, so every web process accepts it
and changing the token logs everyone out. Every POST carries a CSRF token (Flask-WTF's,
tied to the session); failed logins are counted per client address in Redis and refused
for a while after ``MAX_FAILURES``.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import (
    Flask,
    Request,
    abort,
    current_app,
    redirect,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from wtforms import ValidationError

from bridge.app import current_bridge

SESSION_HOURS = 12
MAX_FAILURES = 10
FAILURE_WINDOW_SECONDS = 15 * 60
FAILURES_PREFIX = "bridge:admin:login-failures:"
# Endpoints reachable without a session.
_OPEN = frozenset({"admin.login", "admin.static"})


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the page is reached over HTTPS (also
    behind a TLS proxy such as Heroku's router or Caddy, which say so in a header)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return _over_https(request)


def protect(app: Flask, token: str) -> None:
    """Configure the session and put the login in front of every /admin page."""
    app.secret_key = hmac.new(
        token.encode(), b"sotion-bridge admin session", hashlib.sha256
    ).hexdigest()
    app.config.update(
        SESSION_COOKIE_NAME="bridge_admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/admin",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
        WTF_CSRF_SSL_STRICT=False,  # the Referer check; SameSite=Strict covers it
    )
    app.session_interface = _SessionInterface()
    app.jinja_env.globals["csrf_token"] = generate_csrf
    app.extensions["bridge_admin_token"] = token


def guard() -> ResponseReturnValue | None:
    """Before every /admin request: log in first; every POST proves it came from the page."""
    if request.method == "POST":
        try:
            validate_csrf(request.form.get("csrf_token"))
        except ValidationError as exc:
            raise CSRFError(str(exc)) from None
    if request.endpoint in _OPEN or session.get("operator") is True:
        return None
    if request.method != "GET":
        abort(403)
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


def log_in(given: str) -> bool:
    """Check ``given`` against the token; on success start a fresh session."""
    if too_many_failures():
        abort(429)
    token: str = _app_token()
    if not hmac.compare_digest(given.encode(), token.encode()):
        _count_failure()
        return False
    session.clear()  # a new session: nothing from before the login carries over
    session.permanent = True
    session["operator"] = True
    return True


def log_out() -> None:
    session.clear()


def too_many_failures() -> bool:
    value = current_bridge().redis.get(_failures_key())
    return value is not None and int(value) >= MAX_FAILURES


def _count_failure() -> None:
    pipe = current_bridge().redis.pipeline()
    pipe.incr(_failures_key())
    pipe.expire(_failures_key(), FAILURE_WINDOW_SECONDS)
    pipe.execute()


def _failures_key() -> str:
    return FAILURES_PREFIX + _client_address()


def _client_address() -> str:
    """The address a proxy (Heroku's router, Caddy) appended last, else the peer's: the
    left of X-Forwarded-For is the client's to write, the right end is not."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    return last or request.remote_addr or "unknown"


def _app_token() -> str:
    token: str = current_app.extensions["bridge_admin_token"]
    return token


def _over_https(req: Request) -> bool:
    return req.is_secure or req.headers.get("X-Forwarded-Proto", "").lower() == "https"


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path of this page only (never another site)."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return url_for("admin.overview")
