"""The benchmark suite still runs (a smoke run: nothing here is timed or judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import instructions_markdown

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_quick_benchmark_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "quick.json").read_text())
    for name in ("overhead", "memory", "batch_peak", "rate_limit", "latency", "polling"):
        assert name in results
    assert "## Targets" in proc.stdout


def test_instruction_counts_are_reported_per_task() -> None:
    counted = {
        "sizes": {"100": (300, 1300)},
        "results": {
            "100": {
                "baseline": {"per_task": 990_000.0},
                "edit": {"per_task": 1_267_200.0, "ratio": 1.28},
            }
        },
    }
    table = "\n".join(instructions_markdown(counted))
    assert "| 100 | 1,300 - 300 | baseline | 990 k | 1 |" in table
    assert "| 100 | 1,300 - 300 | edit | 1,267 k | 1.28 |" in table
    skipped = instructions_markdown({"skipped": "valgrind is not installed"})
    assert skipped[-1] == "Not measured: valgrind is not installed."
