"""The gateway deployment: ingress of the one public Serve application, serving
``emu35.v1.Emu35`` (the only service on Serve's gRPC proxy). It reaches the encoder, generator
and decoder deployments through handles (handles.py), never through a public port.

Requests arrive as serialized bytes (the proxy's worker setup hook leaves parsing to us, see
cluster/netbind.py), so malformed protobuf is INVALID_ARGUMENT rather than a transport error.
"""
from __future__ import annotations

import logging
import time

from ray import serve

from emu35_proto.v1 import api_pb2
from services.rpc import stage_wire as wire
from services.rpc.convert import health_to_pb
from services.rpc.errors import apply_status
from services.rpc.gateway import Gateway
from services.rpc.served import ServedModel

from .handles import HandleStages
from .load import board
from .settings import StageSettings
from .watch import StageWatch

log = logging.getLogger(__name__)

STALE_S = 3.0  # a stage state older than this (the watch stalled) is not ready


@serve.deployment
class GatewayStage:
    def __init__(self, settings: StageSettings, encoder, generator, decoder):
        from services.model.config import Emu35Config
        from services.model.text_tokenizer import TextTokenizer
        from services.storage import make_store
        self.settings = settings
        tok = TextTokenizer.from_dir(settings.tokenizer or settings.model)
        self.gateway = Gateway(tok, HandleStages(encoder, generator, decoder),
                               make_store(settings.storage), settings.limits,
                               Emu35Config.from_file(settings.model).max_position_embeddings,
                               model=ServedModel.from_checkpoint(settings.model, tok.vocab_size))
        self.watch = StageWatch({"encoder": encoder, "generator": generator,
                                 "decoder": decoder}, board())
        self.watch.start()  # the constructor runs on the replica's event loop

    async def Generate(self, request, grpc_context=None):
        try:
            pb = wire.parse(api_pb2.GenerateRequest, request, "request")
            async for event in self.gateway.generate(pb, _trace_metadata(grpc_context)):
                yield event
        except Exception as e:
            raise_status(grpc_context, e)

    async def Health(self, request, grpc_context=None):
        state = self.watch.state
        fresh = time.monotonic() - state.at <= STALE_S
        ready = {k: v and fresh for k, v in state.ready.items()}
        return health_to_pb(state.serving and fresh, ready, state.load)

    async def Info(self, request, grpc_context=None):
        return self.gateway.info(self.watch.state.load)

    async def ListModels(self, request, grpc_context=None):
        return self.gateway.list_models()


def raise_status(grpc_context, exc: Exception):
    """Set the mapped status on Serve's gRPC context, then re-raise: Serve's proxy answers
    with a status the user set before raising (and its details), never a stack trace."""
    if grpc_context is not None:
        apply_status(grpc_context, exc)
    raise exc


def _trace_metadata(grpc_context) -> tuple:
    """Forward the caller's W3C trace context to the stages."""
    if grpc_context is None:
        return ()
    md = dict(getattr(grpc_context, "invocation_metadata", lambda: ())() or ())
    return tuple((k, md[k]) for k in ("traceparent", "tracestate") if k in md)
