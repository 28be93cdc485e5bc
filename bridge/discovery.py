"""Where the bridge's Redis is: ``REDIS_URL``, else the embedded one ``bridge run`` started.

A ``bridge run`` holds its data dir's lock (``run.lock``, an ``flock`` the kernel drops
when the process ends, even by SIGKILL) for its whole life, and writes where it is to
the run record (``run.json``): its pid and, with an embedded Redis, that server's URL and
pid. Every other command reads the record to find the Redis when ``REDIS_URL`` is unset.
The embedded Redis gets a new port when the old one is taken, so nothing may assume one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import redis

from bridge.embedded import process_alive, redis_server_pid
from bridge.queues import connect as connect_url
from bridge.settings import Settings, SettingsError

# The lock a running `bridge run` holds, in the data dir (never deleted: a process may
# have it open, and a new file would be a second lock).
LOCK_NAME = "run.lock"
# The run record, in the data dir; removed when the run ends cleanly.
RECORD_NAME = "run.json"


class AlreadyRunningError(RuntimeError):
    """Another ``bridge run`` holds the data dir's lock."""

    def __init__(self, data_dir: Path, pid: int | None):
        self.data_dir = data_dir
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"a bridge is already running on data dir {data_dir} ({holder}): stop it first, "
            "or give this one another BRIDGE_DATA_DIR"
        )


class RedisNotFoundError(SettingsError):
    """No Redis for the command: REDIS_URL unset and no running bridge, or no answer.

    A ``SettingsError``, so each command's handler of configuration errors prints it as
    one line.
    """


@dataclass(frozen=True)
class RunRecord:
    """What a running ``bridge run`` writes about itself."""

    pid: int
    web_url: str
    started_at: str
    # The embedded Redis; None when the run was given a REDIS_URL (never written down:
    # it may carry a password).
    redis_url: str | None = None
    redis_pid: int | None = None
    redis_dir: str | None = None
    # `bridge run --sandbox`: the local Sotion sandbox's API (its key is public).
    sandbox_url: str | None = None


class RunLock:
    """The data dir's lock, held by one ``bridge run`` for its whole life."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``AlreadyRunningError`` naming the holder's pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(os.pread(fd, 32, 0))
            os.close(fd)
            raise AlreadyRunningError(self.data_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the lock go (the file stays)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _pid_in(content: bytes) -> int | None:
    text = content.decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def new_record(
    web_url: str,
    *,
    redis_url: str | None = None,
    redis_pid: int | None = None,
    redis_dir: Path,
    sandbox_url: str | None = None,
) -> RunRecord:
    """The record of this process's run."""
    return RunRecord(
        pid=os.getpid(),
        web_url=web_url,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        redis_url=redis_url,
        redis_pid=redis_pid,
        redis_dir=str(redis_dir.resolve()) if redis_url is not None else None,
        sandbox_url=sandbox_url,
    )


def write_record(data_dir: Path, record: RunRecord) -> None:
    """Write the run record atomically: a reader sees the old one or the new one, whole."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{RECORD_NAME}.", dir=data_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(dataclasses.asdict(record), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, data_dir / RECORD_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_record(data_dir: Path) -> RunRecord | None:
    """The run record, or None if there is none (or it is not one we can read)."""
    try:
        raw = json.loads((data_dir / RECORD_NAME).read_text())
        fields = {f.name for f in dataclasses.fields(RunRecord)}
        return RunRecord(**{k: v for k, v in raw.items() if k in fields})
    except (OSError, ValueError, TypeError):
        return None


def remove_record(data_dir: Path) -> None:
    """Remove the run record (the run holding the lock ends)."""
    with contextlib.suppress(FileNotFoundError):
        (data_dir / RECORD_NAME).unlink()


def locate(settings: Settings) -> str:
    """The bridge's Redis URL: REDIS_URL, else the running ``bridge run``'s embedded one."""
    if settings.redis_url is not None:
        return settings.redis_url
    where = f"data dir {settings.data_dir}"
    record = read_record(Path(settings.data_dir))
    if record is not None and record.redis_url is None and process_alive(record.pid):
        raise RedisNotFoundError(
            f"no Redis: the bridge running on {where} (pid {record.pid}) was given a "
            "REDIS_URL: set the same one here"
        )
    if record is None or record.redis_url is None:
        raise RedisNotFoundError(
            "no Redis: set REDIS_URL, or start the bridge with `bridge run` "
            f"(none is running for {where})"
        )
    # The server at the recorded port must be the recorded one, not whatever took the port.
    if redis_server_pid(record.redis_url) != record.redis_pid:
        raise RedisNotFoundError(
            f"no Redis: the embedded Redis recorded for {where} ({record.redis_url}) does "
            "not answer: set REDIS_URL, or start the bridge with `bridge run`"
        )
    return record.redis_url


def connect(settings: Settings) -> redis.Redis:
    """A client of the bridge's Redis (see ``locate``) that has just answered PING."""
    url = locate(settings)
    client = connect_url(dataclasses.replace(settings, redis_url=url))
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        where = "" if settings.redis_url is not None else f" at {url}"
        raise RedisNotFoundError(f"Redis is unreachable{where} ({type(exc).__name__})") from exc
    return client
