"""The synchronous client: ``Client(target).generate(...)`` yields typed events as they happen."""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any

import grpc
from emu35_proto.v1 import api_pb2, api_pb2_grpc

from . import convert
from .channel import DEFAULT_APPLICATION, Connection, Credentials
from .convert import ImageInput, SizeInput
from .errors import error_from_rpc
from .types import Event, Guidance, Health, ModelInfo, Sampling, ServerInfo


class EventStream(Iterator[Event]):
    """The events of one Generate call, in order; the last one of a successful call is Finished.

    ``close()`` (or leaving a ``with`` block, or dropping the stream after ``break``) cancels
    the RPC, so the server stops generating; iteration then ends quietly. A failed call raises
    its typed ``Emu35Error`` from ``next()``.
    """

    def __init__(self, call: grpc.Call):
        self._call = call
        self._closed = False
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
                raise error_from_rpc(e) from None
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
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, target: str, api_key: str | None = None, tls: Credentials = False,
                 default_timeout: float | None = None,
                 options: Sequence[tuple[str, Any]] = (),
                 application: str | None = DEFAULT_APPLICATION):
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
    ) -> EventStream:
        """Start a generation; iterate the returned stream for its events.

        task: "t2i", "x2i", "howto", "story", "explore" or "vla". images: reference images,
        each a path or encoded bytes. size: "auto", a preset ("16:9", "default"), "h*w" tokens,
        "HxW" pixels or (h, w) tokens; None: the task's rule. text_sampling / image_sampling:
        ``Sampling`` or a dict of top_k / top_p / temperature. cfg: guidance scale, or
        ``Guidance``. seed: None lets the server pick (reported in Finished). decode_mode:
        "ar" or "dida". model: a name from ``list_models()``. timeout: the RPC's deadline in
        seconds, for the whole stream. traceparent: W3C trace context to join.
        Bad arguments raise ``InvalidArgument`` here, before any RPC.
        """
        request = convert.generate_request(
            task, prompt, images=images, size=size, text_sampling=text_sampling,
            image_sampling=image_sampling, cfg=cfg, seed=seed, max_new_tokens=max_new_tokens,
            stop_at_image_end=stop_at_image_end, request_id=request_id,
            decode_mode=decode_mode, model=model)
        call = self._stub.Generate(request, timeout=self._conn.timeout(timeout),
                                   metadata=self._conn.metadata(traceparent))
        return EventStream(call)

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
        try:
            return method(request, timeout=self._conn.timeout(timeout),
                          metadata=self._conn.metadata(traceparent))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None

    def close(self) -> None:
        """Close the channel; running streams are cancelled."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
