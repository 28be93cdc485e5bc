"""`bridge check` run as the operator runs it: a subprocess with an environment pointing at
the sandbox and the test Redis; it validates the configuration, including the products
file's group names, and exits non-zero naming what is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.embedded import free_port
from bridge.sandbox import SandboxServer
from bridge.sotion import SotionClient
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET

ROOT = Path(__file__).resolve().parents[1]
# Variables of the caller's environment that must not leak into the checked one.
_OWN_PREFIXES = ("SOTION_", "STRIPE_", "REDIS_", "BRIDGE_", "LEMONSQUEEZY_", "GUMROAD_")

RunCheck = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_check(redis_url: str, sotion: SandboxServer) -> RunCheck:
    """Run `bridge check` against the sandbox and the test Redis, with extra variables."""

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        env.update(
            REDIS_URL=redis_url,
            SOTION_API_KEY=SANDBOX_KEY,
            SOTION_API_URL=sotion.url,
            COLUMNS="250",  # rich wraps at the terminal width; keep each message on one line
        )
        env.update(extra)
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "check"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    """Everything the command printed."""
    return result.stdout + result.stderr


def test_check_with_reachable_redis_and_sotion_and_a_valid_products_file_exits_zero(
    run_check: RunCheck, sotion_api: SotionClient, tmp_path: Path
) -> None:
    sotion_api.create_access_group("Course")
    sotion_api.create_access_group("Members")
    products = tmp_path / "products.toml"
    products.write_text(
        'default_groups = ["Members"]\n\n[[products]]\nstripe_prices = ["price_1"]\n'
        'groups = ["Course"]\n'
    )

    result = run_check(BRIDGE_PRODUCTS=str(products))

    output = output_of(result)
    assert result.returncode == 0, output
    assert "redis: ok" in output
    assert "sotion: ok" in output
    assert "products: ok 1 rule(s), 2 group(s) found in Sotion" in output


def test_check_without_a_products_file_exits_zero(run_check: RunCheck) -> None:
    result = run_check()

    output = output_of(result)
    assert result.returncode == 0, output
    assert "redis: ok" in output
    assert "sotion: ok" in output
    assert "products:" not in output


def test_check_fails_naming_a_group_the_products_file_names_but_sotion_lacks(
    run_check: RunCheck, sotion_api: SotionClient, tmp_path: Path
) -> None:
    sotion_api.create_access_group("Course")
    products = tmp_path / "products.toml"
    products.write_text(
        '[[products]]\nstripe_prices = ["price_1"]\ngroups = ["Course", "Ghosts"]\n'
    )

    result = run_check(BRIDGE_PRODUCTS=str(products))

    output = output_of(result)
    assert result.returncode == 1, output
    assert "Ghosts" in output
    assert "BRIDGE_PRODUCTS" in output


def test_check_fails_naming_the_products_file_when_it_is_not_valid_toml(
    run_check: RunCheck, tmp_path: Path
) -> None:
    products = tmp_path / "products.toml"
    products.write_text('[[products]\nstripe_prices = ["price_1"]\n')

    result = run_check(BRIDGE_PRODUCTS=str(products))

    output = output_of(result)
    assert result.returncode == 1, output
    assert "BRIDGE_PRODUCTS" in output
    assert "invalid TOML" in output


def test_check_fails_when_sotion_refuses_the_api_key(run_check: RunCheck) -> None:
    result = run_check(SOTION_API_KEY="so_not_the_sandbox_key")

    output = output_of(result)
    assert result.returncode == 1, output
    assert "redis: ok" in output
    assert "sotion: ok" not in output
    assert "sotion: SOTION_API_KEY was refused by Sotion (401)" in output


def test_check_names_an_unreachable_redis_by_its_url_without_the_password(
    run_check: RunCheck,
) -> None:
    port = free_port()

    result = run_check(REDIS_URL=f"redis://:hunter2-password@127.0.0.1:{port}/0")

    output = output_of(result)
    assert result.returncode == 1, output
    assert f"redis: unreachable at redis://:***@127.0.0.1:{port}/0 (ConnectionError): " in output
    assert "hunter2-password" not in output
    assert "sotion: ok" in output  # the other checks still ran


def test_check_lists_each_provider_enabled_at_its_path_or_disabled_and_why(
    run_check: RunCheck,
) -> None:
    result = run_check(STRIPE_WEBHOOK_SECRET=STRIPE_SECRET)

    output = output_of(result)
    assert result.returncode == 0, output
    assert "stripe: enabled at /webhooks/stripe (1 signing secret, STRIPE_API_KEY unset)" in output
    assert "lemonsqueezy: disabled (LEMONSQUEEZY_WEBHOOK_SECRET unset;" in output
    assert "gumroad: disabled (GUMROAD_WEBHOOK_TOKEN unset;" in output
