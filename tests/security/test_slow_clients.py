"""Slow and idle clients cannot starve intake: the Procfile's web process keeps answering.

Forty connections send a request one byte a second, and twenty more connect and send
nothing, against the web process as the Procfile starts it (gunicorn, gevent workers).
Meanwhile a signed webhook and /healthz must be answered at once.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from bridge.embedded import free_port
from tests import stripe_events as se
from tests.conftest import SANDBOX_KEY, STRIPE_SECRET
from tests.test_processes import _environment, _start, _stop, _wait_for, procfile

SLOW_SENDERS = 40
IDLE_CONNECTIONS = 20
# An answer slower than this means the slow clients held the workers.
ANSWER_BOUND_SECONDS = 5.0


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The Procfile's web process on a free port: (base URL, port)."""
    redis.Redis.from_url(redis_url).flushdb()
    port = free_port()
    env = _environment(
        REDIS_URL=redis_url,
        PORT=str(port),
        SOTION_API_KEY=SANDBOX_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        BRIDGE_ACCEPT_TEST_EVENTS="true",
    )
    log = tmp_path / "web.log"
    process: subprocess.Popen[bytes] = _start(procfile()["web"], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: requests.get(f"{base}/readyz", timeout=1).ok, 30, "web", [log])
        yield base, port
    finally:
        _stop(process)


def test_webhook_and_healthz_answer_while_slow_and_idle_clients_hold_connections(
    web: tuple[str, int],
) -> None:
    base, port = web
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def dribble() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sockets.append(sock)
        try:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: bridge\r\n")
            while not stop.wait(1.0):
                sock.sendall(b"X")
        except OSError:
            pass

    senders = [threading.Thread(target=dribble, daemon=True) for _ in range(SLOW_SENDERS)]
    for sender in senders:
        sender.start()
    sockets.extend(
        socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(IDLE_CONNECTIONS)
    )
    time.sleep(2.5)  # every slow client has a request half sent
    try:
        body = se.encode(se.fixture("checkout_session_completed_payment"))
        started = time.monotonic()
        answer = requests.post(
            f"{base}/webhooks/stripe",
            data=body,
            headers={"Stripe-Signature": se.sign(body, STRIPE_SECRET)},
            timeout=10,
        )
        webhook_seconds = time.monotonic() - started
        started = time.monotonic()
        health = requests.get(f"{base}/healthz", timeout=10)
        health_seconds = time.monotonic() - started
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
    print(
        f"slow clients: {SLOW_SENDERS} sending a byte a second + {IDLE_CONNECTIONS} idle; "
        f"webhook answered {answer.status_code} in {webhook_seconds * 1000:.0f} ms, "
        f"/healthz {health.status_code} in {health_seconds * 1000:.0f} ms",
        flush=True,
    )

    assert answer.status_code == 200 and answer.json()["queued"] == 1
    assert health.status_code == 200
    assert webhook_seconds < ANSWER_BOUND_SECONDS
    assert health_seconds < ANSWER_BOUND_SECONDS
