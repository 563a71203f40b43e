"""The asyncio client: ``async for event in AsyncClient(target).generate(...)``."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

import grpc
from emu35_proto.v1 import api_pb2, api_pb2_grpc

from . import convert
from .channel import DEFAULT_APPLICATION, Connection, Credentials
from .convert import ImageInput, SizeInput
from .errors import error_from_rpc
from .retry import RetryPolicy, as_policy
from .types import Event, Guidance, Health, ModelInfo, Sampling, ServerInfo


class AsyncEventStream(AsyncIterator[Event]):
    """The events of one Generate call, in order; the last one of a successful call is Finished.

    ``await aclose()`` / ``cancel()`` (or leaving an ``async with`` block) cancels the RPC and
    ends iteration quietly; cancelling the task that awaits the next event cancels the RPC too
    (and the task sees ``asyncio.CancelledError``). A failed call raises its typed
    ``Emu35Error``. With a retry policy, a call that fails with UNAVAILABLE or
    RESOURCE_EXHAUSTED before its first event is started again.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall,
                 restart: Callable[[], grpc.aio.UnaryStreamCall] | None = None,
                 policy: RetryPolicy = RetryPolicy()):
        self._call = call
        self._closed = False
        self._restart, self._policy, self._retried, self._started = restart, policy, 0, False
        self.request_id = ""  # the server's id for the request, known from the first event

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._closed:
            try:
                pb = await self._call.read()
            except asyncio.CancelledError:
                # grpc.aio raises CancelledError both for our own cancel() and for a cancelled task
                closed_here = self._closed and not _task_cancelling()
                self.cancel()
                if closed_here:
                    break
                raise
            except grpc.RpcError as e:
                if self._closed:
                    break
                error = error_from_rpc(e)
                if self._started or self._restart is None or not self._policy.should_retry(
                        error, self._retried):
                    raise error from None
                await asyncio.sleep(self._policy.delay(error, self._retried))
                self._retried += 1
                self._call = self._restart()
                continue
            if pb is grpc.aio.EOF:
                break
            self._started = True
            self.request_id = pb.request_id or self.request_id
            event = convert.event_from_pb(pb)
            if event is not None:
                return event
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Cancel the RPC if it is still running; idempotent."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    async def aclose(self) -> None:
        """Cancel the RPC (``cancel()``, awaitable like an async generator's ``aclose``)."""
        self.cancel()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()

    def __del__(self):
        # A stream dropped mid-way (e.g. after `break`) stops the server; at interpreter or
        # event-loop shutdown there may be nothing left to cancel.
        with suppress(Exception):
            self.cancel()


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python >= 3.11
    return bool(cancelling and cancelling())


class AsyncClient:
    """The asyncio twin of ``Client`` (same arguments; create it inside the running loop).

    Use as ``async with AsyncClient(...) as client``, or ``await client.close()``.
    """

    def __init__(self, target: str, api_key: str | None = None, tls: Credentials = False,
                 default_timeout: float | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 application: str | None = DEFAULT_APPLICATION,
                 retries: int | RetryPolicy = 0):
        self._retry = as_policy(retries)
        self._conn = Connection(target, api_key, tls, default_timeout, tuple(options), application)
        self._channel = self._conn.open_channel(grpc.aio)
        self._stub = api_pb2_grpc.Emu35Stub(self._channel)

    def generate(
        self, task: str, prompt: str, *, images: Sequence[ImageInput] = (),
        size: SizeInput | None = None, text_sampling: Sampling | Mapping[str, Any] | None = None,
        image_sampling: Sampling | Mapping[str, Any] | None = None,
        cfg: float | Guidance | Mapping[str, Any] | None = None, seed: int | None = None,
        max_new_tokens: int | None = None, stop_at_image_end: bool = False,
        request_id: str | None = None, decode_mode: str | None = None, model: str | None = None,
        timeout: float | None = None, traceparent: str | None = None,
        retries: int | RetryPolicy = 0,
    ) -> AsyncEventStream:
        """Start a generation (not awaited: ``async for`` the result). Arguments as
        ``Client.generate``; bad ones raise ``InvalidArgument`` here, before any RPC."""
        request = convert.generate_request(
            task, prompt, images=images, size=size, text_sampling=text_sampling,
            image_sampling=image_sampling, cfg=cfg, seed=seed, max_new_tokens=max_new_tokens,
            stop_at_image_end=stop_at_image_end, request_id=request_id,
            decode_mode=decode_mode, model=model)
        policy = as_policy(retries)
        deadline, metadata = self._conn.timeout(timeout), self._conn.metadata(traceparent)

        def start() -> grpc.aio.UnaryStreamCall:
            return self._stub.Generate(request, timeout=deadline, metadata=metadata)
        return AsyncEventStream(start(), start, policy)

    async def health(self, *, timeout: float | None = None,
                     traceparent: str | None = None) -> Health:
        """Readiness of the gateway and each stage."""
        pb = await self._unary(self._stub.Health, api_pb2.HealthRequest(), timeout, traceparent)
        return convert.health_from_pb(pb)

    async def info(self, *, timeout: float | None = None,
                   traceparent: str | None = None) -> ServerInfo:
        """Version, tasks and request limits of the deployment."""
        pb = await self._unary(self._stub.Info, api_pb2.InfoRequest(), timeout, traceparent)
        return convert.info_from_pb(pb)

    async def list_models(self, *, timeout: float | None = None,
                          traceparent: str | None = None) -> tuple[ModelInfo, ...]:
        """The served models; the first is the default."""
        request = api_pb2.ListModelsRequest()
        pb = await self._unary(self._stub.ListModels, request, timeout, traceparent)
        return convert.models_from_pb(pb)

    async def _unary(self, method, request, timeout: float | None, traceparent: str | None):
        deadline, metadata = self._conn.timeout(timeout), self._conn.metadata(traceparent)
        attempt = 0
        while True:
            try:
                return await method(request, timeout=deadline, metadata=metadata)
            except grpc.RpcError as e:
                error = error_from_rpc(e)
            if not self._retry.should_retry(error, attempt):
                raise error
            await asyncio.sleep(self._retry.delay(error, attempt))
            attempt += 1

    async def close(self) -> None:
        """Close the channel; running streams are cancelled."""
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
