"""The gateway's request lifecycle (DESIGN.md §3), independent of Ray: validate, encode
reference images (encoder stage), build prompts, stream generation (generator stage), decode
each finished image to storage (decoder stage), then store the Story and the manifest (last).

Stages are reached through ``StageClients``; tests may pass in-process fakes at that seam.
"""
from __future__ import annotations

import asyncio
import io
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.engine.request import RequestError, default_request
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.response import BrokenImage, ImageEntry, IncompleteImage, PngImage, split_response
from services.model.templates import TASK_DEFAULTS, build_prompts
from services.model.text_tokenizer import TextTokenizer

from .budget import Budget, plan_budget
from .convert import REASON_NAMES, codes_from_pb, generator_request_to_pb, result_ref_from_pb, result_ref_to_pb
from .errors import InvalidArgument, StageFailed, public_error
from .servicer import MalformedRequest
from .served import DEFAULT_TENANT, ServedModel, info_pb
from .story import build_story
from .tracing import child_metadata, start_span
from .validation import CheckedRequest, Limits, check_request, decode_image


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
    tenant: str = DEFAULT_TENANT  # one tenant until authentication maps keys to tenants
    model: ServedModel | None = None  # None: no name known; only an empty `model` is accepted

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else ""

    def list_models(self) -> api_pb2.ListModelsResponse:
        """ListModels: the one served model."""
        model = self.model or ServedModel("", "", self.tok.vocab_size)
        return model.list_models_pb()

    def info(self, load_pb=None) -> api_pb2.InfoResponse:
        """Info: the package version, tasks, limits and (when read) the generator load."""
        return info_pb(self.limits, self.context_length, load_pb)

    async def generate(self, pb: api_pb2.GenerateRequest, metadata=()) -> AsyncIterator[api_pb2.GenerateEvent]:
        """The request's events. ``metadata``: the caller's trace context (W3C headers).
        Failures raise ``PublicError`` carrying the caller's status (internal causes logged
        under an error id)."""
        span = start_span("gateway.Generate", metadata, task=int(getattr(pb, "task", 0)))
        rid = getattr(pb, "request_id", "")
        try:
            checked = self.check(pb)
            rid = checked.request_id or uuid.uuid4().hex
            async for event in self._generate(checked, rid, child_metadata(span)):
                yield event
        except Exception as e:
            span.record_exception(e)
            raise public_error(e, rid) from None
        finally:
            span.end()

    def check(self, pb: api_pb2.GenerateRequest) -> CheckedRequest:
        """Every check that needs no stage: fields, limits, image headers, special tokens."""
        if isinstance(pb, MalformedRequest):  # a body that did not parse (servicer.py)
            raise pb.error()
        checked = check_request(pb, self.limits, self.model_name)
        special = self.tok.find_special(checked.prompt)
        if special is not None:
            raise InvalidArgument(f"prompt: contains the special-token string {special!r}; "
                                  "control tokens cannot be sent as text")
        return checked

    async def _generate(self, checked: CheckedRequest, rid: str, metadata):
        budget = plan_budget(self.tok, checked, self.context_length)  # before any encoding
        await asyncio.to_thread(check_decodable, checked.images)
        spans = await self._encode(checked, budget, metadata)
        request = self._generation_request(checked, rid, spans, budget)
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
                raise_if_failed(ev.finished)
                yield await self._finish(rid, checked, request, ev.finished, refs, start)
            else:
                yield api_pb2.GenerateEvent(request_id=rid, **{which: getattr(ev, which)})

    async def _encode(self, checked: CheckedRequest, budget: Budget, metadata) -> list[list[int]]:
        """Reference images -> token spans (encoder stage); their grids are the planned ones."""
        if not checked.images:
            return []
        area = TASK_DEFAULTS[checked.task].image_area
        resp = await self.stages.encode(stages_pb2.EncodeRequest(images=checked.images, area=area),
                                        metadata)
        try:
            grids = [codes_from_pb(g) for g in resp.grids]
        except RequestError as e:  # the encoder's answer, not the caller's request
            raise RuntimeError(f"encoder answer: {e}") from None
        got = tuple(ImageGrid(*g.shape) for g in grids)
        if got != budget.reference_grids:
            raise RuntimeError(f"encoder grids {got} differ from the planned "
                               f"{budget.reference_grids}")
        return [image_span_ids(self.tok, g) for g in grids]

    def _generation_request(self, checked: CheckedRequest, rid: str, spans, budget: Budget):
        prompts = build_prompts(self.tok, checked.task, checked.prompt, spans)
        request = default_request(
            rid, checked.task, prompts.cond, prompts.uncond, text=checked.text,
            image=checked.image, guidance=checked.guidance, output_grid=budget.output_grid,
            max_new_tokens=budget.max_new_tokens, stop=checked.stop,
            # Unset: a random seed, kept on the request (Finished.seed, the manifest).
            seed=checked.seed if checked.seed is not None else secrets.randbits(63))
        try:
            request.validate(self.tok.vocab_size, self.context_length)
        except RequestError as e:  # the checks above cover every field: this is our bug
            raise RuntimeError(f"request {rid} passed the gateway's checks but not the "
                               f"engine's: {e}") from None
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
        return result_ref_from_pb(self.pb)


def check_decodable(images: tuple[bytes, ...]) -> None:
    """Decode each image once, so a truncated or corrupt body is the caller's INVALID_ARGUMENT
    naming ``images[i]`` rather than an encoder failure."""
    for i, data in enumerate(images):
        decode_image(data, f"images[{i}]")


def raise_if_failed(fin: stages_pb2.GeneratorFinished) -> None:
    """An engine finish with reason "error" ends the call with a non-OK status, not OK."""
    if fin.reason == common_pb2.ERROR:
        raise StageFailed(f"the generator ended the request with an error: "
                          f"{getattr(fin, 'message', '') or 'no message'}")


def png_of(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
