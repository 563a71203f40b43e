"""Suite-wide settings for running on several cores (pytest-xdist, ``-n auto --dist loadgroup``
in the README's test command).

- The test modules that start Ray or ``emu35 serve`` carry ``xdist_group("ray")`` (a module
  ``pytestmark``: a mark added by a hook here comes too late for xdist), so they run in one
  worker, one cluster at a time, each module's cluster set up once.
- ``-n auto`` means one worker per core, at most MAX_WORKERS (each holds torch and its own
  Triton interpreter state; more workers than that mostly add memory).
- A worker gives torch its share of the cores instead of one thread per core each.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

MAX_WORKERS = 4


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist the suite runs in one process
def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_configure(config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
