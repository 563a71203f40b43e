"""Protobuf <-> domain records: the only module that knows both (STYLE.md practice 2)."""
from __future__ import annotations

import torch

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.engine.events import (Finished, ImageComplete, ImageProgress, ImageStarted,
                                    TextDelta, Usage)
from services.engine.request import (GenerationRequest, Guidance, GuidanceMode,
                                     RequestError, SamplingParams, StopRule)
from services.model.image_tokens import ImageGrid
from services.model.templates import TASK_DEFAULTS, Task

TASKS = {common_pb2.T2I: Task.T2I, common_pb2.X2I: Task.X2I, common_pb2.HOWTO: Task.HOWTO,
         common_pb2.STORY: Task.STORY, common_pb2.EXPLORE: Task.EXPLORE, common_pb2.VLA: Task.VLA}
TASK_PB = {v: k for k, v in TASKS.items()}
MODES = {common_pb2.GUIDANCE_MODE_UNSPECIFIED: GuidanceMode.NO_TEXT,
         common_pb2.NO_TEXT: GuidanceMode.NO_TEXT,
         common_pb2.NO_TEXT_IMG_CFG: GuidanceMode.NO_TEXT_IMG_CFG,
         common_pb2.NONE: GuidanceMode.NONE}
MODE_PB = {GuidanceMode.NO_TEXT: common_pb2.NO_TEXT,
           GuidanceMode.NO_TEXT_IMG_CFG: common_pb2.NO_TEXT_IMG_CFG,
           GuidanceMode.NONE: common_pb2.NONE}
REASONS = {"stop": common_pb2.STOP, "length": common_pb2.LENGTH,
           "aborted": common_pb2.ABORTED, "error": common_pb2.ERROR}
REASON_NAMES = {v: k for k, v in REASONS.items()}


# ------------------------------------------------------------------ small types
def sampling_to_pb(p: SamplingParams) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(top_k=p.top_k, top_p=p.top_p, temperature=p.temperature)


def sampling_from_pb(pb: common_pb2.SamplingParams, default: SamplingParams) -> SamplingParams:
    """Fields the caller left unset take the default's values."""
    return SamplingParams(
        top_k=pb.top_k if pb.HasField("top_k") else default.top_k,
        top_p=pb.top_p if pb.HasField("top_p") else default.top_p,
        temperature=pb.temperature if pb.HasField("temperature") else default.temperature)


def text_sampling_from_pb(pb: common_pb2.SamplingParams, task: Task) -> SamplingParams:
    """Text sampling: the caller's fields over the task's defaults (spec §6.1)."""
    d = TASK_DEFAULTS[task]
    return sampling_from_pb(pb, SamplingParams(d.text_top_k, d.text_top_p, d.text_temperature))


def image_sampling_from_pb(pb: common_pb2.SamplingParams, task: Task) -> SamplingParams:
    """Visual sampling: the caller's fields over the task's defaults (spec §6.1)."""
    d = TASK_DEFAULTS[task]
    return sampling_from_pb(pb, SamplingParams(d.image_top_k, d.image_top_p, d.image_temperature))


def guidance_from_pb(pb: common_pb2.Guidance, task: Task) -> Guidance:
    """The one conversion of Guidance: an unset scale is the task's CFG default (t2i 5,
    others 3), an unset image_scale 1.0, an unset mode NO_TEXT."""
    return Guidance(MODES[pb.mode],
                    pb.scale if pb.HasField("scale") else TASK_DEFAULTS[task].cfg_scale,
                    pb.image_scale if pb.HasField("image_scale") else 1.0)


def guidance_to_pb(g: Guidance) -> common_pb2.Guidance:
    return common_pb2.Guidance(mode=MODE_PB[g.mode], scale=g.scale, image_scale=g.image_scale)


def codes_to_pb(codes: torch.Tensor) -> common_pb2.CodeGrid:
    h, w = codes.shape
    return common_pb2.CodeGrid(h=h, w=w, codes=codes.flatten().tolist())


def codes_from_pb(pb: common_pb2.CodeGrid, codebook_size: int | None = None) -> torch.Tensor:
    """A CodeGrid's codes as LongTensor [h, w]; RequestError naming ``grid.h``/``grid.w``/
    ``grid.codes`` when they do not make a grid (or leave the codebook, when its size is
    given)."""
    if not (1 <= pb.h <= 1 << 16 and 1 <= pb.w <= 1 << 16):
        raise RequestError(f"grid.h, grid.w: {pb.h}x{pb.w} is not a grid (each side 1..65536)")
    if len(pb.codes) != pb.h * pb.w:
        raise RequestError(f"grid.codes: {len(pb.codes)} codes do not fill {pb.h}x{pb.w} "
                           f"({pb.h * pb.w} needed)")
    codes = torch.tensor(list(pb.codes), dtype=torch.long).view(pb.h, pb.w)
    if codebook_size is not None and len(pb.codes):
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= codebook_size:
            bad = lo if lo < 0 else hi
            raise RequestError(f"grid.codes: code {bad} is outside the codebook "
                               f"[0, {codebook_size})")
    return codes


def usage_to_pb(u: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=u.prompt_tokens, uncond_prompt_tokens=u.uncond_prompt_tokens,
        cached_prompt_tokens=u.cached_prompt_tokens, generated_tokens=u.generated_tokens,
        images=u.images, queue_seconds=u.queue_s, first_token_seconds=u.first_token_s or 0.0,
        total_seconds=u.total_s)


def result_ref_to_pb(ref) -> common_pb2.ResultRef:
    """services.storage.ResultRef -> the public ResultRef."""
    return common_pb2.ResultRef(uri=ref.uri, presigned_url=ref.presigned_url, sha256=ref.sha256,
                                bytes=ref.bytes, width=ref.width, height=ref.height,
                                content_type=ref.content_type)


def result_ref_from_pb(pb: common_pb2.ResultRef):
    """The public ResultRef -> services.storage.ResultRef (the decoder's answer, for the
    manifest)."""
    from services.storage import ResultRef  # storage's record; the module stays light
    return ResultRef(uri=pb.uri, presigned_url=pb.presigned_url, sha256=pb.sha256,
                     bytes=pb.bytes, width=pb.width, height=pb.height,
                     content_type=pb.content_type or "application/octet-stream")


# ------------------------------------------------------ generator stage request
def generator_request_to_pb(r: GenerationRequest) -> stages_pb2.GeneratorRequest:
    pb = stages_pb2.GeneratorRequest(
        request_id=r.request_id, task=TASK_PB[r.task], cond_ids=r.cond_ids,
        uncond_ids=r.uncond_ids, full_uncond_ids=r.full_uncond_ids,
        text_sampling=sampling_to_pb(r.text), image_sampling=sampling_to_pb(r.image),
        guidance=guidance_to_pb(r.guidance),
        max_new_tokens=r.max_new_tokens, stop_at_image_end=r.stop is StopRule.EOI, seed=r.seed)
    if r.output_grid is not None:
        pb.output_grid.CopyFrom(common_pb2.ImageGrid(h=r.output_grid.h, w=r.output_grid.w))
    return pb


def generator_request_from_pb(pb: stages_pb2.GeneratorRequest) -> GenerationRequest:
    if pb.task not in TASKS:
        raise RequestError(f"task: unknown task {pb.task}")
    if pb.guidance.mode not in MODES:
        raise RequestError(f"guidance.mode: unknown mode {pb.guidance.mode}")
    task = TASKS[pb.task]
    return GenerationRequest(
        request_id=pb.request_id, task=task, cond_ids=tuple(pb.cond_ids),
        uncond_ids=tuple(pb.uncond_ids), full_uncond_ids=tuple(pb.full_uncond_ids),
        text=text_sampling_from_pb(pb.text_sampling, task),
        image=image_sampling_from_pb(pb.image_sampling, task),
        guidance=guidance_from_pb(pb.guidance, task),
        output_grid=ImageGrid(pb.output_grid.h, pb.output_grid.w) if pb.HasField("output_grid") else None,
        max_new_tokens=pb.max_new_tokens, stop=StopRule.EOI if pb.stop_at_image_end else StopRule.EOS,
        seed=pb.seed)


# ------------------------------------------------------- generator stage events
def generator_event_to_pb(e) -> stages_pb2.GeneratorEvent:
    if isinstance(e, TextDelta):
        return stages_pb2.GeneratorEvent(text=api_pb2.TextDelta(text=e.text, channel=e.channel))
    if isinstance(e, ImageStarted):
        return stages_pb2.GeneratorEvent(image_started=api_pb2.ImageStarted(
            index=e.index, grid=common_pb2.ImageGrid(h=e.h, w=e.w)))
    if isinstance(e, ImageProgress):
        return stages_pb2.GeneratorEvent(image_progress=api_pb2.ImageProgress(
            index=e.index, rows_done=e.rows_done, rows_total=e.rows_total))
    if isinstance(e, ImageComplete):
        return stages_pb2.GeneratorEvent(image_tokens=codes_to_pb(e.codes), image_index=e.index)
    if isinstance(e, Finished):
        return stages_pb2.GeneratorEvent(finished=stages_pb2.GeneratorFinished(
            reason=REASONS[e.reason], usage=usage_to_pb(e.usage), token_ids=e.token_ids,
            incomplete_image=e.incomplete_image, error=e.error or ""))
    raise TypeError(f"not an engine event: {e!r}")


def engine_load_to_pb(load) -> api_pb2.EngineLoad:
    """services.stages.load.GeneratorLoad -> the public EngineLoad."""
    return api_pb2.EngineLoad(replicas=load.replicas, waiting=load.waiting, running=load.running,
                              kv_blocks_used=load.kv_blocks_used,
                              kv_blocks_total=load.kv_blocks_total, max_waiting=load.max_waiting)


# ------------------------------------------- stored results and finishes (gateway)
def result_ref_from_pb(pb: common_pb2.ResultRef):
    """emu35.v1.ResultRef -> services.storage ResultRef."""
    from services.storage.records import ResultRef
    return ResultRef(uri=pb.uri, presigned_url=pb.presigned_url, sha256=pb.sha256,
                     bytes=pb.bytes, width=pb.width, height=pb.height,
                     content_type=pb.content_type)


def usage_from_pb(pb: common_pb2.Usage) -> Usage:
    """Inverse of usage_to_pb (the proto has no preemption count: 0)."""
    return Usage(prompt_tokens=pb.prompt_tokens, uncond_prompt_tokens=pb.uncond_prompt_tokens,
                 cached_prompt_tokens=pb.cached_prompt_tokens,
                 generated_tokens=pb.generated_tokens, images=pb.images, preemptions=0,
                 queue_s=pb.queue_seconds, first_token_s=pb.first_token_seconds,
                 total_s=pb.total_seconds)


def generator_finished_from_pb(pb: stages_pb2.GeneratorFinished, request_id: str) -> Finished:
    """The generator stage's last event -> the engine's Finished record."""
    return Finished(request_id=request_id, reason=REASON_NAMES.get(pb.reason, "error"),
                    usage=usage_from_pb(pb.usage), token_ids=tuple(pb.token_ids),
                    incomplete_image=pb.incomplete_image, error=pb.error or None)


# ------------------------------------------- stage answers and public status (stages)
def encode_response_to_pb(grids) -> stages_pb2.EncodeResponse:
    """The encoder's code grids (tensors [h, w]), in image order."""
    return stages_pb2.EncodeResponse(grids=[codes_to_pb(g) for g in grids])


def decode_response_to_pb(ref) -> stages_pb2.DecodeResponse:
    """The decoder's stored PNG (a services.storage ResultRef)."""
    return stages_pb2.DecodeResponse(image=result_ref_to_pb(ref))


def health_to_pb(ready: bool, stages: dict[str, bool], load) -> api_pb2.HealthResponse:
    """Readiness per stage and the generator load (None: could not be read)."""
    return api_pb2.HealthResponse(ready=ready, stages=stages,
                                  load=engine_load_to_pb(load) if load is not None else None)


def info_to_pb(version: str, tasks, limits, context_length: int, load) -> api_pb2.InfoResponse:
    """What the deployment serves (limits: services.rpc.validation.Limits)."""
    return api_pb2.InfoResponse(version=version, tasks=list(tasks),
                                max_prompt_chars=limits.max_prompt_chars,
                                max_images=limits.max_images,
                                max_image_bytes=limits.max_image_bytes,
                                context_length=context_length,
                                load=engine_load_to_pb(load) if load is not None else None)


def list_models_to_pb(models) -> api_pb2.ListModelsResponse:
    """``models``: (name, checkpoint, vocab_size) tuples, the default first."""
    return api_pb2.ListModelsResponse(models=[
        api_pb2.ModelInfo(name=name, checkpoint=str(checkpoint), vocab_size=vocab_size)
        for name, checkpoint, vocab_size in models])
