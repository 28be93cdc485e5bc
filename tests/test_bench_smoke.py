"""The benchmark suite's smoke run: ``python -m bench --quick`` runs and prints its table.

No timing assertions: figures depend on the machine; only that every benchmark still runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_runs_and_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| measure | today | side by side | ratio |" in result.stdout
