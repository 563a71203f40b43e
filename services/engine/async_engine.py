"""The engine on a background thread, for asyncio callers (the generator stage).

One thread owns the Engine and runs its step loop; callers submit requests and receive their
events on per-request asyncio queues. Cancelling the consuming task aborts the request, which
frees its KV blocks within one step.

A step that fails ends the requests it ran (Engine.step). When the engine cannot serve any
more (EngineDead, or an exception outside that isolation), the thread fails every request
in flight with the cause, logged once, and stops: later ``generate`` calls raise EngineDead
at once, and ``check_health`` raises, so the serving layer can replace the replica.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator

from .engine import Engine, EngineDead
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
        # Guards _dead against generate(): no command is queued after the thread's last drain.
        self._lock = threading.Lock()
        self._dead: str | None = None  # the cause, once the engine cannot serve
        self.load: EngineLoad = engine.scheduler.load()  # refreshed by the engine thread
        self._thread = threading.Thread(target=self._loop, name="emu35-engine", daemon=True)
        self._thread.start()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield the request's events until Finished. Raises RequestError / QueueFull /
        EngineDead at once."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done = loop.create_future()
        with self._lock:
            if self._dead is not None:
                raise EngineDead(self._dead)
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

    def check_health(self) -> None:
        """Raise RuntimeError (the cause) when this engine cannot serve requests."""
        if self._dead is not None:
            raise EngineDead(self._dead)
        if not self._thread.is_alive():
            raise RuntimeError("the engine thread is not running")

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------- engine thread
    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as e:  # the engine cannot go on: nobody may wait forever
            self._die(e)

    def _run(self) -> None:
        while not self._stop:
            self._drain_commands()
            self.load = self.engine.scheduler.load()  # after aborts and each step
            if not self.engine.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            for event in self.engine.step():
                self._deliver(event)

    def _die(self, cause: BaseException) -> None:
        message = str(cause) if isinstance(cause, EngineDead) else \
            f"engine failed: {type(cause).__name__}: {cause}"
        log.error("engine stopped serving: %s", message, exc_info=cause)
        with self._lock:
            self._dead = message
        self._drain_commands(refuse=EngineDead(message))
        usage = Usage(0, 0, 0, 0, 0, 0, 0.0, None, 0.0)
        for rid in list(self._streams):
            self._deliver(Finished(rid, "error", usage, error=message))

    def _drain_commands(self, refuse: Exception | None = None) -> None:
        """Apply queued adds and aborts; with ``refuse``, answer every add with it instead."""
        while True:
            try:
                kind, payload, stream, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "abort":
                if refuse is None:
                    self.engine.abort(payload)
                continue
            error = refuse
            if error is None:
                try:
                    self.engine.add_request(payload)
                except Exception as e:  # RequestError, QueueFull, ...: this request's answer
                    error = e
            self._answer(payload, stream, done, error)

    def _answer(self, request: GenerationRequest, stream, done, error) -> None:
        try:
            stream[0].call_soon_threadsafe(_settle, done, error)
        except RuntimeError:  # the caller's loop closed while it waited
            if error is None:
                self.engine.abort(request.request_id)
            return
        if error is None:
            self._streams[request.request_id] = stream

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
            if not isinstance(event, Finished) and self._dead is None:
                self.engine.abort(event.request_id)


def _settle(future: asyncio.Future, error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
