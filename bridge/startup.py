"""What each process does once at start: the banner (one line per provider) and the checks
of the services it needs, every failure one line naming the variable or the service.

The web process (``bridge/gunicorn_conf.py``, in gunicorn's master) and the worker
(``workers/work_loop.py``) both start here; ``bridge check`` prints the same lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

from bridge import logs
from bridge.errors import SettingsError
from bridge.products import Catalog, load_catalog
from bridge.redact import MASK, redact
from bridge.settings import DEFAULT_SOTION_API_URL, Settings, load_env_file

# Redis, RQ and requests are imported where they are used: gunicorn's master runs
# prepare_web before its gevent workers patch the standard library, and a module
# imported before that keeps unpatched references (gevent warns, per worker).
if TYPE_CHECKING:
    import redis

    from bridge.sotion import Site, SotionAPI

log = logging.getLogger(__name__)

# The distribution the `bridge` command comes from (pyproject.toml's name).
DISTRIBUTION = "sotion-bridge"
# The webhook routes of bridge/web.py, by provider (tests keep the two in step); the
# Gumroad token is never shown.
WEBHOOK_PATHS = {
    "stripe": "/webhooks/stripe",
    "lemonsqueezy": "/webhooks/lemonsqueezy",
    "gumroad": f"/webhooks/gumroad/{MASK}",
}
# "[Errno 111] Connection refused", "[Errno -2] Name or service not known": the reason
# inside the layers of a requests/urllib3 error message.
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


class StartupError(Exception):
    """A process cannot start; the message is the one line that says why."""


@dataclass(frozen=True)
class ProviderState:
    """Whether a provider's webhooks are served, where, and what else is configured."""

    name: str
    enabled: bool
    detail: str

    def line(self) -> str:
        """``stripe: enabled at /webhooks/stripe (...)`` or ``...: disabled (why)``."""
        if self.enabled:
            return f"{self.name}: enabled at {WEBHOOK_PATHS[self.name]} ({self.detail})"
        return f"{self.name}: disabled ({self.detail})"


def version() -> str:
    """The installed version of the bridge."""
    try:
        return package_version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def providers(settings: Settings) -> list[ProviderState]:
    """Each provider's state, in a fixed order: Stripe, Lemon Squeezy, Gumroad."""
    stripe = len(settings.stripe_webhook_secrets)
    lemonsqueezy = len(settings.lemonsqueezy_webhook_secrets)
    seller = settings.gumroad_seller_id
    return [
        _state(
            "stripe",
            _secrets(stripe) if stripe else None,
            "STRIPE_WEBHOOK_SECRET",
            _is_set("STRIPE_API_KEY", settings.stripe_api_key),
        ),
        _state(
            "lemonsqueezy",
            _secrets(lemonsqueezy) if lemonsqueezy else None,
            "LEMONSQUEEZY_WEBHOOK_SECRET",
            _is_set("LEMONSQUEEZY_API_KEY", settings.lemonsqueezy_api_key),
        ),
        _state(
            "gumroad",
            (f"seller {seller} only" if seller else "any seller")
            if settings.gumroad_webhook_token
            else None,
            "GUMROAD_WEBHOOK_TOKEN",
            _is_set("GUMROAD_ACCESS_TOKEN", settings.gumroad_access_token),
        ),
    ]


def _state(name: str, served: str | None, secret: str, api: str) -> ProviderState:
    """Enabled with what it serves, or disabled because ``secret`` is unset."""
    if served is None:
        return ProviderState(name, False, f"{secret} unset; {api}")
    return ProviderState(name, True, f"{served}, {api}")


def _is_set(name: str, value: str | None) -> str:
    return f"{name} {'set' if value else 'unset'}"


def _secrets(count: int) -> str:
    return f"{count} signing secret{'s' if count != 1 else ''}"


def log_banner(settings: Settings, process: str, catalog: Catalog | None = None) -> None:
    """Log what this process is: its version and products file, then one line per provider."""
    products = (
        f"{settings.products_file} rules={len(catalog.rules)}"
        if settings.products_file is not None and catalog is not None
        else "none"
    )
    log.info(
        "bridge %s %s starting products=%s test_events=%s",
        version(),
        process,
        products,
        "applied" if settings.accept_test_events else "ignored",
    )
    for state in providers(settings):
        log.info("%s", state.line())
    if settings.dry_run:
        log.warning("dry run: BRIDGE_DRY_RUN=true, Sotion writes are logged and counted, not sent")


def masked_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` query) masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{MASK}@{host}"
    query = urlencode(
        [
            (key, MASK if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    # Rebuilt by hand: urlunsplit drops the "//" of an empty host (unix:///path).
    masked = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
    return masked + (f"#{parts.fragment}" if parts.fragment else "")


def check_redis(connection: redis.Redis, url: str) -> None:
    """PING Redis; StartupError names the (masked) URL and the reason when it fails."""
    import redis

    try:
        connection.ping()
    except redis.AuthenticationError as exc:
        raise StartupError(
            f"redis at {masked_url(url)} refused the password ({type(exc).__name__}): "
            f"{_one_line(exc)}"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StartupError(
            f"redis unreachable at {masked_url(url)} ({type(exc).__name__}): {_one_line(exc)}"
        ) from exc
    except redis.RedisError as exc:
        raise StartupError(
            f"redis at {masked_url(url)} answered PING with an error ({type(exc).__name__}): "
            f"{_one_line(exc)}"
        ) from exc


def check_sotion(settings: Settings, sotion: SotionAPI | None = None) -> Site:
    """``GET /site`` with the configured key and URL; StartupError says what is wrong.

    The failed call is not logged as well: the error is the one line.
    """
    from bridge.sotion import (
        AuthError,
        ForbiddenError,
        NotFoundError,
        SotionError,
        TransientError,
        client_from_settings,
    )

    url = settings.sotion_api_url
    client = sotion if sotion is not None else client_from_settings(settings)
    try:
        with quiet_sotion():
            return client.site()
    except AuthError as exc:
        raise StartupError(
            "SOTION_API_KEY was refused by Sotion (401): copy the key again from Site "
            f"Settings -> Integrations -> API Keys{_request_id(exc)}"
        ) from exc
    except ForbiddenError as exc:
        raise StartupError(f"SOTION_API_KEY may not read the site (403){_request_id(exc)}") from exc
    except NotFoundError as exc:
        if settings.sotion_api_flavor == "legacy":
            where = f"SOTION_API_URL {redact(url)} has no site {settings.sotion_site_id!r}"
            hint = "check SOTION_SITE_ID"
        else:
            where = f"SOTION_API_URL {redact(url)} has no site"
            hint = f"Sotion's API is {DEFAULT_SOTION_API_URL}"
        raise StartupError(f"{where} (404): {hint}{_request_id(exc)}") from exc
    except TransientError as exc:
        if exc.status is not None:  # a 5xx, a 429, a body that is not JSON
            raise StartupError(
                f"sotion at {redact(url)} failed GET /site (SOTION_API_URL): {redact(str(exc))}"
            ) from exc
        reason = _errno(exc.__cause__) if exc.__cause__ is not None else None
        raise StartupError(
            f"sotion unreachable at {redact(url)} (SOTION_API_URL): {reason or exc.message}"
        ) from exc
    except SotionError as exc:
        raise StartupError(
            f"sotion refused GET /site at {redact(url)}: {redact(str(exc))}"
        ) from exc
    finally:
        if sotion is None:
            client.close()


def prepare_web() -> tuple[Settings, Catalog | None]:
    """The web process's start: read ``.env``, validate the settings and the products file,
    log the banner; SettingsError says what stops it.

    It runs once, in gunicorn's master, so it does not talk to Redis (that would import
    it there): an unreachable Redis does not stop the web anyway, which answers 503 to
    webhooks and ``/readyz`` until Redis answers.
    """
    load_env_file()
    settings = Settings.from_env()
    if settings.redis_url is None:
        raise SettingsError("REDIS_URL is required here (bridge run starts an embedded one)")
    catalog = load_catalog(settings.products_file) if settings.products_file else None
    logs.configure(settings.log_level, settings.secret_values())
    log_banner(settings, "web", catalog)
    return settings, catalog


def _one_line(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split())) or type(exc).__name__


def _errno(exc: BaseException) -> str | None:
    found = _ERRNO.search(str(exc))
    return found.group(0).strip() if found else None


def _request_id(exc: Exception) -> str:
    request_id = getattr(exc, "request_id", None)
    return f" (request_id={request_id})" if request_id else ""


@contextmanager
def quiet_sotion() -> Iterator[None]:
    """Drop the Sotion client's log lines of failed calls for the duration: at start-up,
    the caller's one line reports the failure."""
    from bridge.sotion import transport

    def drop(record: logging.LogRecord) -> bool:
        return False

    transport.log.addFilter(drop)
    try:
        yield
    finally:
        transport.log.removeFilter(drop)
