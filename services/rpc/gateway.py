"""The gateway's request lifecycle (DESIGN.md §3), independent of Ray: validate, encode
reference images (encoder stage), build prompts, stream generation (generator stage), decode
each finished image to storage (decoder stage), then store the Story and the manifest (last).

Stages are reached through ``StageClients``; tests may pass in-process fakes at that seam.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.engine.request import RequestError, default_request
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.response import PngImage
from services.model.templates import TASK_DEFAULTS, Task, build_prompts
from services.model.text_tokenizer import TextTokenizer

from .budget import Budget, plan_budget
from .convert import (codes_from_pb, generator_finished_from_pb, generator_request_to_pb,
                      info_to_pb, list_models_to_pb, result_ref_from_pb, result_ref_to_pb)
from .errors import InvalidArgument, StageFailed, public_error
from .results import RequestSummary, ResultWriter, StreamResults, check_unused, png_bytes
from .served import DEFAULT_TENANT, ServedModel, package_version
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
        m = self.model or ServedModel("", "", self.tok.vocab_size)
        return list_models_to_pb([(m.name, m.checkpoint, m.vocab_size)])

    def info(self, load=None) -> api_pb2.InfoResponse:
        """Info: the package version, tasks, limits and (when read) the generator load."""
        return info_to_pb(package_version(), [t.value for t in Task], self.limits,
                          self.context_length, load)

    async def generate(self, pb: api_pb2.GenerateRequest, metadata=()) -> AsyncIterator[api_pb2.GenerateEvent]:
        """The request's events. ``metadata``: the caller's trace context (W3C headers).
        Failures raise ``PublicError`` carrying the caller's status (internal causes logged
        under an error id)."""
        span = start_span("gateway.Generate", metadata, task=int(getattr(pb, "task", 0)))
        rid = getattr(pb, "request_id", "")
        try:
            checked = self.check(pb)
            rid = checked.request_id or uuid.uuid4().hex
            # aclosing: a caller that goes away closes the lifecycle now (its manifest says
            # so), not whenever the garbage collector finalizes the generator.
            async with aclosing(self._generate(checked, rid, child_metadata(span))) as events:
                async for event in events:
                    yield event
        except Exception as e:
            span.record_exception(e)
            raise public_error(e, rid) from None
        finally:
            span.end()

    def check(self, pb: api_pb2.GenerateRequest) -> CheckedRequest:
        """Every check that needs no stage: fields, limits, image headers, special tokens."""
        checked = check_request(pb, self.limits, self.model_name)
        special = self.tok.find_special(checked.prompt)
        if special is not None:
            raise InvalidArgument(f"prompt: contains the special-token string {special!r}; "
                                  "control tokens cannot be sent as text")
        return checked

    async def _generate(self, checked: CheckedRequest, rid: str, metadata):
        started = time.time()
        budget = plan_budget(self.tok, checked, self.context_length)  # before any encoding
        await asyncio.to_thread(check_decodable, checked.images)
        layout = self.store.request_layout(rid, self.tenant)
        await check_unused(self.store, layout)  # ALREADY_EXISTS before any work
        spans = await self._encode(checked, budget, metadata)
        request = self._generation_request(checked, rid, spans, budget)
        results = StreamResults(ResultWriter(self.store, layout,
                                             RequestSummary.of(request, checked.prompt),
                                             started))
        await results.claim()  # create-only: a concurrent twin of this request_id loses here
        async with aclosing(self._stream(results, checked, request, metadata)) as events:
            async for event in events:
                yield event

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
                    raise_if_failed(ev.finished)
                    yield await self._finish(results, checked, request, ev.finished)
                else:
                    yield api_pb2.GenerateEvent(request_id=rid, **{which: getattr(ev, which)})
            error = "the generator's stream ended without a finish"
        except (asyncio.CancelledError, GeneratorExit):
            state = "cancelled"
            raise
        except Exception as e:
            failure = public_error(e, rid)  # one status (one error id) for the caller and manifest
            error = failure.status.message
            raise failure from None
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


def check_decodable(images: tuple[bytes, ...]) -> None:
    """Decode each image once, so a truncated or corrupt body is the caller's INVALID_ARGUMENT
    naming ``images[i]`` rather than an encoder failure."""
    for i, data in enumerate(images):
        decode_image(data, f"images[{i}]")


def raise_if_failed(fin: stages_pb2.GeneratorFinished) -> None:
    """An engine finish with reason "error" ends the call with a non-OK status, not OK."""
    if fin.reason == common_pb2.ERROR:
        raise StageFailed(f"the generator ended the request with an error: "
                          f"{fin.error or 'no message'}")
