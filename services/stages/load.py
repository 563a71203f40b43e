"""Generator load summed over replicas, for the public Health and Info responses.

A request through Serve's proxy reaches one replica, so asking "the generator" gives one
replica's view. Instead each generator replica publishes its engine's load a few times a
second to one named Ray actor (``LoadBoard``), and the gateway reads the sum. A replica that
stops reporting (crashed, scaled down) drops out after ``STALE_S``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray

from services.engine.scheduler import EngineLoad

log = logging.getLogger(__name__)

BOARD_NAME = "emu35-load"
NAMESPACE = "emu35"
REPORT_EVERY_S = 0.25
STALE_S = 3.0


@dataclass(frozen=True)
class GeneratorLoad:
    """The sum of the fresh replica reports."""

    replicas: int = 0
    waiting: int = 0
    running: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    max_waiting: int = 0


class LoadBoard:
    """Latest report per replica, stamped on arrival (one clock: the board's)."""

    def __init__(self):
        self.reports: dict[str, tuple[float, EngineLoad]] = {}

    def report(self, replica: str, load: EngineLoad) -> None:
        self.reports[replica] = (time.monotonic(), load)

    def forget(self, replica: str) -> None:
        self.reports.pop(replica, None)

    def total(self, stale_s: float = STALE_S) -> GeneratorLoad:
        now = time.monotonic()
        fresh = [load for at, load in self.reports.values() if now - at <= stale_s]
        return GeneratorLoad(len(fresh), *(sum(getattr(x, f) for x in fresh) for f in (
            "waiting", "running", "kv_blocks_used", "kv_blocks_total", "max_waiting")))


_BoardActor = ray.remote(num_cpus=0, max_restarts=-1)(LoadBoard)


def board():
    """The cluster's board, created by whoever asks first; it outlives the replicas and is
    restarted if it dies (the reporters fill it again within REPORT_EVERY_S)."""
    return _BoardActor.options(name=BOARD_NAME, namespace=NAMESPACE, get_if_exists=True,
                               lifetime="detached").remote()


class LoadReporter:
    """Publishes ``read()`` every REPORT_EVERY_S from a thread of the generator replica."""

    def __init__(self, read: Callable[[], EngineLoad]):
        self.read = read
        self.replica = ray.get_runtime_context().get_actor_id() or "driver"
        self.board = board()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="emu35-load", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            try:
                self.board.report.remote(self.replica, self.read())
            except Exception:  # the cluster is shutting down
                log.debug("load report failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self.board.forget.remote(self.replica)


async def read_total(handle, timeout_s: float = 2.0) -> GeneratorLoad | None:
    """The summed load from a ``board()`` handle, or None when it cannot be read in time."""
    try:
        return await asyncio.wait_for(handle.total.remote(), timeout_s)
    except Exception:
        log.warning("generator load unavailable", exc_info=True)
        return None
