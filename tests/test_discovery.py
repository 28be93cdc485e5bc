"""Finding the bridge's Redis, the data dir's lock and the run record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bridge import discovery
from bridge.cli import main
from bridge.embedded import EmbeddedRedis, free_port
from bridge.sandbox import SandboxServer
from bridge.settings import Settings
from tests.conftest import SANDBOX_KEY

# A process that takes the data dir's lock, says so, and holds it until killed.
_HOLDER = """
import sys, time
from pathlib import Path
from bridge.discovery import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of ``tmp_path / "data"``."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of its own, as a `bridge run` starts one."""
    with EmbeddedRedis(tmp_path / "data" / "redis", persistent=False) as server:
        yield server


def _record(server: EmbeddedRedis, pid: int | None = None) -> discovery.RunRecord:
    return discovery.new_record(
        "http://127.0.0.1:8000",
        redis_url=server.url,
        redis_pid=pid if pid is not None else server.pid,
        redis_dir=server.data_dir,
    )


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)  # type: ignore[arg-type]


# -- the lock ----------------------------------------------------------------------------


def test_a_second_run_on_a_locked_data_dir_is_told_the_holders_pid(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    with pytest.raises(discovery.AlreadyRunningError) as raised:
        discovery.RunLock(tmp_path / "data").acquire()
    assert raised.value.pid == holder.pid
    assert str(tmp_path / "data") in str(raised.value)
    assert f"pid {holder.pid}" in str(raised.value)


def test_the_lock_frees_itself_when_its_holder_is_killed(
    holder: subprocess.Popen[str], tmp_path: Path
) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with discovery.RunLock(tmp_path / "data") as lock:
        assert (tmp_path / "data" / discovery.LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(discovery.AlreadyRunningError):
            discovery.RunLock(tmp_path / "data").acquire()
    discovery.RunLock(tmp_path / "data").acquire().release()
    assert lock.path.exists()


# -- the record --------------------------------------------------------------------------


def test_the_run_record_is_replaced_whole_and_leaves_no_temporary_file(
    embedded: EmbeddedRedis, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    discovery.write_record(data, _record(embedded, pid=1))
    latest = _record(embedded)
    discovery.write_record(data, latest)
    assert discovery.read_record(data) == latest
    assert sorted(p.name for p in data.iterdir()) == ["redis", discovery.RECORD_NAME]
    discovery.remove_record(data)
    assert discovery.read_record(data) is None


def test_an_unreadable_run_record_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / discovery.RECORD_NAME).write_text('{"pid": ')
    assert discovery.read_record(tmp_path / "data") is None


# -- locating Redis ----------------------------------------------------------------------


def test_redis_url_wins_over_a_running_bridges_redis(
    embedded: EmbeddedRedis, tmp_path: Path
) -> None:
    discovery.write_record(tmp_path / "data", _record(embedded))
    given = f"redis://127.0.0.1:{free_port()}/0"
    assert discovery.locate(_settings(tmp_path, redis_url=given)) == given


def test_the_recorded_embedded_redis_is_found_when_redis_url_is_unset(
    embedded: EmbeddedRedis, tmp_path: Path
) -> None:
    discovery.write_record(tmp_path / "data", _record(embedded))
    assert discovery.locate(_settings(tmp_path)) == embedded.url
    assert discovery.connect(_settings(tmp_path)).ping() is True


def test_a_recorded_port_served_by_another_redis_is_not_used(
    embedded: EmbeddedRedis, tmp_path: Path
) -> None:
    assert embedded.pid is not None
    discovery.write_record(tmp_path / "data", _record(embedded, pid=embedded.pid + 100_000))
    with pytest.raises(discovery.RedisNotFoundError, match="does not answer"):
        discovery.locate(_settings(tmp_path))


def test_without_redis_url_or_a_running_bridge_the_message_says_what_to_do(
    tmp_path: Path,
) -> None:
    with pytest.raises(discovery.RedisNotFoundError) as raised:
        discovery.locate(_settings(tmp_path))
    assert str(raised.value) == (
        "no Redis: set REDIS_URL, or start the bridge with `bridge run` "
        f"(none is running for data dir {tmp_path / 'data'})"
    )


def test_a_running_bridge_given_a_redis_url_is_named(tmp_path: Path) -> None:
    record = discovery.new_record("http://127.0.0.1:8000", redis_dir=tmp_path / "data")
    discovery.write_record(tmp_path / "data", record)
    with pytest.raises(discovery.RedisNotFoundError, match=f"pid {os.getpid()}.*REDIS_URL"):
        discovery.locate(_settings(tmp_path))


# -- the commands ------------------------------------------------------------------------


@pytest.fixture
def env(sotion: SandboxServer, tmp_path: Path) -> dict[str, str | None]:
    """A bridge's environment without REDIS_URL, on a data dir of the test's own."""
    return {
        "REDIS_URL": None,
        "BRIDGE_DATA_DIR": str(tmp_path / "data"),
        "SOTION_API_URL": sotion.url,
        "SOTION_API_KEY": SANDBOX_KEY,
        "STRIPE_API_KEY": "sk_test_123",
    }


@pytest.mark.parametrize(
    "command",
    [["jobs", "failed"], ["jobs", "parked"], ["jobs", "replay", "--all"], ["reconcile"]],
)
def test_commands_without_a_redis_say_so_in_one_line(
    command: list[str], env: dict[str, str | None]
) -> None:
    result = CliRunner().invoke(main, command, env=env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a ClickException, not a traceback
    assert result.output.splitlines() == [
        "Error: no Redis: set REDIS_URL, or start the bridge with `bridge run` "
        f"(none is running for data dir {env['BRIDGE_DATA_DIR']})"
    ]


def test_commands_with_an_unreachable_redis_url_say_so_in_one_line(
    env: dict[str, str | None],
) -> None:
    closed = dict(env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(main, ["jobs", "failed"], env=closed)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.splitlines() == ["Error: Redis is unreachable (ConnectionError)"]


def test_jobs_commands_use_the_recorded_embedded_redis(
    embedded: EmbeddedRedis, env: dict[str, str | None], tmp_path: Path
) -> None:
    discovery.write_record(tmp_path / "data", _record(embedded))
    result = CliRunner().invoke(main, ["jobs", "failed"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no failed jobs"


def test_worker_and_check_without_a_redis_say_so_in_one_line(
    env: dict[str, str | None],
) -> None:
    worker = CliRunner().invoke(main, ["worker", "--burst"], env=env)
    assert worker.exit_code == 1
    assert worker.output.splitlines()[-1].startswith("Error: no Redis: set REDIS_URL")
    check = CliRunner().invoke(main, ["check"], env=env)
    assert check.exit_code == 0, check.output
    assert "redis: REDIS_URL unset (bridge run starts an embedded one)" in check.output


def test_worker_and_check_use_the_recorded_embedded_redis(
    embedded: EmbeddedRedis, env: dict[str, str | None], tmp_path: Path
) -> None:
    discovery.write_record(tmp_path / "data", _record(embedded))
    check = CliRunner().invoke(main, ["check"], env=env)
    assert check.exit_code == 0, check.output
    assert "redis: embedded, of the bridge running on" in check.output
    assert "redis: ok" in check.output
    worker = CliRunner().invoke(main, ["worker", "--burst"], env=env)
    assert worker.exit_code == 0, worker.output
    # It ran there: its scheduler put the periodic reconcile in that Redis.
    assert redis.Redis.from_url(embedded.url).exists("bridge:reconcile:next") == 1
