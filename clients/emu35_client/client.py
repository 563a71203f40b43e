"""The synchronous client: ``Client(target).generate(...)`` yields typed events as they happen."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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


class EventStream(Iterator[Event]):
    """The events of one Generate call, in order; the last one of a successful call is Finished.

    ``close()`` (or leaving a ``with`` block, or dropping the stream after ``break``) cancels
    the RPC, so the server stops generating; iteration then ends quietly. A failed call raises
    its typed ``Emu35Error`` from ``next()``. With a retry policy, a call that fails with
    UNAVAILABLE or RESOURCE_EXHAUSTED before its first event is started again.
    """

    def __init__(self, call: grpc.Call, restart: Callable[[], grpc.Call] | None = None,
                 policy: RetryPolicy = RetryPolicy()):
        self._call = call
        self._closed = False
        self._restart, self._policy, self._retried, self._started = restart, policy, 0, False
        self.request_id = ""  # the server's id for the request, known from the first event

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        while not self._closed:
            try:
                pb = next(self._call)
            except grpc.RpcError as e:
                if self._closed:
                    break
                error = error_from_rpc(e)
                if self._started or self._restart is None or not self._policy.should_retry(
                        error, self._retried):
                    raise error from None
                time.sleep(self._policy.delay(error, self._retried))
                self._retried += 1
                self._call = self._restart()
                continue
            self._started = True
            self.request_id = pb.request_id or self.request_id
            event = convert.event_from_pb(pb)
            if event is not None:
                return event
        raise StopIteration

    def close(self) -> None:
        """Cancel the RPC if it is still running; idempotent."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # A stream dropped mid-way (e.g. after `break`) stops the server; at interpreter or
        # event-loop shutdown there may be nothing left to cancel.
        with suppress(Exception):
            self.close()


class Client:
    """A connection to an emu35-serve gateway.

    ``target``: "host:port". ``api_key``: sent as ``authorization: Bearer <key>`` on every call.
    ``tls``: False (plaintext), True (system roots) or ``grpc.ChannelCredentials``.
    ``default_timeout``: deadline in seconds for calls that give no ``timeout`` (None: none).
    ``retries``: how many times Health, Info and ListModels are repeated after UNAVAILABLE or
    RESOURCE_EXHAUSTED, with exponential backoff honouring the server's retry hint (default 0;
    an int or a ``RetryPolicy``). Use as a context manager, or call ``close()``.
    """

    def __init__(self, target: str, api_key: str | None = None, tls: Credentials = False,
                 default_timeout: float | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 application: str | None = DEFAULT_APPLICATION,
                 retries: int | RetryPolicy = 0):
        self._retry = as_policy(retries)
        self._conn = Connection(target, api_key, tls, default_timeout, tuple(options), application)
        self._channel = self._conn.open_channel(grpc)
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
    ) -> EventStream:
        """Start a generation; iterate the returned stream for its events.

        task: "t2i", "x2i", "howto", "story", "explore" or "vla". images: reference images,
        each a path or encoded bytes. size: "auto", a preset ("16:9", "default"), "h*w" tokens,
        "HxW" pixels or (h, w) tokens; None: the task's rule. text_sampling / image_sampling:
        ``Sampling`` or a dict of top_k / top_p / temperature. cfg: guidance scale, or
        ``Guidance``. seed: None lets the server pick (reported in Finished). decode_mode:
        "ar" or "dida". model: a name from ``list_models()``. timeout: the RPC's deadline in
        seconds, for the whole stream (each retry gets its own). traceparent: W3C trace
        context to join. retries: opt in to starting the call again (up to this many times, with
        backoff) when it fails with UNAVAILABLE or RESOURCE_EXHAUSTED before its first event.
        Bad arguments raise ``InvalidArgument`` here, before any RPC.
        """
        request = convert.generate_request(
            task, prompt, images=images, size=size, text_sampling=text_sampling,
            image_sampling=image_sampling, cfg=cfg, seed=seed, max_new_tokens=max_new_tokens,
            stop_at_image_end=stop_at_image_end, request_id=request_id,
            decode_mode=decode_mode, model=model)
        policy = as_policy(retries)
        deadline, metadata = self._conn.timeout(timeout), self._conn.metadata(traceparent)

        def start() -> grpc.Call:
            return self._stub.Generate(request, timeout=deadline, metadata=metadata)
        return EventStream(start(), start, policy)

    def health(self, *, timeout: float | None = None, traceparent: str | None = None) -> Health:
        """Readiness of the gateway and each stage."""
        pb = self._unary(self._stub.Health, api_pb2.HealthRequest(), timeout, traceparent)
        return convert.health_from_pb(pb)

    def info(self, *, timeout: float | None = None, traceparent: str | None = None) -> ServerInfo:
        """Version, tasks and request limits of the deployment."""
        pb = self._unary(self._stub.Info, api_pb2.InfoRequest(), timeout, traceparent)
        return convert.info_from_pb(pb)

    def list_models(self, *, timeout: float | None = None,
                    traceparent: str | None = None) -> tuple[ModelInfo, ...]:
        """The served models; the first is the default."""
        request = api_pb2.ListModelsRequest()
        pb = self._unary(self._stub.ListModels, request, timeout, traceparent)
        return convert.models_from_pb(pb)

    def _unary(self, method, request, timeout: float | None, traceparent: str | None):
        deadline, metadata = self._conn.timeout(timeout), self._conn.metadata(traceparent)
        attempt = 0
        while True:
            try:
                return method(request, timeout=deadline, metadata=metadata)
            except grpc.RpcError as e:
                error = error_from_rpc(e)
            if not self._retry.should_retry(error, attempt):
                raise error
            time.sleep(self._retry.delay(error, attempt))
            attempt += 1

    def close(self) -> None:
        """Close the channel; running streams are cancelled."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
