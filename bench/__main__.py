"""The performance suite (issue 10): one run, one table of figures measured side by side.

Run: python -m bench [--quick] [--only calls|latency|intake|drain]

Rows (bench/calls.py, latency.py, throughput.py, drain.py):
1. Sotion calls per event kind through the real job path, counted at the sandbox;
2. webhook accepted -> Sotion write, p50 and p99, idle worker, Procfile processes, against
   one bare sandbox call;
3. accepted Stripe webhook events/s against a bare Flask 200, same gunicorn and load;
4. a backlog of purchases drained by 4 workers into a sandbox limited to 100 per 10 s;
5. peak RSS of one web (gunicorn worker) and one worker process.
Redis is a private redis-server as ``bridge run`` starts it (append-only, fsync always).
``--quick`` runs each benchmark small (seconds): a smoke test, not a measurement.
``--only NAME`` runs one row group (rows 1, 2, 3 or 4; the RSS row of its process
with it), e.g. ``--only intake`` to iterate on the intake rate.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from rq import Worker
from rq.serializers import JSONSerializer

from bench import calls, drain, latency, throughput
from bench.common import (
    Recorder,
    children,
    environment,
    peak_rss_mb,
    sandbox,
    start_web,
    start_worker,
    wait_for,
)
from bridge.embedded import EmbeddedRedis
from bridge.sandbox import SandboxServer

HEADER = "| measure | today | side by side | ratio |"
BARE_APP = "bench.bare_app:create_app()"
# The row groups ``--only`` can pick, in the order a full run measures them.
GROUPS = ("calls", "latency", "intake", "drain")


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark runs."""

    kind_samples: int
    latency_samples: int
    threads: int
    per_thread: int
    rounds: int
    purchases: int
    workers: int = 4
    limit: str = "100/10"


FULL = Sizes(kind_samples=5, latency_samples=100, threads=8, per_thread=250, rounds=3,
             purchases=200)  # fmt: skip
QUICK = Sizes(kind_samples=1, latency_samples=5, threads=2, per_thread=20, rounds=1,
              purchases=10)  # fmt: skip


Row = tuple[str, str, str, str]


def run(sizes: Sizes, only: str | None = None) -> list[Row]:
    """Every benchmark (or the ``only`` group), in one Redis and one temporary folder;
    the table's rows."""
    groups = GROUPS if only is None else (only,)
    rows: list[Row] = []
    rss: list[Row] = []  # printed last, after every group's own rows
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder) / "redis") as db:
        base = Path(folder)
        connection = redis.Redis.from_url(db.url)

        if "calls" in groups:
            for kind in calls.measure(db.url, base / "data", sizes.kind_samples):
                rows.append((f"Sotion calls: {kind.kind}", f"{kind.calls:g}", kind.detail, ""))
        if groups == ("calls",):
            return rows

        connection.flushdb()
        server, recorder = sandbox()
        env = environment(db.url, server.url)
        web, web_url = start_web(env, base / "web.log")
        try:
            worker_rss: Row | None = None
            if "latency" in groups:
                latency_rows, worker_rss = _latency(sizes, connection, env, base, web_url,
                                                    server, recorder)  # fmt: skip
                rows += latency_rows
            server.stop()
            if "intake" in groups:
                rows.append(_intake(sizes, env, base, web_url))
                web_rss = max(peak_rss_mb(pid) for pid in children(web.popen.pid))
                rss.append(("peak RSS, one web process (gunicorn worker, after the intake load)",
                            f"{web_rss:.0f} MiB", "", ""))  # fmt: skip
            if "drain" in groups:
                connection.flushdb()
                rows += _drain(sizes, db.url, base, web_url)
            if worker_rss is not None:
                rss.append(worker_rss)
        finally:
            web.stop()
    return rows + rss


def _latency(
    sizes: Sizes,
    connection: redis.Redis,
    env: dict[str, str],
    base: Path,
    web_url: str,
    server: SandboxServer,
    recorder: Recorder,
) -> tuple[list[Row], Row]:
    """Row 2 (p50 and p99), and the worker's RSS row."""
    worker = start_worker(env, base / "worker.log")
    try:
        wait_for(lambda: Worker.all(connection=connection, serializer=JSONSerializer), 30,
                 "the worker to register", worker)  # fmt: skip
        lat = latency.measure(web_url, server.url, recorder, worker, sizes.latency_samples)
        worker_rss = peak_rss_mb(worker.popen.pid)
    finally:
        worker.stop()
    rows = [
        (
            f"webhook accepted -> Sotion write, idle worker, {name} ({lat.samples} jobs)",
            f"{value:.1f} ms",
            f"one bare sandbox call {lat.bare:.2f} ms",
            f"{value / lat.bare:.1f}x",
        )
        for name, value in (("p50", lat.p50), ("p99", lat.p99))
    ]
    return rows, ("peak RSS, one worker process (after the latency jobs)",
                  f"{worker_rss:.0f} MiB", "", "")  # fmt: skip


def _intake(sizes: Sizes, env: dict[str, str], base: Path, web_url: str) -> Row:
    """Row 3: the bridge's accepted Stripe events/s against a bare Flask 200."""
    bridge_rates, bare_rates = [], []
    for round_ in range(sizes.rounds):
        batches = throughput.prepare(sizes.threads, sizes.per_thread, f"r{round_}-")
        bridge_rates.append(throughput.measure(web_url, batches))
        bare, bare_url = start_web(env, base / f"bare{round_}.log", BARE_APP)
        try:
            bare_rates.append(throughput.measure(bare_url, batches))
        finally:
            bare.stop()
    ours = statistics.median(r.per_second for r in bridge_rates)
    theirs = statistics.median(r.per_second for r in bare_rates)
    refused = sum(r.rejected for r in bridge_rates)
    return (
        f"accepted Stripe events/s ({sizes.threads} threads x {sizes.per_thread},"
        f" median of {sizes.rounds}; {refused} not 200)",
        f"{ours:.0f}/s",
        f"bare Flask 200, same gunicorn: {theirs:.0f}/s",
        f"{ours / theirs:.2f}",
    )


def _drain(sizes: Sizes, redis_url: str, base: Path, web_url: str) -> list[Row]:
    """Row 4: the backlog drain (429s, share of the allowed rate, purchases per call)."""
    backlog = drain.measure(web_url, redis_url, base, sizes.purchases, sizes.workers, sizes.limit)
    where = f"backlog drain ({backlog.purchases} purchases, {sizes.workers} workers,"
    where += f" limit {sizes.limit} s, {backlog.seconds:.1f} s)"
    total = backlog.allowed + backlog.rejected
    return [
        (f"{where}: 429s served", f"{backlog.rejected}", f"of {total} calls",
         f"{backlog.rejected / total:.2f}"),
        (f"{where}: share of the allowed rate used", f"{backlog.allowed} calls allowed",
         f"limit allows {backlog.capacity} in the windows used", f"{backlog.limit_share:.2f}"),
        (f"{where}: purchases applied per allowed call", f"{backlog.purchases} purchases",
         f"{backlog.allowed} allowed calls ({backlog.per_call:.2f} per call, 429s included)",
         f"{backlog.per_allowed_call:.2f}"),
    ]  # fmt: skip


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds)")
    parser.add_argument("--only", choices=GROUPS, help="run one row group (default: all)")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the in-process jobs' INFO lines would bury the table
    started = time.monotonic()
    rows = run(QUICK if args.quick else FULL, args.only)
    flags = (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    print(f"python -m bench{flags}")
    print(HEADER)
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
