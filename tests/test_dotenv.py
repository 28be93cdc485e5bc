"""`.env` is read by every process: its values fill in what the environment lacks, never
what it sets, and a line that is not NAME=value stops the start with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from bridge.sandbox import SandboxServer
from bridge.settings import SettingsError, load_env_file
from tests import commands
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET

# -- the file --------------------------------------------------------------------------


def test_values_fill_in_what_the_environment_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# a comment\n"
        "SOTION_API_KEY=so_from_the_file\n"
        "export BRIDGE_LOG_LEVEL=DEBUG\n"
        'BRIDGE_PRODUCTS="products file.toml"  # quoted: it has a space\n'
        "BRIDGE_DATA_DIR=/srv/bridge\n"
    )
    environ: dict[str, str] = {"BRIDGE_DATA_DIR": "/home/op/bridge"}

    loaded = load_env_file(environ=environ)

    assert loaded == Path(".env")
    assert environ["SOTION_API_KEY"] == "so_from_the_file"
    assert environ["BRIDGE_LOG_LEVEL"] == "DEBUG"
    assert environ["BRIDGE_PRODUCTS"] == "products file.toml"
    assert environ["BRIDGE_DATA_DIR"] == "/home/op/bridge"


def test_a_variable_the_environment_sets_keeps_its_value_even_empty(tmp_path: Path) -> None:
    env_file = tmp_path / "bridge.env"
    env_file.write_text("SOTION_API_KEY=so_from_the_file\nSTRIPE_WEBHOOK_SECRET=whsec_x\n")
    environ = {"SOTION_API_KEY": "so_from_the_environment", "STRIPE_WEBHOOK_SECRET": ""}

    load_env_file(env_file, environ)

    assert environ == {"SOTION_API_KEY": "so_from_the_environment", "STRIPE_WEBHOOK_SECRET": ""}


def test_a_bare_name_leaves_the_variable_as_the_environment_has_it(tmp_path: Path) -> None:
    env_file = tmp_path / "bridge.env"
    env_file.write_text("SOTION_API_KEY\nREDIS_URL\n")
    environ = {"REDIS_URL": "redis://r:6379/0"}

    load_env_file(env_file, environ)

    assert environ == {"REDIS_URL": "redis://r:6379/0"}


def test_no_dot_env_in_the_current_directory_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ: dict[str, str] = {}

    assert load_env_file(environ=environ) is None
    assert environ == {}


def test_bridge_env_file_names_the_file_read_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("BRIDGE_LOG_LEVEL=ERROR\n")
    (tmp_path / "prod.env").write_text("BRIDGE_LOG_LEVEL=WARNING\n")
    environ = {"BRIDGE_ENV_FILE": str(tmp_path / "prod.env")}

    load_env_file(environ=environ)

    assert environ["BRIDGE_LOG_LEVEL"] == "WARNING"


def test_a_named_file_that_does_not_exist_is_an_error_naming_the_variable(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nope.env"
    with pytest.raises(SettingsError) as caught:
        load_env_file(environ={"BRIDGE_ENV_FILE": str(missing)})
    assert str(caught.value) == (
        f"BRIDGE_ENV_FILE ({missing}): cannot read the file: No such file or directory"
    )


@pytest.mark.parametrize(
    ("text", "line", "name"),
    [
        pytest.param(
            "A=1\nSTRIPE_WEBHOOK_SECRET whsec_s3cr3t\n", 2, "STRIPE_WEBHOOK_SECRET", id="no-equals"
        ),
        pytest.param('SOTION_API_KEY="so_s3cr3t\nB=2\n', 1, "SOTION_API_KEY", id="open-quote"),
        pytest.param(
            "A=1\n\nGUMROAD_WEBHOOK_TOKEN='s3cr3t' x\n",
            3,
            "GUMROAD_WEBHOOK_TOKEN",
            id="junk-after-quote",
        ),
        pytest.param("=so_s3cr3t\n", 1, None, id="no-name"),
    ],
)
def test_a_malformed_line_is_named_by_number_without_its_value(
    tmp_path: Path, text: str, line: int, name: str | None
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(text)
    environ: dict[str, str] = {}

    with pytest.raises(SettingsError) as caught:
        load_env_file(env_file, environ)

    message = str(caught.value)
    about = f" ({name})" if name else ""
    assert message.startswith(f"{env_file}: line {line}{about} is not NAME=value")
    assert "s3cr3t" not in message
    assert environ == {}  # nothing applied from a file that is wrong


# -- the processes read it --------------------------------------------------------------


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    """The directory the commands run in: where their `.env` is."""
    directory = tmp_path / "site"
    directory.mkdir()
    return directory


def test_check_uses_dot_env_values_the_environment_lacks(
    env_dir: Path, redis_url: str, sotion: SandboxServer
) -> None:
    (env_dir / ".env").write_text(
        f"REDIS_URL={redis_url}\nSOTION_API_URL={sotion.url}\nSOTION_API_KEY={SANDBOX_KEY}\n"
    )

    result = commands.bridge("check", env=commands.environment(), cwd=env_dir)

    output = "\n".join(commands.lines(result))
    assert result.returncode == 0, output
    assert "config: ok (variables from .env)" in output
    assert "redis: ok" in output
    assert "sotion: ok" in output


def test_check_ignores_dot_env_values_the_environment_sets(
    env_dir: Path, redis_url: str, sotion: SandboxServer
) -> None:
    (env_dir / ".env").write_text(
        f"REDIS_URL={redis_url}\nSOTION_API_URL={sotion.url}\nSOTION_API_KEY=so_stale_key\n"
    )
    env = commands.environment(SOTION_API_KEY=SANDBOX_KEY)

    kept = commands.bridge("check", env=env, cwd=env_dir)
    from_file = commands.bridge("check", env=commands.environment(), cwd=env_dir)

    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "sotion: ok" in kept.stdout
    # The same file alone: its stale key is the one used, and refused.
    assert from_file.returncode == 1
    assert "sotion: SOTION_API_KEY was refused by Sotion (401)" in from_file.stdout


def test_env_file_option_reads_that_file(
    env_dir: Path, redis_url: str, sotion: SandboxServer
) -> None:
    (env_dir / ".env").write_text("SOTION_API_KEY=so_not_this_one\n")
    (env_dir / "prod.env").write_text(
        f"REDIS_URL={redis_url}\nSOTION_API_URL={sotion.url}\nSOTION_API_KEY={SANDBOX_KEY}\n"
    )

    result = commands.bridge(
        "--env-file", "prod.env", "check", env=commands.environment(), cwd=env_dir
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "config: ok (variables from prod.env)" in result.stdout


@pytest.mark.parametrize("command", [("check",), ("worker", "--burst"), ("jobs", "failed")])
def test_a_malformed_dot_env_stops_every_command_with_one_line(
    env_dir: Path, command: tuple[str, ...]
) -> None:
    (env_dir / ".env").write_text(
        f"SOTION_API_KEY={SANDBOX_KEY}\n\nSTRIPE_WEBHOOK_SECRET {STRIPE_SECRET}\n"
    )

    result = commands.bridge(*command, env=commands.environment(), cwd=env_dir)

    assert result.returncode == 1
    assert commands.lines(result) == [
        "Error: .env: line 3 (STRIPE_WEBHOOK_SECRET) is not NAME=value (a value with spaces "
        "or # needs quotes; a quote must be closed)"
    ]


def test_worker_reads_dot_env(env_dir: Path, redis_url: str, sotion: SandboxServer) -> None:
    (env_dir / ".env").write_text(
        f"REDIS_URL={redis_url}\nSOTION_API_URL={sotion.url}\nSOTION_API_KEY={SANDBOX_KEY}\n"
        f"STRIPE_WEBHOOK_SECRET={STRIPE_SECRET}\n"
    )

    result = commands.worker("--burst", env=commands.environment(), cwd=env_dir)

    output = "\n".join(commands.lines(result))
    assert result.returncode == 0, output
    assert "stripe: enabled at /webhooks/stripe" in output
    assert "sotion: site " in output


def test_web_under_gunicorn_reads_dot_env_in_every_worker(
    env_dir: Path, redis_url: str, sotion: SandboxServer
) -> None:
    (env_dir / ".env").write_text(f"REDIS_URL={redis_url}\nSTRIPE_WEBHOOK_SECRET={STRIPE_SECRET}\n")

    with commands.web(commands.environment(), env_dir) as web:
        web.wait_ready()
        body = se.encode(se.event("product.created", {"id": "prod_1", "object": "product"}))
        responses = [
            requests.post(
                f"{web.base}/webhooks/stripe",
                data=body,
                headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)},
                timeout=5,
            )
            for _ in range(4)
        ]
        output = "\n".join(web.lines())

    assert "stripe: enabled at /webhooks/stripe" in output
    # Signed with the file's secret and accepted (an irrelevant event: 200, nothing queued).
    assert [response.status_code for response in responses] == [200] * 4, output
