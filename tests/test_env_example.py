""".env.example lists every variable the bridge reads, each commented out under a one-line
description, with its default: uncommenting a line as it is changes nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bridge.settings import ENV_FILE_VARIABLE, Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / ".env.example"
# The accessors of settings.py's _Env that also read NAME_FILE (a secret from a file).
_SECRET_ACCESSORS = ("secret", "secret_list")
# os.environ reads elsewhere: environ.get("NAME"), environ["NAME"], env.setdefault("NAME").
_ENVIRON_READ = re.compile(
    r"\b(?:os\.environ|environ|env)(?:\.get|\.setdefault|\.pop)?\s*[\[(]\s*\"([A-Z][A-Z0-9_]+)\""
)
# $NAME or ${NAME...} in the deployment files.
_SHELL_VARIABLE = re.compile(r"\$\{?([A-Z][A-Z0-9_]+)")
_EXAMPLE_LINE = re.compile(r"^# ([A-Z][A-Z0-9_]+)=(.*)$")


def settings_variables() -> set[str]:
    """Every variable ``Settings.from_env`` reads: the names given to its ``env.*`` calls."""
    tree = ast.parse((ROOT / "bridge" / "settings.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "env"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
            if node.func.attr in _SECRET_ACCESSORS:
                names.add(f"{node.args[0].value}_FILE")
    return names


def other_variables() -> set[str]:
    """Variables read outside Settings: by the code directly, the Procfile, the Dockerfile
    and the compose file."""
    names = {ENV_FILE_VARIABLE}
    for source in [*(ROOT / "bridge").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        names.update(_ENVIRON_READ.findall(source.read_text()))
    for deployment in ("Procfile", "Dockerfile", "docker-compose.yml"):
        path = ROOT / deployment
        if path.exists():
            names.update(_SHELL_VARIABLE.findall(path.read_text()))
    return names


def example_lines() -> list[str]:
    """The lines of .env.example."""
    return EXAMPLE.read_text().splitlines()


def example_defaults() -> dict[str, str]:
    """Each variable .env.example lists, with the value it shows."""
    listed: dict[str, str] = {}
    for line in example_lines():
        match = _EXAMPLE_LINE.match(line)
        if match:
            assert match.group(1) not in listed, f"{match.group(1)} is listed twice"
            listed[match.group(1)] = match.group(2)
    return listed


def test_settings_variables_are_found() -> None:
    # The parsing above must see what Settings reads, or the tests below prove nothing.
    assert {"REDIS_URL", "SOTION_API_KEY", "SOTION_API_KEY_FILE", "BRIDGE_LOG_LEVEL"} <= (
        settings_variables()
    )
    assert {"PORT", "WEB_CONCURRENCY", "BRIDGE_ENV_FILE"} <= other_variables()


def test_env_example_lists_every_variable_the_bridge_reads() -> None:
    missing = (settings_variables() | other_variables()) - set(example_defaults())
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_lists_no_variable_the_bridge_does_not_read() -> None:
    stale = set(example_defaults()) - settings_variables() - other_variables()
    assert not stale, f".env.example lists {sorted(stale)}, which nothing reads"


def test_every_variable_is_commented_out_under_a_description_of_its_own() -> None:
    lines = example_lines()
    for number, line in enumerate(lines):
        assert not re.match(r"^\s*(export\s+)?[A-Za-z_]+\s*=", line), f"set, not commented: {line}"
        if _EXAMPLE_LINE.match(line):
            above = lines[number - 1] if number else ""
            assert above.startswith("# ") and not _EXAMPLE_LINE.match(above), (
                f"{line} has no description line above it"
            )


@pytest.mark.parametrize("name", sorted(settings_variables()))
def test_uncommenting_a_line_as_it_is_changes_no_setting(name: str) -> None:
    value = example_defaults().get(name, "")  # a missing one fails the listing test
    assert Settings.from_env({name: value}) == Settings.from_env({}), (
        f"# {name}={value} in .env.example is not the default"
    )
