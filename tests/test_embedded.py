"""The embedded redis-server: its port across starts, and a stray one left by a killed run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.embedded import EmbeddedRedis, process_alive, stop_stray


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
