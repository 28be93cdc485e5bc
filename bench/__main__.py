"""The performance suite (issue 10): one run, one table of figures measured side by side.

Run: python -m bench [--quick]

Rows (bench/calls.py, latency.py, throughput.py, drain.py):
1. Sotion calls per event kind through the real job path, counted at the sandbox;
2. webhook accepted -> Sotion write, p50 and p99, idle worker, Procfile processes, against
   one bare sandbox call;
3. accepted Stripe webhook events/s against a bare Flask 200, same gunicorn and load;
4. a backlog of purchases drained by 4 workers into a sandbox limited to 100 per 10 s;
5. peak RSS of one web (gunicorn worker) and one worker process.
Redis is a private redis-server as ``bridge run`` starts it (append-only, fsync always).
``--quick`` runs each benchmark small (seconds): a smoke test, not a measurement.
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
    children,
    environment,
    peak_rss_mb,
    sandbox,
    start_web,
    start_worker,
    wait_for,
)
from bridge.embedded import EmbeddedRedis

HEADER = "| measure | today | side by side | ratio |"
BARE_APP = "bench.bare_app:create_app()"


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


def run(sizes: Sizes) -> list[tuple[str, str, str, str]]:
    """Every benchmark, in one Redis and one temporary folder; the table's rows."""
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder) / "redis") as db:
        base = Path(folder)
        connection = redis.Redis.from_url(db.url)

        for kind in calls.measure(db.url, base / "data", sizes.kind_samples):
            rows.append((f"Sotion calls: {kind.kind}", f"{kind.calls:g}", kind.detail, ""))

        connection.flushdb()
        server, recorder = sandbox()
        env = environment(db.url, server.url)
        web, web_url = start_web(env, base / "web.log")
        try:
            worker = start_worker(env, base / "worker.log")
            wait_for(lambda: Worker.all(connection=connection, serializer=JSONSerializer), 30,
                     "the worker to register", worker)  # fmt: skip
            lat = latency.measure(web_url, server.url, recorder, worker, sizes.latency_samples)
            worker_rss = peak_rss_mb(worker.popen.pid)
            worker.stop()
            server.stop()
            for name, value in (("p50", lat.p50), ("p99", lat.p99)):
                rows.append((
                    f"webhook accepted -> Sotion write, idle worker, {name} ({lat.samples} jobs)",
                    f"{value:.1f} ms",
                    f"one bare sandbox call {lat.bare:.2f} ms",
                    f"{value / lat.bare:.1f}x",
                ))  # fmt: skip

            bridge_rates, bare_rates = [], []
            for round_ in range(sizes.rounds):
                batches = throughput.prepare(sizes.threads, sizes.per_thread, f"r{round_}-")
                bridge_rates.append(throughput.measure(web_url, batches))
                bare, bare_url = start_web(env, base / f"bare{round_}.log", BARE_APP)
                try:
                    bare_rates.append(throughput.measure(bare_url, batches))
                finally:
                    bare.stop()
            web_rss = max(peak_rss_mb(pid) for pid in children(web.popen.pid))
            ours = statistics.median(r.per_second for r in bridge_rates)
            theirs = statistics.median(r.per_second for r in bare_rates)
            refused = sum(r.rejected for r in bridge_rates)
            rows.append((
                f"accepted Stripe events/s ({sizes.threads} threads x {sizes.per_thread},"
                f" median of {sizes.rounds}; {refused} not 200)",
                f"{ours:.0f}/s",
                f"bare Flask 200, same gunicorn: {theirs:.0f}/s",
                f"{ours / theirs:.2f}",
            ))  # fmt: skip

            connection.flushdb()
            backlog = drain.measure(
                web_url, db.url, base, sizes.purchases, sizes.workers, sizes.limit
            )
        finally:
            web.stop()
    where = f"backlog drain ({backlog.purchases} purchases, {sizes.workers} workers,"
    where += f" limit {sizes.limit} s, {backlog.seconds:.1f} s)"
    total = backlog.allowed + backlog.rejected
    rows += [
        (f"{where}: 429s served", f"{backlog.rejected}", f"of {total} calls",
         f"{backlog.rejected / total:.2f}"),
        (f"{where}: share of the allowed rate used", f"{backlog.allowed} calls allowed",
         f"limit allows {backlog.capacity} in the windows used", f"{backlog.limit_share:.2f}"),
        (f"{where}: purchases applied per allowed call", f"{backlog.purchases} purchases",
         f"{backlog.allowed} allowed calls ({backlog.per_call:.2f} per call, 429s included)",
         f"{backlog.per_allowed_call:.2f}"),
        ("peak RSS, one web process (gunicorn worker, after the intake load)",
         f"{web_rss:.0f} MiB", "", ""),
        ("peak RSS, one worker process (after the latency jobs)", f"{worker_rss:.0f} MiB",
         "", ""),
    ]  # fmt: skip
    return rows


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds)")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # the in-process jobs' INFO lines would bury the table
    started = time.monotonic()
    rows = run(QUICK if args.quick else FULL)
    print(f"python -m bench{' --quick' if args.quick else ''}")
    print(HEADER)
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
