"""The sampling benchmark stays runnable: its CPU smoke run (small vocabulary, reference
kernels, the previous sampler as baseline) exits cleanly and checks its tokens."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs_on_cpu():
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_sampling", "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "sample legacy (+sync)" in out and "visual cfg R=4" in out
    assert "equal the plain full-vocabulary path: True" in out
