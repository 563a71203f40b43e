"""The engine on a background thread, for asyncio callers (the generator stage).

One thread owns the Engine and runs its step loop; callers submit requests and receive their
events on per-request asyncio queues. Cancelling the consuming task aborts the request, which
frees its KV blocks within one step.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

from .engine import Engine
from .events import Event, Finished, Usage
from .request import GenerationRequest
from .scheduler import EngineLoad

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = False
        self.load: EngineLoad = engine.scheduler.load()  # refreshed by the engine thread
        self._thread = threading.Thread(target=self._loop, name="emu35-engine", daemon=True)
        self._thread.start()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield the request's events until Finished. Raises RequestError / QueueFull at once."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done = asyncio.get_running_loop().create_future()
        self._commands.put(("add", request, (loop, events), done))
        self._wake.set()
        await done  # re-raises validation / backpressure errors from the engine thread
        finished = False
        try:
            while not finished:
                event = await events.get()
                finished = isinstance(event, Finished)
                yield event
        finally:
            if not finished:  # the caller went away: free the request's KV now
                self._commands.put(("abort", request.request_id, None, None))
                self._wake.set()

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------- engine thread
    def _loop(self) -> None:
        while not self._stop:
            self._drain_commands()
            self.load = self.engine.scheduler.load()  # after aborts and each step
            if not self.engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # never leave callers hanging on a broken step
                log.exception("engine step failed")
                self._fail_all(str(e))
                continue
            for event in events:
                self._deliver(event)

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, payload, stream, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "abort":
                self.engine.abort(payload)
                continue
            loop = stream[0]
            try:
                self.engine.add_request(payload)
                error = None
            except Exception as e:
                error = e
            try:
                loop.call_soon_threadsafe(_settle, done, error)
            except RuntimeError:  # the caller's loop closed while it waited
                if error is None:
                    self.engine.abort(payload.request_id)
                continue
            if error is None:
                self._streams[payload.request_id] = stream

    def _deliver(self, event: Event) -> None:
        stream = self._streams.get(event.request_id)
        if stream is None:
            return
        loop, events = stream
        if isinstance(event, Finished):
            del self._streams[event.request_id]
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the consumer's event loop is gone: nobody is listening
            self._streams.pop(event.request_id, None)
            if not isinstance(event, Finished):
                self.engine.abort(event.request_id)

    def _fail_all(self, message: str) -> None:
        for rid in list(self._streams):
            self.engine.abort(rid)
            usage = Usage(0, 0, 0, 0, 0, 0, 0.0, None, 0.0)
            self._deliver(Finished(rid, "error", usage, error=message))
        self.engine.step()  # flush the abort events (already answered above)


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
