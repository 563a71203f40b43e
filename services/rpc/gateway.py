"""The gateway's request lifecycle (DESIGN.md §3), independent of Ray: validate, encode
reference images (encoder stage), build prompts, stream generation (generator stage), decode
each finished image to storage (decoder stage), then store the Story and the manifest (last).

Stages are reached through ``StageClients``; tests may pass in-process fakes at that seam.
"""
from __future__ import annotations

import io
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.engine.request import (Guidance, GuidanceMode, RequestError, SamplingParams,
                                     StopRule, default_request, with_budget)
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.prompting import output_grid_for
from services.model.response import BrokenImage, ImageEntry, IncompleteImage, PngImage, split_response
from services.model.templates import TASK_DEFAULTS, build_prompts
from services.model.text_tokenizer import TextTokenizer

from .convert import (MODES, REASON_NAMES, codes_from_pb, generator_request_to_pb,
                      result_ref_to_pb, sampling_from_pb)
from .errors import InvalidArgument
from .story import build_story
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
            async for event in self._generate(pb, child_metadata(span)):
                yield event
        except Exception as e:
            span.record_exception(e)
            raise
        finally:
            span.end()

    async def _generate(self, pb, metadata):
        checked = check_request(pb, self.limits)
        special = self.tok.find_special(checked.prompt)
        if special is not None:
            raise InvalidArgument(f"prompt: contains the special-token string {special!r}; "
                                  "control tokens cannot be sent as text")
        rid = pb.request_id or uuid.uuid4().hex
        grids, spans = await self._encode(checked, metadata)
        request = self._generation_request(pb, checked, rid, spans, grids)
        refs: dict[int, object] = {}
        start = time.time()
        async for ev in self.stages.generate(generator_request_to_pb(request), metadata):
            which = ev.WhichOneof("event")
            if which == "image_tokens":
                ref = await self._decode(rid, ev.image_index, ev.image_tokens, metadata)
                refs[ev.image_index] = ref
                yield api_pb2.GenerateEvent(request_id=rid, image_ready=api_pb2.ImageReady(
                    index=ev.image_index, image=ref.pb))
            elif which == "finished":
                yield await self._finish(rid, checked, request, ev.finished, refs, start)
            else:
                yield api_pb2.GenerateEvent(request_id=rid, **{which: getattr(ev, which)})

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
            stop=StopRule.EOI if pb.stop_at_image_end else StopRule.EOS,
            seed=pb.seed if pb.HasField("seed") else DEFAULT_SEED)
        try:
            request = with_budget(
                request, pb.max_new_tokens if pb.HasField("max_new_tokens") else None,
                self.context_length, self.tok.vocab_size, sum(len(s) for s in spans),
                checked.size_given)
        except RequestError as e:
            raise InvalidArgument(str(e)) from None
        return request

    async def _decode(self, rid, index, grid, metadata):
        resp = await self.stages.decode(stages_pb2.DecodeRequest(
            request_id=rid, tenant=self.tenant, index=index, grid=grid), metadata)
        return _Ref(resp.image)

    async def _finish(self, rid, checked, request, fin, refs, start) -> api_pb2.GenerateEvent:
        entries = split_response(self.tok, list(fin.token_ids))
        items, k = [], 0
        for e in entries:
            if isinstance(e, ImageEntry):
                items.append(PngImage(self.store.get(self.store.key_for_uri(refs[k].uri))))
                k += 1
            elif not isinstance(e, (BrokenImage, IncompleteImage)):
                items.append(e)
        refs_pb = [PngImage(png_of(decode_image(d))) for d in checked.images]
        story = build_story(checked.prompt, refs_pb, items).SerializeToString()
        layout = self.store.request_layout(rid, self.tenant)
        story_ref = self.store.put(layout.story, story, "application/x-protobuf")
        manifest = {"request_id": rid, "task": request.task.value, "prompt": checked.prompt,
                    "seed": request.seed, "finish_reason": REASON_NAMES.get(fin.reason, "error"),
                    "images": [refs[i].ref for i in sorted(refs)],
                    "story": story_ref, "incomplete_image": fin.incomplete_image,
                    "generated_tokens": fin.usage.generated_tokens, "seconds": time.time() - start}
        manifest_ref = self.store.write_manifest(rid, manifest, tenant=self.tenant)
        return api_pb2.GenerateEvent(request_id=rid, finished=api_pb2.Finished(
            reason=fin.reason, usage=fin.usage, story=result_ref_to_pb(story_ref),
            manifest=result_ref_to_pb(manifest_ref), incomplete_image=fin.incomplete_image,
            seed=request.seed))


@dataclass
class _Ref:
    """A stored image's ResultRef as the decoder returned it (pb), with attribute access."""

    pb: common_pb2.ResultRef

    @property
    def uri(self) -> str:
        return self.pb.uri

    @property
    def ref(self):
        from services.storage import ResultRef
        p = self.pb
        return ResultRef(uri=p.uri, presigned_url=p.presigned_url, sha256=p.sha256, bytes=p.bytes,
                         width=p.width, height=p.height, content_type=p.content_type)


def png_of(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
