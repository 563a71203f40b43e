"""The gateway's request lifecycle (DESIGN.md §3), independent of Ray: validate, encode
reference images (encoder stage), build prompts, stream generation (generator stage), decode
each finished image to storage (decoder stage), then store the Story and the manifest (last).

Stages are reached through ``StageClients``; tests may pass in-process fakes at that seam.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from emu35_proto.v1 import api_pb2, stages_pb2
from services.engine.request import (Guidance, GuidanceMode, RequestError, SamplingParams,
                                     StopRule, default_request)
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.prompting import output_grid_for
from services.model.response import PngImage
from services.model.templates import TASK_DEFAULTS, build_prompts
from services.model.text_tokenizer import TextTokenizer

from .convert import (MODES, codes_from_pb, generator_finished_from_pb, generator_request_to_pb,
                      result_ref_from_pb, result_ref_to_pb, sampling_from_pb)
from .errors import InvalidArgument, status_for
from .results import RequestSummary, ResultWriter, StreamResults, check_unused, png_bytes
from .tracing import child_metadata, start_span
from .validation import CheckedRequest, Limits, check_request, decode_image

DEFAULT_SEED = 6666


class StageClients:
    """The three stage calls the gateway makes (gRPC in the cluster)."""

    async def encode(self, req: stages_pb2.EncodeRequest, metadata) -> stages_pb2.EncodeResponse:
        raise NotImplementedError

    def generate(self, req: stages_pb2.GeneratorRequest, metadata) -> AsyncIterator[stages_pb2.GeneratorEvent]:
        raise NotImplementedError

    async def decode(self, req: stages_pb2.DecodeRequest, metadata) -> stages_pb2.DecodeResponse:
        raise NotImplementedError


@dataclass
class Gateway:
    tok: TextTokenizer
    stages: StageClients
    store: object  # services.storage ResultStore
    limits: Limits = Limits()
    context_length: int = 9216
    tenant: str = "default"

    async def generate(self, pb: api_pb2.GenerateRequest, metadata=()) -> AsyncIterator[api_pb2.GenerateEvent]:
        """The request's events. ``metadata``: the caller's trace context (W3C headers)."""
        span = start_span("gateway.Generate", metadata, task=int(pb.task))
        try:
            # aclosing: a caller that goes away closes the lifecycle now (its manifest says
            # so), not whenever the garbage collector finalizes the generator.
            async with aclosing(self._generate(pb, child_metadata(span))) as events:
                async for event in events:
                    yield event
        except Exception as e:
            span.record_exception(e)
            raise
        finally:
            span.end()

    async def _generate(self, pb, metadata):
        started = time.time()
        checked = check_request(pb, self.limits)
        special = self.tok.find_special(checked.prompt)
        if special is not None:
            raise InvalidArgument(f"prompt: contains the special-token string {special!r}; "
                                  "control tokens cannot be sent as text")
        rid = pb.request_id or uuid.uuid4().hex
        layout = self.store.request_layout(rid, self.tenant)
        await check_unused(self.store, layout)  # ALREADY_EXISTS before any work
        grids, spans = await self._encode(checked, metadata)
        request = self._generation_request(pb, checked, rid, spans, grids)
        results = StreamResults(ResultWriter(self.store, layout,
                                             RequestSummary.of(request, checked.prompt),
                                             started))
        await results.claim()  # create-only: a concurrent twin of this request_id loses here
        async with aclosing(self._stream(results, checked, request, metadata)) as events:
            async for event in events:
                yield event

    async def _encode(self, checked: CheckedRequest, metadata):
        if not checked.images:
            return [], []
        area = TASK_DEFAULTS[checked.task].image_area
        resp = await self.stages.encode(stages_pb2.EncodeRequest(images=checked.images, area=area),
                                        metadata)
        grids = [codes_from_pb(g) for g in resp.grids]
        return [ImageGrid(*g.shape) for g in grids], [image_span_ids(self.tok, g) for g in grids]

    def _generation_request(self, pb, checked: CheckedRequest, rid, spans, grids):
        task = checked.task
        try:
            prompts = build_prompts(self.tok, task, checked.prompt, spans)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        d = TASK_DEFAULTS[task]
        g = pb.guidance
        guidance = Guidance(MODES[g.mode], g.scale if g.HasField("scale") else d.cfg_scale,
                            g.image_scale if g.HasField("image_scale") else 1.0)
        if guidance.mode is GuidanceMode.NO_TEXT_IMG_CFG:
            raise InvalidArgument("guidance.mode: no_text_img_cfg needs a full-unconditional "
                                  "prompt, which this API does not take yet")
        request = default_request(
            rid, task, prompts.cond, prompts.uncond,
            text=sampling_from_pb(pb.text_sampling, SamplingParams(d.text_top_k, d.text_top_p, d.text_temperature)),
            image=sampling_from_pb(pb.image_sampling, SamplingParams(d.image_top_k, d.image_top_p, d.image_temperature)),
            guidance=guidance,
            output_grid=output_grid_for(task, checked.size, checked.size_given, grids),
            max_new_tokens=pb.max_new_tokens if pb.HasField("max_new_tokens") else d.max_new_tokens,
            stop=StopRule.EOI if pb.stop_at_image_end else StopRule.EOS,
            seed=pb.seed if pb.HasField("seed") else DEFAULT_SEED)
        try:
            request.validate(self.tok.vocab_size, self.context_length)
        except RequestError as e:
            raise InvalidArgument(str(e)) from None
        return request

    async def _stream(self, results: StreamResults, checked, request, metadata):
        """Generation events to the caller; images decoded to storage as they complete; the
        Story and manifest at the end. However the stream ends (cancelled, failed), a manifest
        says so and lists the images stored."""
        rid, state, error = request.request_id, "failed", None
        stream = self.stages.generate(generator_request_to_pb(request), metadata)
        try:
            async for ev in stream:
                which = ev.WhichOneof("event")
                if which == "image_tokens":
                    ref = await self._decode(results, ev.image_index, ev.image_tokens, metadata)
                    yield api_pb2.GenerateEvent(request_id=rid, image_ready=api_pb2.ImageReady(
                        index=ev.image_index, image=result_ref_to_pb(ref)))
                elif which == "finished":
                    yield await self._finish(results, checked, request, ev.finished)
                else:
                    yield api_pb2.GenerateEvent(request_id=rid, **{which: getattr(ev, which)})
            error = "the generator's stream ended without a finish"
        except (asyncio.CancelledError, GeneratorExit):
            state = "cancelled"
            raise
        except Exception as e:
            error = status_for(e)[1]
            raise
        finally:
            try:
                if hasattr(stream, "aclose"):  # end the generator's call now, freeing its KV
                    await stream.aclose()
            finally:
                if not results.writer.committed:
                    await results.close(state, error)

    async def _decode(self, results: StreamResults, index, grid, metadata):
        """The decoder stores the image; shielded, so a cancel never orphans it."""
        async def decode():
            resp = await self.stages.decode(stages_pb2.DecodeRequest(
                request_id=results.writer.layout.request_id, tenant=self.tenant, index=index,
                grid=grid), metadata)
            ref = result_ref_from_pb(resp.image)
            results.writer.add_image(index, ref)
            return ref
        return await results.shielded(decode())

    async def _finish(self, results: StreamResults, checked, request, fin) -> api_pb2.GenerateEvent:
        """Story and manifest (off the event loop), then the Finished event."""
        finished = generator_finished_from_pb(fin, request.request_id)
        story_ref, manifest_ref = await results.complete(
            self.tok, finished, lambda: [PngImage(png_bytes(decode_image(d)))
                                         for d in checked.images])
        return api_pb2.GenerateEvent(request_id=request.request_id, finished=api_pb2.Finished(
            reason=fin.reason, usage=fin.usage, story=result_ref_to_pb(story_ref),
            manifest=result_ref_to_pb(manifest_ref), incomplete_image=fin.incomplete_image,
            seed=request.seed))
