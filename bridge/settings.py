"""Settings: the one place that reads the environment.

Parsing is strict: a bad value fails at start-up with a message naming the variable.
Tests build a :class:`Settings` directly instead of touching the environment.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from bridge.errors import SettingsError
from bridge.membership import DisputeAction, Policy, RevokeAction

if TYPE_CHECKING:
    # RQ (and Redis) are imported by what uses the policy, not by whoever reads settings:
    # gunicorn's master reads them before its gevent workers patch the standard library.
    from bridge.retry import RetryPolicy

# Where Sotion's v1 API lives (the docs also show /v1; the URL is configuration).
DEFAULT_SOTION_API_URL = "https://api.sotion.so/api/v1"
# The legacy API puts the key in the host name and the site id in the path.
DEFAULT_LEGACY_URL = "https://{key}.api.sotion.app/sites/{site_id}"
SOTION_FLAVORS = ("v1", "legacy")
# What a real secret looks like. Stripe's signing secrets are `whsec_` and 32 or more
# letters and digits; the Gumroad token and the Lemon Squeezy secret are chosen by the
# operator, so they must at least be long enough not to be guessed.
_STRIPE_SECRET = re.compile(r"whsec_[A-Za-z0-9]{24,}")
MIN_LEMONSQUEEZY_SECRET = 16
MIN_GUMROAD_TOKEN = 32
# The operator page's login token: guessing it opens every buyer's record.
MIN_ADMIN_TOKEN = 32
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")
# Values copied from an example and never replaced (compared lowercased, in part).
_PLACEHOLDER_WORDS = ("your", "changeme", "change_me", "placeholder", "example", "xxxx", "replace")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

# The variables file every process reads at start, unless BRIDGE_ENV_FILE names another.
DEFAULT_ENV_FILE = ".env"
ENV_FILE_VARIABLE = "BRIDGE_ENV_FILE"
_NAME_AT_START = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)")

__all__ = ["Settings", "SettingsError", "load_env_file", "policy", "retry_policy"]


@dataclass(frozen=True)
class Settings:
    """Every setting of the bridge, parsed and validated."""

    redis_url: str | None = None
    # Whether a rediss:// server's certificate is checked (Heroku Redis: self-signed).
    redis_tls_verify: bool = True
    data_dir: Path = Path(".bridge")
    sotion_api_key: str | None = None
    sotion_api_url: str = DEFAULT_SOTION_API_URL
    sotion_api_flavor: str = "v1"
    sotion_site_id: str | None = None
    sotion_timeout: tuple[float, float] = (3.05, 10.0)
    stripe_webhook_secrets: tuple[str, ...] = ()
    stripe_api_key: str | None = None
    lemonsqueezy_webhook_secrets: tuple[str, ...] = ()
    lemonsqueezy_api_key: str | None = None
    gumroad_webhook_token: str | None = None
    gumroad_seller_id: str | None = None
    gumroad_access_token: str | None = None
    stripe_api_base: str | None = None
    products_file: Path | None = None
    accept_test_events: bool = False
    lemonsqueezy_api_base: str = "https://api.lemonsqueezy.com"
    gumroad_api_base: str = "https://api.gumroad.com"
    on_end: RevokeAction = RevokeAction.UNPAID
    on_dispute: DisputeAction = DisputeAction.BLOCK
    past_due_grace_days: float | None = None
    unblock_manual: bool = False
    unpay_manual: bool = False
    inquiries_are_disputes: bool = False
    park_hours: float = 72.0
    # Minutes between two scheduled reconciles (0: none).
    reconcile_interval_minutes: float = 60.0
    max_body_bytes: int = 1024 * 1024
    retry_attempts: int = 10
    retry_base_seconds: float = 5.0
    log_level: str = "INFO"
    # The pipeline runs and the Sotion writes it would make are logged and counted, not sent.
    dry_run: bool = False
    # The operator's page (/admin): off (404) unless set; the token logs in.
    admin_token: str | None = None

    def __post_init__(self) -> None:
        _check_sotion(self)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret the settings hold (masked wherever it would be logged)."""
        single = (
            self.sotion_api_key,
            self.stripe_api_key,
            self.lemonsqueezy_api_key,
            self.gumroad_webhook_token,
            self.gumroad_access_token,
            self.admin_token,
        )
        listed = (*self.stripe_webhook_secrets, *self.lemonsqueezy_webhook_secrets)
        # A managed Redis's URL carries its password (Heroku: redis://:p4ss@host:port).
        redis_password = urlsplit(self.redis_url).password if self.redis_url else None
        return tuple(value for value in (*single, *listed, redis_password) if value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment (``os.environ`` unless given)."""
        env = _Env(os.environ if environ is None else environ)
        flavor = (env.get("SOTION_API_FLAVOR") or "v1").lower()
        default_url = DEFAULT_LEGACY_URL if flavor == "legacy" else DEFAULT_SOTION_API_URL
        return cls(
            redis_url=env.url("REDIS_URL", schemes=("redis", "rediss", "unix")),
            redis_tls_verify=env.boolean("REDIS_TLS_VERIFY", default=True),
            data_dir=Path(env.get("BRIDGE_DATA_DIR") or ".bridge"),
            sotion_api_key=_real(env.secret("SOTION_API_KEY"), "SOTION_API_KEY"),
            sotion_api_url=env.get("SOTION_API_URL") or default_url,
            sotion_api_flavor=flavor,
            sotion_site_id=env.get("SOTION_SITE_ID"),
            sotion_timeout=env.timeout("SOTION_TIMEOUT", default=(3.05, 10.0)),
            stripe_webhook_secrets=_stripe_secrets(env.secret_list("STRIPE_WEBHOOK_SECRET")),
            stripe_api_key=_real(env.secret("STRIPE_API_KEY"), "STRIPE_API_KEY"),
            stripe_api_base=env.url("STRIPE_API_BASE", schemes=("http", "https")),
            lemonsqueezy_webhook_secrets=tuple(
                _long(
                    _real(secret, "LEMONSQUEEZY_WEBHOOK_SECRET"),
                    MIN_LEMONSQUEEZY_SECRET,
                    "LEMONSQUEEZY_WEBHOOK_SECRET",
                )
                for secret in env.secret_list("LEMONSQUEEZY_WEBHOOK_SECRET")
            ),
            lemonsqueezy_api_key=_real(env.secret("LEMONSQUEEZY_API_KEY"), "LEMONSQUEEZY_API_KEY"),
            gumroad_webhook_token=_gumroad_token(env.secret("GUMROAD_WEBHOOK_TOKEN")),
            gumroad_seller_id=env.get("GUMROAD_SELLER_ID"),
            gumroad_access_token=_real(env.secret("GUMROAD_ACCESS_TOKEN"), "GUMROAD_ACCESS_TOKEN"),
            lemonsqueezy_api_base=env.url("LEMONSQUEEZY_API_BASE", schemes=("http", "https"))
            or "https://api.lemonsqueezy.com",
            gumroad_api_base=env.url("GUMROAD_API_BASE", schemes=("http", "https"))
            or "https://api.gumroad.com",
            products_file=env.path("BRIDGE_PRODUCTS"),
            on_end=RevokeAction(
                env.choice("BRIDGE_ON_END", ("UNPAID", "BLOCK"), default="UNPAID").lower()
            ),
            on_dispute=DisputeAction(
                env.choice("BRIDGE_ON_DISPUTE", ("BLOCK", "REVOKE"), default="BLOCK").lower()
            ),
            past_due_grace_days=env.optional_number("BRIDGE_PAST_DUE_GRACE_DAYS", least=0),
            unblock_manual=env.boolean("BRIDGE_UNBLOCK_MANUAL", default=False),
            unpay_manual=env.boolean("BRIDGE_UNPAY_MANUAL", default=False),
            inquiries_are_disputes=env.choice(
                "BRIDGE_ON_INQUIRY", ("IGNORE", "DISPUTE"), default="IGNORE"
            )
            == "DISPUTE",
            park_hours=env.number("BRIDGE_PARK_HOURS", default=72.0, least=0),
            reconcile_interval_minutes=env.number(
                "BRIDGE_RECONCILE_INTERVAL", default=60.0, least=0
            ),
            accept_test_events=env.boolean("BRIDGE_ACCEPT_TEST_EVENTS", default=False),
            max_body_bytes=int(env.number("BRIDGE_MAX_BODY_BYTES", default=1024 * 1024, least=1)),
            retry_attempts=int(env.number("BRIDGE_RETRY_ATTEMPTS", default=10, least=0)),
            retry_base_seconds=env.number("BRIDGE_RETRY_BASE_SECONDS", default=5.0, least=0),
            log_level=env.choice(
                "BRIDGE_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO"
            ),
            dry_run=env.boolean("BRIDGE_DRY_RUN", default=False),
            admin_token=_admin_token(env.secret("BRIDGE_ADMIN_TOKEN")),
        )


def load_env_file(
    path: str | Path | None = None, environ: MutableMapping[str, str] | None = None
) -> Path | None:
    """Add the variables of an env file to ``environ`` (``os.environ``), never replacing one
    already set there; return the file read, or None when there was none.

    The file is ``path``, else the one BRIDGE_ENV_FILE names (both must exist), else
    ``.env`` in the current directory if there is one. A line that is not ``NAME=value``
    is a SettingsError naming the file and the line, never showing the value.
    """
    environ = os.environ if environ is None else environ
    named = str(path) if path is not None else (environ.get(ENV_FILE_VARIABLE) or "").strip()
    file = Path(named or DEFAULT_ENV_FILE)
    if not named and not file.is_file():
        return None
    where = f"{ENV_FILE_VARIABLE} ({file})" if named and path is None else str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read the file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{where}: the file is not UTF-8") from exc
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            statement = binding.original.string
            # A statement's text starts with the blank lines before it.
            blank = statement[: len(statement) - len(statement.lstrip())].count("\n")
            start = _NAME_AT_START.match(statement)
            about = f" ({start.group(1)})" if start else ""
            raise SettingsError(
                f"{where}: line {binding.original.line + blank}{about} is not NAME=value "
                "(a value with spaces or # needs quotes; a quote must be closed)"
            )
    for name, value in dotenv_values(stream=io.StringIO(text)).items():
        # A bare NAME (no =) leaves the variable as the environment has it.
        if value is not None and name not in environ:
            environ[name] = value
    return file


def _real(value: str | None, name: str) -> str | None:
    """``value`` unless it is a placeholder copied from an example."""
    if value is None:
        return None
    lowered = value.lower()
    if (
        any(word in lowered for word in _PLACEHOLDER_WORDS)
        or lowered.strip("._-*<>")
        in (
            "",
            "secret",
            "token",
            "password",
            "test",
            "todo",
        )
        or any(mark in value for mark in ("<", ">", "..."))
    ):
        raise SettingsError(f"{name} is a placeholder, not a real secret: set the real value")
    return value


def _long(value: str | None, least: int, name: str) -> str:
    assert value is not None
    if len(value) < least:
        raise SettingsError(
            f"{name} must be at least {least} characters (a short secret can be guessed)"
        )
    return value


def _stripe_secrets(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        _real(value, "STRIPE_WEBHOOK_SECRET")
        if not _STRIPE_SECRET.fullmatch(value):
            raise SettingsError(
                "STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret: whsec_ followed "
                "by at least 24 letters and digits (Dashboard -> Webhooks -> Signing secret)"
            )
    return values


def _gumroad_token(value: str | None) -> str | None:
    if value is None:
        return None
    _long(_real(value, "GUMROAD_WEBHOOK_TOKEN"), MIN_GUMROAD_TOKEN, "GUMROAD_WEBHOOK_TOKEN")
    if not _URL_SAFE.fullmatch(value):
        raise SettingsError(
            "GUMROAD_WEBHOOK_TOKEN must use only letters, digits and . _ ~ - (it is a URL path "
            "segment); e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


def _admin_token(value: str | None) -> str | None:
    if value is None:
        return None
    return _long(_real(value, "BRIDGE_ADMIN_TOKEN"), MIN_ADMIN_TOKEN, "BRIDGE_ADMIN_TOKEN")


def _check_sotion(settings: Settings) -> None:
    """Validate the Sotion settings together (the flavour decides what is required)."""
    if settings.sotion_api_flavor not in SOTION_FLAVORS:
        raise SettingsError(
            f"SOTION_API_FLAVOR must be one of {', '.join(SOTION_FLAVORS)}, "
            f"not {settings.sotion_api_flavor!r}"
        )
    url = settings.sotion_api_url
    if urlsplit(url.replace("{key}", "k").replace("{site_id}", "s")).scheme not in (
        "http",
        "https",
    ):
        raise SettingsError(f"SOTION_API_URL must be an http(s) URL, not {url!r}")
    key = settings.sotion_api_key
    if settings.sotion_api_flavor == "v1":
        if key is not None and not key.startswith("so_"):
            raise SettingsError("SOTION_API_KEY must be a v1 key starting with 'so_'")
    else:
        if not settings.sotion_site_id:
            raise SettingsError("SOTION_SITE_ID is required when SOTION_API_FLAVOR=legacy")
        if "{key}" not in url and key is not None:
            raise SettingsError("SOTION_API_URL must contain {key} when SOTION_API_FLAVOR=legacy")


class _Env:
    """Typed, strict accessors over an environment mapping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def secret(self, name: str) -> str | None:
        """``NAME``, or the contents of the file named by ``NAME_FILE``; not both."""
        direct = self.get(name)
        file_name = self.get(f"{name}_FILE")
        if direct is not None and file_name is not None:
            raise SettingsError(f"set either {name} or {name}_FILE, not both")
        if file_name is None:
            return direct
        try:
            content = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from exc
        if not content:
            raise SettingsError(f"{name}_FILE: {file_name} is empty")
        return content

    def secret_list(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of secrets (several are allowed for rotation)."""
        value = self.secret(name)
        if value is None:
            return ()
        items = tuple(part.strip() for part in value.split(","))
        if any(not item for item in items):
            raise SettingsError(f"{name} has an empty entry in its comma-separated list")
        return items

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._environ.get(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingsError(f"{name} must be true or false, not {value!r}")

    def url(self, name: str, *, schemes: tuple[str, ...]) -> str | None:
        value = self.get(name)
        if value is None:
            return None
        if urlsplit(value).scheme not in schemes:
            raise SettingsError(f"{name} must be a URL with scheme {' or '.join(schemes)}")
        return value

    def number(self, name: str, *, default: float, least: float) -> float:
        """A number no smaller than ``least``."""
        value = self.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError as exc:
            raise SettingsError(f"{name} must be a number, not {value!r}") from exc
        if not math.isfinite(number):
            raise SettingsError(f"{name} must be a finite number, not {value!r}")
        if number < least:
            raise SettingsError(f"{name} must be at least {least:g}")
        return number

    def optional_number(self, name: str, *, least: float) -> float | None:
        """A number no smaller than ``least``, or None when unset."""
        if self.get(name) is None:
            return None
        return self.number(name, default=0.0, least=least)

    def choice(self, name: str, choices: tuple[str, ...], *, default: str) -> str:
        """One of ``choices`` (case-insensitive)."""
        value = self.get(name)
        if value is None:
            return default
        if value.upper() not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}")
        return value.upper()

    def path(self, name: str) -> Path | None:
        value = self.get(name)
        return Path(value) if value is not None else None

    def timeout(self, name: str, *, default: tuple[float, float]) -> tuple[float, float]:
        """``read`` or ``connect,read`` in seconds, each positive."""
        value = self.get(name)
        if value is None:
            return default
        try:
            parts = [float(part) for part in value.split(",")]
        except ValueError as exc:
            raise SettingsError(f"{name} must be seconds, e.g. 10 or 3,10") from exc
        if len(parts) not in (1, 2) or any(part <= 0 for part in parts):
            raise SettingsError(f"{name} must be one or two positive numbers of seconds")
        return (parts[0], parts[-1]) if len(parts) == 2 else (default[0], parts[0])


def retry_policy(settings: Settings) -> RetryPolicy:
    """The job retry policy the settings describe."""
    from bridge.retry import RetryPolicy

    return RetryPolicy(attempts=settings.retry_attempts, base_seconds=settings.retry_base_seconds)


def policy(settings: Settings) -> Policy:
    """The operator's membership policy the settings describe."""
    grace = settings.past_due_grace_days
    return Policy(
        revoke_action=settings.on_end,
        dispute_action=settings.on_dispute,
        past_due_keeps_access=grace is None or grace > 0,
        past_due_grace_seconds=None if grace is None else grace * 86400,
        unblock_manual_blocks=settings.unblock_manual,
        unpay_manual_paid=settings.unpay_manual,
        inquiries_are_disputes=settings.inquiries_are_disputes,
    )
