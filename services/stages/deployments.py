"""Ray Serve deployments of the internal stages: thin shims that load their part of the model,
re-check what they depend on (checks.py) and answer serialized protobuf messages.

No stage is a gRPC service on any port. The gateway (gateway.py, the application's ingress)
reaches them through deployment handles over Ray Serve's gRPC transport between replicas
(``_by_reference=False``): bytes in, bytes out (a stream of bytes for Generate), failures as
``StageFailure`` (services/rpc/stage_wire.py).
"""
from __future__ import annotations

import asyncio
import io
import logging

from ray import serve

from services.rpc import stage_wire as wire
from services.rpc.convert import (codes_from_pb, decode_response_to_pb, encode_response_to_pb,
                                  generator_event_to_pb, generator_request_from_pb)
from services.rpc.tracing import start_span
from services.rpc.validation import decode_image

from .checks import (check_decode, check_encode, check_key_under, check_output_grid,
                     check_prompt_ids, check_request_id)
from .load import LoadReporter
from .settings import StageSettings, check_tensor_parallel

log = logging.getLogger(__name__)

# Serve asks each generator replica every HEALTH_PERIOD_S whether its engine lives; a replica
# that fails (or does not answer within HEALTH_TIMEOUT_S) is replaced.
HEALTH_PERIOD_S = 2.0
HEALTH_TIMEOUT_S = 10.0


@serve.deployment
class EncoderStage:
    def __init__(self, settings: StageSettings):
        from services.model.ibq import VisionTokenizer
        self.vq = VisionTokenizer.from_dir(settings.vision_tokenizer, device=settings.device)
        self.limits = settings.limits

    async def Encode(self, data: bytes, metadata: tuple = ()) -> bytes:
        span = start_span("encoder.Encode", metadata)
        try:
            request = wire.encode_request(data)
            check_encode(request.images, request.area, self.limits)
            images = [decode_image(b) for b in request.images]
            grids = await asyncio.to_thread(self.vq.encode, images, request.area)
            return encode_response_to_pb(grids).SerializeToString()
        except Exception as e:
            raise wire.failure_of(e) from None
        finally:
            span.end()

    async def ping(self) -> bool:
        return True


@serve.deployment
class DecoderStage:
    def __init__(self, settings: StageSettings):
        from services.model.ibq import VisionTokenizer
        from services.storage import make_store
        self.vq = VisionTokenizer.from_dir(settings.vision_tokenizer, device=settings.device)
        self.store = make_store(settings.storage)

    async def Decode(self, data: bytes, metadata: tuple = ()) -> bytes:
        span = start_span("decoder.Decode", metadata)
        try:
            request = wire.decode_request(data)
            g = request.grid
            codes = list(g.codes)
            check_decode(request.request_id, request.tenant, request.index, g.h, g.w, len(codes),
                         (min(codes), max(codes)) if codes else None, self.vq.n_embed)
            key = self.store.request_layout(request.request_id, request.tenant).image(request.index)
            check_key_under(key, request.tenant, request.request_id)
            image = await asyncio.to_thread(self.vq.decode_to_pil, codes_from_pb(g))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            ref = await asyncio.to_thread(self.store.put, key, buf.getvalue(), "image/png",
                                          image.width, image.height)
            return decode_response_to_pb(ref).SerializeToString()
        except Exception as e:
            raise wire.failure_of(e) from None
        finally:
            span.end()

    async def ping(self) -> bool:
        return True


@serve.deployment(health_check_period_s=HEALTH_PERIOD_S, health_check_timeout_s=HEALTH_TIMEOUT_S)
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
        self.special = tok.special
        self.engine = AsyncEngine(Engine(model, tok, EngineConfig(sched)))
        self.reporter = LoadReporter(lambda: self.engine.load)

    def __del__(self):  # Serve stops the replica (scale down, shutdown): leave the board now
        reporter = getattr(self, "reporter", None)
        if reporter is not None:
            reporter.stop()

    def check_health(self) -> None:
        """Serve's replica health check: a dead engine thread fails it, so Serve replaces the
        replica instead of routing requests to it."""
        self.engine.check_health()

    async def ping(self) -> bool:
        self.check_health()
        return True

    async def Generate(self, data: bytes, metadata: tuple = ()):
        span = start_span("generator.Generate", metadata)
        try:
            request = generator_request_from_pb(wire.generator_request(data))
            check_request_id(request.request_id)
            check_output_grid(request.output_grid)
            for field in ("cond_ids", "uncond_ids", "full_uncond_ids"):
                check_prompt_ids(getattr(request, field), self.special, field)
            async for event in self.engine.generate(request):
                yield generator_event_to_pb(event).SerializeToString()
        except Exception as e:
            raise wire.failure_of(e) from None
        finally:
            span.end()
