"""What the suite's benchmarks share: signed Stripe events, a recording sandbox, processes.

The processes are the Procfile's, started as written (``bridge/runner.py``): gunicorn with
``-c python:bridge.gunicorn_conf`` and ``bridge worker``, against a private redis-server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bridge.runner import gunicorn_command, worker_command
from bridge.sandbox import SandboxConfig, SandboxServer
from tests import stripe_events as se

ROOT = Path(__file__).resolve().parents[1]
KEY = "so_bench"
# Shaped like a real signing secret (whsec_ + 24+ letters and digits), known to be public.
SECRET = "whsec_benchOnlyPublicNotASecret0000"
JSONObject = dict[str, Any]


# -- signed Stripe events ---------------------------------------------------------------


def purchase(email: str, ref: str) -> JSONObject:
    """A paid one-time Checkout Session event, every id unique to ``ref``."""
    obj: JSONObject = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj.update(id=f"cs_{ref}", customer=f"cus_{ref}", payment_intent=f"pi_{ref}")
    obj["customer_details"]["email"] = email
    return se.event("checkout.session.completed", obj)


def subscription_checkout(email: str, ref: str) -> JSONObject:
    """A paid mode=subscription Checkout Session event for subscription ``sub_<ref>``."""
    obj: JSONObject = se.fixture("checkout_session_completed_subscription")["data"]["object"]
    obj.update(
        id=f"cs_{ref}", payment_status="paid", subscription=f"sub_{ref}", customer=f"cus_{ref}"
    )
    obj["customer_details"]["email"] = email
    return se.event("checkout.session.completed", obj, created=int(time.time()) - 100)


def renewal(email: str, ref: str) -> JSONObject:
    """``invoice.paid`` for the next period of ``sub_<ref>``: nothing changes."""
    obj: JSONObject = se.fixture("invoice_payment_failed")["data"]["object"]
    invoice_id = f"in_{ref}_{uuid.uuid4().hex[:8]}"
    obj.update(id=invoice_id, customer=f"cus_{ref}", customer_email=email, status="paid")
    obj.update(amount_paid=obj["amount_due"], amount_remaining=0)
    obj["status_transitions"]["paid_at"] = int(time.time()) - 50
    obj["parent"]["subscription_details"]["subscription"] = f"sub_{ref}"
    for line in obj["lines"]["data"]:
        line["parent"]["subscription_item_details"]["subscription"] = f"sub_{ref}"
        line["invoice"] = invoice_id
    return se.event("invoice.paid", obj, created=int(time.time()) - 50)


def cancellation(ref: str) -> JSONObject:
    """``customer.subscription.deleted`` for ``sub_<ref>``: the member loses paid access."""
    obj: JSONObject = se.fixture("customer_subscription_deleted")["data"]["object"]
    obj.update(id=f"sub_{ref}", customer=f"cus_{ref}", status="canceled")
    for item in obj["items"]["data"]:
        item["subscription"] = f"sub_{ref}"
    return se.event("customer.subscription.deleted", obj)


def signed(payload: JSONObject) -> tuple[bytes, dict[str, str]]:
    """The raw body and the headers Stripe would send."""
    body = se.encode(payload)
    headers = {"Stripe-Signature": se.sign(body, SECRET), "Content-Type": "application/json"}
    return body, headers


# -- the Sotion sandbox, recorded -------------------------------------------------------


@dataclass
class Call:
    """One request the sandbox answered."""

    method: str
    path: str
    arrived: float
    wall: float = 0.0  # time.time(): the sandbox's rate-limit windows are aligned on it
    status: int = 0


@dataclass
class Recorder:
    """WSGI middleware in front of the sandbox: every request, its arrival and status."""

    app: Any
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Record, then answer as the sandbox does."""
        path = environ["PATH_INFO"].removeprefix("/api/v1")
        call = Call(environ["REQUEST_METHOD"], path, time.perf_counter(), time.time())
        with self.lock:
            self.calls.append(call)

        def recording(status: str, headers: Any, exc_info: Any = None) -> Any:
            call.status = int(status.split()[0])
            return start_response(status, headers, exc_info)

        body: Iterable[bytes] = self.app(environ, recording)
        return body

    def snapshot(self) -> list[Call]:
        """The calls so far, oldest first."""
        with self.lock:
            return list(self.calls)

    def writes(self) -> list[Call]:
        """The member writes (POST, PATCH) so far."""
        return [c for c in self.snapshot() if c.method in ("POST", "PATCH")]


def sandbox(rate_limit: str | None = None) -> tuple[SandboxServer, Recorder]:
    """A started sandbox (no limit unless given) with a recorder in front of it."""
    server = SandboxServer(SandboxConfig(api_key=KEY, rate_limit=rate_limit), port=0).start()
    recorder = Recorder(server.app.wsgi_app)
    server.app.wsgi_app = recorder  # type: ignore[method-assign]
    return server, recorder


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(redis_url: str, sotion_url: str = "http://127.0.0.1:9/api/v1") -> dict[str, str]:
    """The processes' environment: this one without bridge settings, plus the bench's."""
    prefixes = ("SOTION_", "STRIPE_", "REDIS_", "BRIDGE_", "LEMONSQUEEZY_", "GUMROAD_", "RQ_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        REDIS_URL=redis_url,
        SOTION_API_URL=sotion_url,
        SOTION_API_KEY=KEY,
        STRIPE_WEBHOOK_SECRET=SECRET,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
        BRIDGE_LOG_LEVEL="WARNING",
    )
    return env


@dataclass
class Process:
    """A started process (a session of its own) and its log."""

    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM its group, then SIGKILL it if it has not exited after 30 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self) -> str:
        """The end of its log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start(command: list[str], env: dict[str, str], log: Path) -> Process:
    """Start ``command`` in the repository with ``env``, output to ``log``."""
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Process(popen, log)


def start_web(env: dict[str, str], log: Path, app: str | None = None) -> tuple[Process, str]:
    """The Procfile's web process (or the same gunicorn serving ``app``); waits for it."""
    port = free_port()
    command = gunicorn_command("127.0.0.1", port)
    if app is not None:
        command[-1] = app
    process = start(command, env, log)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url), 30, f"gunicorn on {url}", process)
    return process, url


def start_worker(env: dict[str, str], log: Path) -> Process:
    """The Procfile's worker process."""
    return start(worker_command(), env, log)


def _answers(url: str) -> bool:
    try:
        requests.get(f"{url}/healthz", timeout=1)
    except requests.ConnectionError:
        return False
    return True


def wait_for(check: Callable[[], Any], timeout: float, what: str, *logs: Process) -> Any:
    """Poll ``check`` until truthy (returned); raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            tails = "\n".join(p.tail() for p in logs)
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(0.01)
    return result


def peak_rss_mb(pid: int) -> float:
    """The peak resident set of ``pid`` in MiB: /proc's VmHWM, else psutil's current RSS
    (psutil reports no peak on Linux; 0.0 when neither is available)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return 0.0
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (gunicorn's workers, for its arbiter)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found
