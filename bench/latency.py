"""Row 2: webhook accepted -> Sotion write, against the Procfile's web and worker processes.

One purchase at a time for a new email, each sent once the worker is idle again: the time
from the web process's HTTP 200 (as the client sees it) to the arrival of the member
create at the sandbox, both on this process's clock. Beside it, one bare sandbox call: the
same create sent straight to the sandbox on a kept-alive ``requests.Session``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import requests

from bench.common import KEY, Process, Recorder, purchase, signed, wait_for


@dataclass(frozen=True)
class Latency:
    """Milliseconds: the apply latency's p50 and p99, and one bare sandbox call's median."""

    p50: float
    p99: float
    bare: float
    samples: int


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def measure(
    web_url: str, sotion_url: str, recorder: Recorder, worker: Process, samples: int
) -> Latency:
    """Send ``samples`` purchases one by one and time each to its Sotion write."""
    session = requests.Session()
    # A first job warms the worker up (imports, connections): not counted.
    _one(session, web_url, recorder, worker, "latency-warmup")
    time.sleep(0.5)
    measured: list[float] = []
    for index in range(samples):
        measured.append(_one(session, web_url, recorder, worker, f"latency{index}"))
        time.sleep(0.1)  # the worker goes back to waiting for the next job
    bare = _bare(sotion_url, max(samples, 20))
    session.close()
    return Latency(
        percentile(measured, 0.5) * 1000, percentile(measured, 0.99) * 1000, bare, samples
    )


def _one(
    session: requests.Session, web_url: str, recorder: Recorder, worker: Process, ref: str
) -> float:
    email = f"{ref}@example.com"
    body, headers = signed(purchase(email, ref))
    before = len(recorder.writes())
    response = session.post(f"{web_url}/webhooks/stripe", data=body, headers=headers, timeout=10)
    accepted = time.perf_counter()
    if response.status_code != 200:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    writes = wait_for(lambda: recorder.writes()[before:], 30, f"the write for {ref}", worker)
    seconds: float = writes[0].arrived - accepted
    # Let the job finish (its remaining calls) before the next one.
    wait_for(lambda: _settled(recorder), 30, f"the job of {ref} to finish", worker)
    return seconds


def _settled(recorder: Recorder) -> bool:
    calls = recorder.snapshot()
    return bool(calls) and time.perf_counter() - calls[-1].arrived > 0.05


def _bare(sotion_url: str, count: int) -> float:
    """Median milliseconds of one member create sent straight to the sandbox."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    session.post(f"{sotion_url}/members", json={"email": "bare-warmup@example.com"}, timeout=10)
    times = []
    for index in range(count):
        started = time.perf_counter()
        response = session.post(
            f"{sotion_url}/members",
            json={"email": f"bare{index}@example.com", "paid": True},
            timeout=10,
        )
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    session.close()
    return statistics.median(times) * 1000
