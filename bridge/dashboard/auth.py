"""Who may see the page: a login with the token, then a signed session cookie.

The cookie is Flask's signed session (HttpOnly, SameSite=Strict, Secure over HTTPS,
scoped to /admin). Its key is derived from the token *and* a random secret kept in Redis
(made once, shared by every web process), so a cookie handed to anyone who asks for the
login form tells nothing about the token, and changing the token logs everyone out. A
session carries its login time (it ends ``SESSION_HOURS`` later, however active) and the
sessions' generation: logging out moves the generation on, so a copied cookie dies too.
Every POST carries a CSRF token (Flask-WTF's, tied to the session). Failed logins are
counted per client address and in all, in Redis, and refused once over their limits.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
import urllib.parse
from datetime import timedelta

import redis
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
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from rq.utils import as_text
from wtforms import ValidationError

from bridge.app import current_bridge

SESSION_HOURS = 12
# Wrong tokens allowed per client address, and from everyone together, in the window.
MAX_FAILURES = 10
MAX_FAILURES_IN_ALL = 100
FAILURE_WINDOW_SECONDS = 15 * 60
FAILURES_PREFIX = "bridge:admin:login-failures:"
SESSION_SECRET_KEY = "bridge:admin:session-secret"
GENERATION_KEY = "bridge:admin:session-generation"
# Endpoints reachable without a session.
_OPEN = frozenset({"admin.login", "admin.static"})


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the page is reached over HTTPS (also
    behind a TLS proxy such as Heroku's router or Caddy, which say so in a header)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return _over_https(request)

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        """A session for the page's requests only (webhooks have none, and never wait
        on the key); none while Redis cannot give the key (the guard then answers 503)."""
        if request.path != "/admin" and not request.path.startswith("/admin/"):
            return None
        try:
            _ensure_key(app)
        except redis.RedisError:
            return None
        return super().open_session(app, request)


def protect(app: Flask, token: str) -> None:
    """Configure the session and put the login in front of every /admin page."""
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
    _ensure_key(current_app)  # Redis unreachable: the app's 503, as for a webhook
    if request.method == "POST":
        try:
            validate_csrf(request.form.get("csrf_token"))
        except ValidationError as exc:
            raise CSRFError(str(exc)) from None
    if request.endpoint in _OPEN or _logged_in():
        return None
    session.pop("operator", None)
    if request.method != "GET":
        abort(403)
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


def log_in(given: str) -> bool:
    """Check ``given`` against the token; on success start a fresh session."""
    if _refused():
        abort(429)
    token: str = current_app.extensions["bridge_admin_token"]
    if not hmac.compare_digest(given.encode(), token.encode()):
        return False
    _uncount()
    session.clear()  # a new session: nothing from before the login carries over
    session.permanent = True
    session.update(operator=True, since=time.time(), generation=_generation())
    return True


def log_out() -> None:
    """End this session and every copy of it (all sessions: there is one operator)."""
    current_bridge().redis.incr(GENERATION_KEY)
    session.clear()


def _logged_in() -> bool:
    since = session.get("since")
    return (
        session.get("operator") is True
        and isinstance(since, float)
        and time.time() - since < SESSION_HOURS * 3600
        and session.get("generation") == _generation()
    )


def _generation() -> int:
    value = current_bridge().redis.get(GENERATION_KEY)
    return int(value) if value is not None else 0


def _ensure_key(app: Flask) -> None:
    """The signing key: the token and this deployment's own random secret (made once)."""
    if app.secret_key:
        return
    connection = app.extensions["bridge"].redis
    connection.set(SESSION_SECRET_KEY, secrets.token_hex(32), nx=True)
    stored = connection.get(SESSION_SECRET_KEY)
    assert stored is not None
    token: str = app.extensions["bridge_admin_token"]
    app.secret_key = hmac.new(as_text(stored).encode(), token.encode(), hashlib.sha256).hexdigest()


def _refused() -> bool:
    """Count this attempt; True when this address, or everyone, tried too often. Counted
    before the comparison (a success takes its count back), so concurrent attempts cannot
    slip past the limit."""
    if _count(FAILURES_PREFIX + "all") > MAX_FAILURES_IN_ALL:
        return True  # nothing more is written: a flood of addresses makes no more keys
    return _count(_address_key()) > MAX_FAILURES


def _count(key: str) -> int:
    """Add one to a counter that lives ``FAILURE_WINDOW_SECONDS`` from its first count."""
    pipe = current_bridge().redis.pipeline()
    pipe.set(key, 0, ex=FAILURE_WINDOW_SECONDS, nx=True)
    pipe.incr(key)
    return int(pipe.execute()[1])


def _uncount() -> None:
    pipe = current_bridge().redis.pipeline()
    pipe.decr(FAILURES_PREFIX + "all")
    pipe.decr(_address_key())
    pipe.execute()


def _address_key() -> str:
    return FAILURES_PREFIX + _client_address()


def _client_address() -> str:
    """The address a proxy (Heroku's router, Caddy) appended last, if it is an address,
    else the peer's: the left of X-Forwarded-For is the client's to write, the right end
    is the proxy's."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    for candidate in (forwarded.rsplit(",", 1)[-1].strip(), request.remote_addr or ""):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return "unknown"


def _over_https(req: Request) -> bool:
    return req.is_secure or req.headers.get("X-Forwarded-Proto", "").lower() == "https"


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path of this page only (never another site, never
    a character a header cannot carry)."""
    if target and target.isascii() and target.isprintable() and "\\" not in target:
        parts = urllib.parse.urlsplit(target)
        if not (parts.scheme or parts.netloc) and (
            parts.path == "/admin" or parts.path.startswith("/admin/")
        ):
            return target
    return url_for("admin.overview")
