"""No secret, token, signature or full email in anything a run of the real processes wrote.

The Procfile's web (gunicorn) and worker run with every secret configured; purchases,
forged requests, a mixed-case Gumroad URL, a malformed request line carrying the token
and a job that fails for good go through them. Then every log line they wrote and every
Redis key and value is searched for the secrets, and the logs and the stored failures
for the buyers' emails (Redis keeps emails only where the bridge needs them: ledgers,
member records, queued events).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from bridge.embedded import free_port
from bridge.sandbox import SandboxServer
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET
from tests.test_processes import _environment, _start, _stop, _wait_for, procfile

GUMROAD_TOKEN = "Gr0adT0ken_" + "q7Zp" * 8
LS_SECRET = "lsSigningSecret_" + "x9" * 8
EMAIL = "leaky.buyer+vip@example.com"
FAILING_EMAIL = "failing.buyer@example.com"


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes of the run; killed at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        _stop(process)


def _purchase(email: str, intent: str) -> bytes:
    obj = se.fixture("checkout_session_completed_payment")["data"]["object"]
    obj["customer_details"]["email"] = email
    obj["payment_intent"] = intent
    return se.encode(se.event("checkout.session.completed", obj))


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        try:
            return sock.recv(4096)
        except OSError:
            return b""


def _everything_in(connection: redis.Redis) -> str:
    """Every key and value of the Redis database, as text."""
    parts = []
    for key in connection.scan_iter(count=1000):
        parts.append(key.decode("utf-8", "replace"))
        kind = connection.type(key).decode()
        if kind == "string":
            values = [connection.get(key) or b""]
        elif kind == "hash":
            values = [v for pair in connection.hgetall(key).items() for v in pair]
        elif kind == "list":
            values = connection.lrange(key, 0, -1)
        elif kind == "set":
            values = list(connection.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [str(connection.xrange(key)).encode()]
        else:
            values = []
        parts.extend(v.decode("utf-8", "replace") for v in values)
    return "\n".join(parts)


def test_logs_and_redis_hold_no_secret_and_logs_and_failures_no_email(
    redis_url: str,
    sandbox_factory: type[SandboxServer] | object,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    sotion = sandbox_factory()  # type: ignore[operator]
    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    port = free_port()
    env = _environment(
        REDIS_URL=redis_url,
        PORT=str(port),
        SOTION_API_URL=sotion.url,
        SOTION_API_KEY=SANDBOX_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        LEMONSQUEEZY_WEBHOOK_SECRET=LS_SECRET,
        GUMROAD_WEBHOOK_TOKEN=GUMROAD_TOKEN,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
        BRIDGE_RETRY_ATTEMPTS="0",
        BRIDGE_LOG_LEVEL="DEBUG",
    )
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    started.append(_start(procfile()["web"], env, web_log))
    started.append(_start(procfile()["worker"], env, worker_log))
    base = f"http://127.0.0.1:{port}"
    logs = [web_log, worker_log]
    _wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 30, "web", logs)

    signatures = []
    body = _purchase(EMAIL, "pi_leak_ok")
    signatures.append(se.sign(body, STRIPE_SECRET))
    ok = requests.post(
        f"{base}/webhooks/stripe", data=body, headers={"Stripe-Signature": signatures[-1]}
    )
    assert ok.status_code == 200 and ok.json()["queued"] == 1
    _wait_for(lambda: sotion.state.members_snapshot() != [], 30, "the member", logs)

    # A job that fails for good: Sotion answers 503 and no retry is left.
    sotion.faults.inject("503", count=5)
    failing = _purchase(FAILING_EMAIL, "pi_leak_fail")
    signatures.append(se.sign(failing, STRIPE_SECRET))
    requests.post(
        f"{base}/webhooks/stripe", data=failing, headers={"Stripe-Signature": signatures[-1]}
    )
    _wait_for(lambda: connection.zcard("rq:failed:bridge") == 1, 30, "the failed job", logs)
    # Forgeries and odd requests that would once have logged the token or the body.
    requests.post(f"{base}/webhooks/stripe", data=body, headers={"Stripe-Signature": "t=1,v1=00"})
    requests.post(f"{base}/WEBHOOKS/GUMROAD/{GUMROAD_TOKEN}", data={"email": EMAIL})
    requests.post(f"{base}/webhooks/gumroad/{GUMROAD_TOKEN.upper()}x", data={"email": EMAIL})
    _raw(port, f"GET /webhooks/gumroad/{GUMROAD_TOKEN} HTTP/9.9 junk\r\n\r\n".encode())
    _raw(port, f"POST /webhooks/gumroad/{GUMROAD_TOKEN}?email={EMAIL} HTTP/1.1\r\n".encode())
    for process in started:
        _stop(process)

    written = "\n".join(log.read_text(errors="replace") for log in logs)
    stored = _everything_in(connection)
    failures = "\n".join(
        value
        for key in connection.scan_iter("rq:results:*")
        for value in [_everything_in_key(connection, key)]
    )
    secrets = [SANDBOX_KEY, STRIPE_SECRET, LS_SECRET, GUMROAD_TOKEN, *signatures]
    for secret in secrets:
        assert secret not in written, f"a secret is in the logs: {secret[:8]}..."
        assert secret.lower() not in written.lower()
        assert secret not in stored, f"a secret is in Redis: {secret[:8]}..."
    for email in (EMAIL, FAILING_EMAIL):
        assert email not in written, "a full email is in the logs"
        assert email not in failures, "a full email is in a stored failure"
    assert "l***@example.com" in written  # the lines are still there, masked
    assert connection.zcard("rq:failed:bridge") == 1
    print(
        f"leaks: {len(written.splitlines())} log lines and {len(stored)} bytes of Redis "
        f"searched for {len(secrets)} secrets and 2 emails: none found",
        flush=True,
    )


def _everything_in_key(connection: redis.Redis, key: bytes) -> str:
    kind = connection.type(key).decode()
    if kind == "stream":
        return str(connection.xrange(key))
    if kind == "hash":
        return str(connection.hgetall(key))
    return str(connection.get(key)) if kind == "string" else ""
