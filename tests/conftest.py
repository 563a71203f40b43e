"""Suite-wide settings for running on several cores (pytest-xdist, ``-n auto --dist loadgroup``
in the README's test command).

- Every test of tests/cluster runs in one worker, in file order (``xdist_group("cluster")``):
  those tests start Ray and ``emu35 serve`` on fixed ports, one cluster at a time.
- ``-n auto`` means one worker per core, at most MAX_WORKERS (each holds torch and its own
  Triton interpreter state; more workers than that mostly add memory).
- A worker gives torch its share of the cores instead of one thread per core each.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

MAX_WORKERS = 4
CLUSTER = Path(__file__).resolve().parent / "cluster"


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist the suite runs in one process
def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_configure(config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if CLUSTER in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.xdist_group("cluster"))
