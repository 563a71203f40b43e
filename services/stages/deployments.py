"""Ray Serve deployments: thin shims that load their part of the model, expose one gRPC
service each (methods named as the .proto RPCs) and map errors to status codes.

Each stage is its own Serve application; the gateway reaches the others through Serve's gRPC
proxy (``StageChannel``), selecting the application with the ``application`` metadata key.
"""
from __future__ import annotations

import asyncio
import io
import logging

import grpc
from ray import serve

from emu35_proto.v1 import api_pb2, stages_pb2, stages_pb2_grpc
from services.rpc.convert import (codes_from_pb, codes_to_pb, engine_load_to_pb,
                                  generator_event_to_pb, generator_request_from_pb)
from services.rpc.errors import apply_status
from services.rpc.gateway import Gateway, StageClients
from services.rpc.tracing import start_span
from services.model.templates import Task
from services.rpc.validation import decode_image

from .load import LoadReporter, board, read_total
from .settings import StageSettings, check_tensor_parallel

log = logging.getLogger(__name__)


@serve.deployment
class EncoderStage:
    def __init__(self, settings: StageSettings):
        from services.model.ibq import VisionTokenizer
        self.vq = VisionTokenizer.from_dir(settings.vision_tokenizer, device=settings.device)

    async def Encode(self, request: stages_pb2.EncodeRequest, grpc_context=None):
        span = start_span("encoder.Encode", _trace_metadata(grpc_context), images=len(request.images))
        try:
            images = [decode_image(b) for b in request.images]
            grids = await asyncio.to_thread(self.vq.encode, images, request.area or None)
            return stages_pb2.EncodeResponse(grids=[codes_to_pb(g) for g in grids])
        except Exception as e:
            raise_status(grpc_context, e)
        finally:
            span.end()


@serve.deployment
class DecoderStage:
    def __init__(self, settings: StageSettings):
        from services.model.ibq import VisionTokenizer
        from services.storage import make_store
        self.vq = VisionTokenizer.from_dir(settings.vision_tokenizer, device=settings.device)
        self.store = make_store(settings.storage)

    async def Decode(self, request: stages_pb2.DecodeRequest, grpc_context=None):
        from services.rpc.convert import result_ref_to_pb
        span = start_span("decoder.Decode", _trace_metadata(grpc_context), index=request.index)
        try:
            codes = codes_from_pb(request.grid)
            image = await asyncio.to_thread(self.vq.decode_to_pil, codes)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            key = self.store.request_layout(request.request_id, request.tenant or "default").image(request.index)
            ref = self.store.put(key, buf.getvalue(), "image/png", image.width, image.height)
            return stages_pb2.DecodeResponse(image=result_ref_to_pb(ref))
        except Exception as e:
            raise_status(grpc_context, e)
        finally:
            span.end()


@serve.deployment
class GeneratorStage:
    def __init__(self, settings: StageSettings):
        from services.engine.async_engine import AsyncEngine
        from services.engine.engine import Engine, EngineConfig
        from services.engine.scheduler import SchedulerConfig
        from services.model.loader import load_checkpoint
        check_tensor_parallel(settings.tensor_parallel_size)
        model, tok = load_checkpoint(settings.model, device=settings.device,
                                     tokenizer_dir=settings.tokenizer)
        sched = SchedulerConfig(num_blocks=settings.kv_blocks, max_waiting=settings.max_waiting,
                                max_num_seqs=settings.max_num_seqs,
                                max_batched_tokens=settings.max_batched_tokens)
        self.engine = AsyncEngine(Engine(model, tok, EngineConfig(sched)))
        self.reporter = LoadReporter(lambda: self.engine.load)

    def __del__(self):  # Serve stops the replica (scale down, shutdown): leave the board now
        reporter = getattr(self, "reporter", None)
        if reporter is not None:
            reporter.stop()

    async def Generate(self, request: stages_pb2.GeneratorRequest, grpc_context=None):
        span = start_span("generator.Generate", _trace_metadata(grpc_context),
                          request_id=request.request_id)
        try:
            req = generator_request_from_pb(request)
            async for event in self.engine.generate(req):
                yield generator_event_to_pb(event)
        except Exception as e:
            raise_status(grpc_context, e)
        finally:
            span.end()


class StageChannel(StageClients):
    """Stage calls over gRPC through Serve's proxy (application chosen by metadata)."""

    def __init__(self, target: str, apps: dict[str, str]):
        self.channel = grpc.aio.insecure_channel(target)
        self.apps = apps
        self.encoder = stages_pb2_grpc.VisionEncoderStub(self.channel)
        self.generator = stages_pb2_grpc.GeneratorStub(self.channel)
        self.decoder = stages_pb2_grpc.ImageDecoderStub(self.channel)

    def _md(self, app: str, metadata) -> tuple:
        return (("application", self.apps[app]),) + tuple(metadata)

    async def encode(self, req, metadata):
        return await self.encoder.Encode(req, metadata=self._md("encoder", metadata))

    async def generate(self, req, metadata):
        call = self.generator.Generate(req, metadata=self._md("generator", metadata))
        try:
            async for ev in call:
                yield ev
        finally:
            call.cancel()  # the client went away: the generator aborts and frees KV

    async def decode(self, req, metadata):
        return await self.decoder.Decode(req, metadata=self._md("decoder", metadata))


@serve.deployment
class GatewayStage:
    def __init__(self, settings: StageSettings):
        from services.model.config import Emu35Config
        from services.model.text_tokenizer import TextTokenizer
        from services.storage import make_store
        self.settings = settings
        tok = TextTokenizer.from_dir(settings.tokenizer or settings.model)
        self.gateway = Gateway(tok, StageChannel(settings.proxy_target, settings.app_names),
                               make_store(settings.storage), settings.limits,
                               Emu35Config.from_file(settings.model).max_position_embeddings)
        self.board = board()  # generator load, for Health and Info

    async def Generate(self, request: api_pb2.GenerateRequest, grpc_context=None):
        try:
            async for event in self.gateway.generate(request, _trace_metadata(grpc_context)):
                yield event
        except Exception as e:
            raise_status(grpc_context, e)

    async def Health(self, request: api_pb2.HealthRequest, grpc_context=None):
        load = await read_total(self.board)
        serving = load is not None and load.replicas > 0
        stages = {stage: True for stage in self.settings.app_names}
        stages["generator"] = serving
        return api_pb2.HealthResponse(ready=serving, stages=stages,
                                      load=engine_load_to_pb(load) if load else None)

    async def Info(self, request: api_pb2.InfoRequest, grpc_context=None):
        lim = self.gateway.limits
        load = await read_total(self.board)
        return api_pb2.InfoResponse(version="0.1.0", tasks=[t.value for t in Task],
                                    max_prompt_chars=lim.max_prompt_chars, max_images=lim.max_images,
                                    max_image_bytes=lim.max_image_bytes,
                                    context_length=self.gateway.context_length,
                                    load=engine_load_to_pb(load) if load else None)

    async def ListModels(self, request: api_pb2.ListModelsRequest, grpc_context=None):
        return api_pb2.ListModelsResponse(models=[api_pb2.ModelInfo(
            name="emu3.5", checkpoint=str(self.settings.model), vocab_size=self.gateway.tok.vocab_size)])


def raise_status(grpc_context, exc: Exception):
    """Set the mapped status on Serve's gRPC context, then re-raise: Serve's proxy answers
    with a status the user set before raising (and its details), never a stack trace."""
    apply_status(grpc_context, exc)
    raise exc


def _trace_metadata(grpc_context) -> tuple:
    """Forward the caller's W3C trace context to the stages."""
    if grpc_context is None:
        return ()
    md = dict(getattr(grpc_context, "invocation_metadata", lambda: ())() or ())
    return tuple((k, md[k]) for k in ("traceparent", "tracestate") if k in md)
