"""Each stage's real state for Health and Info, kept current by the gateway replica.

A background task pings every stage through its deployment handle (a cheap method, short
timeout; the generator's ping also asks its engine whether it lives) and reads the generator
load board, every PERIOD_S. A ping that fails (replica lost, engine dead) makes the stage not
ready; one that only times out may be waiting behind a busy stage's requests, so then Serve's
own status decides (a RUNNING replica). Health and Info answer from this state at once: they
never wait on a stage, so they answer within a second whatever the load.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .load import GeneratorLoad, read_total

log = logging.getLogger(__name__)

PERIOD_S = 0.5
PING_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class StageState:
    ready: dict[str, bool] = field(default_factory=dict)
    load: GeneratorLoad | None = None
    at: float = 0.0                      # monotonic time of the refresh

    @property
    def serving(self) -> bool:
        generator = self.load is not None and self.load.replicas > 0
        return bool(self.ready) and all(self.ready.values()) and generator


class StageWatch:
    def __init__(self, handles: dict, board):
        self.pings = {name: h.options(method_name="ping", _by_reference=False)
                      for name, h in handles.items()}
        self.board = board
        self.state = StageState(ready={"gateway": True, **{n: False for n in handles}})
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # keep watching; the last state ages out through `at`
                log.warning("stage watch refresh failed", exc_info=True)
            await asyncio.sleep(PERIOD_S)

    async def refresh(self) -> StageState:
        names = list(self.pings)
        results = await asyncio.gather(*(self._ping(n) for n in names),
                                       read_total(self.board, PING_TIMEOUT_S))
        ready = {"gateway": True, **dict(zip(names, results[:-1]))}
        load = results[-1]
        if "generator" in ready:
            ready["generator"] = ready["generator"] and load is not None and load.replicas > 0
        self.state = StageState(ready, load, time.monotonic())
        return self.state

    async def _ping(self, name: str) -> bool:
        response = self.pings[name].remote()
        try:
            return bool(await asyncio.wait_for(_result(response), PING_TIMEOUT_S))
        except asyncio.TimeoutError:
            response.cancel()
            return await asyncio.to_thread(_running_replicas, name) > 0
        except Exception as e:
            response.cancel()
            log.info("stage %s not ready: %s", name, type(e).__name__)
            return False


async def _result(response):
    return await response


def _running_replicas(deployment: str) -> int:
    """RUNNING replicas of ``deployment`` in this application, from Serve's controller."""
    from ray import serve

    try:
        app = serve.get_replica_context().app_name
        status = serve.status().applications[app].deployments[deployment]
        return status.replica_states.get("RUNNING", 0)
    except Exception:
        log.warning("Serve status unavailable", exc_info=True)
        return 0
