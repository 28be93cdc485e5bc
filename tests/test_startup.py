"""Start-up: each process logs one line per provider, the worker checks Redis and Sotion
before its first job, and every start-up error is one line naming the variable or the
service, never a traceback. The processes run as the Procfile and `bridge run` start them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from flask import Flask

from bridge.embedded import free_port
from bridge.redact import MASK
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from bridge.startup import WEBHOOK_PATHS, masked_url, providers
from tests import commands
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET

GUMROAD_TOKEN = "gumroadTokenNeverPrinted0123456789abcdef"
REDIS_PASSWORD = "hunter2-redis-password"


@pytest.fixture
def base_env(redis_url: str, sotion: SandboxServer) -> dict[str, str]:
    """A working configuration: the test Redis and the sandbox."""
    return commands.environment(
        REDIS_URL=redis_url, SOTION_API_URL=sotion.url, SOTION_API_KEY=SANDBOX_KEY
    )


# -- the banner -----------------------------------------------------------------------


def test_provider_lines_say_where_each_is_served_or_why_it_is_not() -> None:
    settings = Settings(
        stripe_webhook_secrets=(STRIPE_SECRET, "whsec_" + "0ld" * 11),
        stripe_api_key="sk_test_abc123",
        gumroad_webhook_token=GUMROAD_TOKEN,
        gumroad_seller_id="seller42",
    )

    lines = [state.line() for state in providers(settings)]

    assert lines == [
        "stripe: enabled at /webhooks/stripe (2 signing secrets, STRIPE_API_KEY set)",
        "lemonsqueezy: disabled (LEMONSQUEEZY_WEBHOOK_SECRET unset; LEMONSQUEEZY_API_KEY unset)",
        "gumroad: enabled at /webhooks/gumroad/*** (seller seller42 only, "
        "GUMROAD_ACCESS_TOKEN unset)",
    ]


def test_banner_paths_are_the_apps_webhook_routes(app: Flask) -> None:
    urls = app.url_map.bind("bridge.test")
    for provider, path in WEBHOOK_PATHS.items():
        concrete = path.replace(MASK, GUMROAD_TOKEN)
        endpoint, _ = urls.match(concrete, method="POST")
        assert endpoint == f"bridge.{provider}_webhook"
    assert WEBHOOK_PATHS["gumroad"] == f"/webhooks/gumroad/{MASK}"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@host:6379/0", f"redis://:{MASK}@host:6379/0"),
        ("rediss://default:s3cret@host:6380", f"rediss://default:{MASK}@host:6380"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        (
            "unix:///tmp/redis.sock?db=0&password=s3cret",
            f"unix:///tmp/redis.sock?db=0&password={MASK}",
        ),
    ],
)
def test_masked_url_hides_the_password(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_worker_logs_one_line_per_provider_and_the_site(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(base_env, STRIPE_WEBHOOK_SECRET=STRIPE_SECRET, GUMROAD_WEBHOOK_TOKEN=GUMROAD_TOKEN)

    result = commands.worker("--burst", env=env, cwd=tmp_path)

    output = commands.lines(result)
    assert result.returncode == 0, "\n".join(output)
    for expected in (
        "stripe: enabled at /webhooks/stripe (1 signing secret, STRIPE_API_KEY unset)",
        "lemonsqueezy: disabled (LEMONSQUEEZY_WEBHOOK_SECRET unset; LEMONSQUEEZY_API_KEY unset)",
        "gumroad: enabled at /webhooks/gumroad/*** (any seller, GUMROAD_ACCESS_TOKEN unset)",
    ):
        assert sum(line.endswith(f"logger=bridge.startup {expected}") for line in output) == 1
    assert any(" worker starting products=none " in line for line in output)
    assert any("logger=workers.work_loop sotion: site " in line for line in output)
    assert GUMROAD_TOKEN not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_web_logs_the_banner_once_whatever_its_worker_count(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(base_env, GUMROAD_WEBHOOK_TOKEN=GUMROAD_TOKEN)

    with commands.web(env, tmp_path) as web:
        web.wait_ready()
        deadline = time.monotonic() + 20
        while sum("Booting worker" in line for line in web.lines()) < 2:
            assert time.monotonic() < deadline, "\n".join(web.lines())
            time.sleep(0.1)
        for _ in range(4):
            assert requests.get(f"{web.base}/readyz", timeout=5).status_code == 200
        output = web.lines()

    for expected in (
        "stripe: disabled (STRIPE_WEBHOOK_SECRET unset; STRIPE_API_KEY unset)",
        "lemonsqueezy: disabled (LEMONSQUEEZY_WEBHOOK_SECRET unset; LEMONSQUEEZY_API_KEY unset)",
        "gumroad: enabled at /webhooks/gumroad/*** (any seller, GUMROAD_ACCESS_TOKEN unset)",
    ):
        assert sum(line.endswith(f"logger=bridge.startup {expected}") for line in output) == 1
    assert sum(" web starting products=none " in line for line in output) == 1
    assert GUMROAD_TOKEN not in "\n".join(output)
    assert not [line for line in output if "Traceback" in line or "MonkeyPatchWarning" in line]


def test_web_start_up_in_gunicorns_master_imports_neither_redis_nor_requests(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    # Imported before gevent patches the standard library in the workers, they would keep
    # unpatched references (gevent warns about it in every worker).
    script = (
        "import sys; import bridge.gunicorn_conf as conf; conf.on_starting(None); "
        "print(sorted(m for m in ('redis', 'rq', 'requests') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


# -- start-up errors: one line, no traceback ------------------------------------------


@dataclass
class Where:
    """What a case's configuration points at."""

    sotion: SandboxServer
    tmp: Path
    closed_port: int  # nothing listens there


@dataclass
class Case:
    """A broken configuration and the start of the line that must say what is wrong."""

    variables: Callable[[Where], dict[str, str]]
    line: Callable[[Where], str]


@pytest.fixture
def where(sotion: SandboxServer, tmp_path: Path) -> Where:
    """The sandbox, the test's directory and a port nothing listens on."""
    return Where(sotion, tmp_path, free_port())


WORKER_CASES = {
    "redis-unreachable": Case(
        lambda w: {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{w.closed_port}/0"},
        lambda w: (
            f"Error: redis unreachable at redis://:{MASK}@127.0.0.1:{w.closed_port}/0 "
            "(ConnectionError): "
        ),
    ),
    "redis-url-unset": Case(
        lambda w: {"REDIS_URL": ""},
        lambda w: "Error: no Redis: set REDIS_URL, or start the bridge with `bridge run`",
    ),
    "products-file-missing": Case(
        lambda w: {"BRIDGE_PRODUCTS": str(w.tmp / "missing.toml")},
        lambda w: (
            f"Error: BRIDGE_PRODUCTS ({w.tmp / 'missing.toml'}): cannot read the file: "
            "No such file or directory"
        ),
    ),
    "products-file-invalid": Case(
        lambda w: {"BRIDGE_PRODUCTS": str(_write(w.tmp / "products.toml", "[[products]\n"))},
        lambda w: f"Error: BRIDGE_PRODUCTS ({w.tmp / 'products.toml'}): invalid TOML: ",
    ),
    "sotion-key-refused": Case(
        lambda w: {"SOTION_API_KEY": "so_another_sites_key"},
        lambda w: "Error: SOTION_API_KEY was refused by Sotion (401): ",
    ),
    "sotion-url-has-no-site": Case(
        lambda w: {"SOTION_API_URL": f"{w.sotion.root_url}/api/v0"},
        lambda w: f"Error: SOTION_API_URL {w.sotion.root_url}/api/v0 has no site (404): ",
    ),
    "sotion-unreachable": Case(
        lambda w: {"SOTION_API_URL": f"http://127.0.0.1:{w.closed_port}/api/v1"},
        lambda w: (
            f"Error: sotion unreachable at http://127.0.0.1:{w.closed_port}/api/v1 "
            "(SOTION_API_URL): [Errno 111] Connection refused"
        ),
    ),
    "sotion-key-unset": Case(
        lambda w: {"SOTION_API_KEY": ""},
        lambda w: "Error: SOTION_API_KEY is required to run workers",
    ),
    "malformed-number": Case(
        lambda w: {"BRIDGE_RETRY_ATTEMPTS": "lots"},
        lambda w: "Error: BRIDGE_RETRY_ATTEMPTS must be a number, not 'lots'",
    ),
    "malformed-stripe-secret": Case(
        lambda w: {"STRIPE_WEBHOOK_SECRET": "sk_live_notasigningsecret0123456789"},
        lambda w: "Error: STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret",
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", WORKER_CASES.values(), ids=WORKER_CASES.keys())
def test_worker_refuses_to_start_with_one_line_naming_what_is_wrong(
    case: Case, base_env: dict[str, str], where: Where
) -> None:
    env = dict(base_env, **case.variables(where))

    result = commands.worker(env=env, cwd=where.tmp, timeout=30)

    output = commands.lines(result)
    assert result.returncode == 1, "\n".join(output)
    assert len(output) == 1, "\n".join(output)
    assert output[0].startswith(case.line(where)), output[0]
    assert REDIS_PASSWORD not in output[0]


WEB_CASES = {
    "malformed-number": WORKER_CASES["malformed-number"],
    "malformed-stripe-secret": WORKER_CASES["malformed-stripe-secret"],
    "products-file-missing": WORKER_CASES["products-file-missing"],
    "redis-url-unset": Case(
        lambda w: {"REDIS_URL": ""},
        lambda w: "Error: REDIS_URL is required here (bridge run starts an embedded one)",
    ),
    "placeholder-key": Case(
        lambda w: {"SOTION_API_KEY": "so_your_key"},
        lambda w: "Error: SOTION_API_KEY is a placeholder, not a real secret",
    ),
}


@pytest.mark.parametrize("case", WEB_CASES.values(), ids=WEB_CASES.keys())
def test_web_refuses_to_start_with_one_line_naming_what_is_wrong(
    case: Case, base_env: dict[str, str], where: Where
) -> None:
    env = dict(base_env, **case.variables(where))

    web = commands.Web(env, where.tmp, where.tmp / "web.log")
    try:
        code = web.wait(timeout=30)
    finally:
        web.stop()

    output = commands.without_gunicorn_start(web.lines())
    assert code == 1, "\n".join(web.lines())
    assert len(output) == 1, "\n".join(web.lines())
    assert output[0].startswith(case.line(where)), output[0]


def test_web_starts_when_redis_is_unreachable_and_says_so_at_readyz(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    # Webhooks answer 503 while Redis is away (the providers retry): no reason not to serve.
    env = dict(base_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    with commands.web(env, tmp_path) as web:
        deadline = time.monotonic() + 30
        while True:
            try:
                status = requests.get(f"{web.base}/readyz", timeout=1).status_code
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "\n".join(web.lines())
                assert web.process.poll() is None, "\n".join(web.lines())
                time.sleep(0.1)

    assert status == 503


def test_version_option_prints_the_installed_version(tmp_path: Path) -> None:
    result = commands.bridge("--version", env=commands.environment(), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bridge {version('sotion-bridge')}"
