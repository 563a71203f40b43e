"""Checks of a public GenerateRequest before any work is done (DESIGN.md §7): every failure
names the public field and quotes at most a short prefix of the bad value. Images are checked
from their headers (size, format, pixel count) before any pixel is decoded; the context budget
is checked from their dimensions before the encoder runs (budget.py)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from google.protobuf import unknown_fields

from emu35_proto.v1 import api_pb2, common_pb2
from services.engine.request import Guidance, GuidanceMode, SamplingParams, StopRule
from services.model.image_tokens import ImageGrid, ImageSizeError, parse_image_size
from services.model.templates import Task

from .convert import (TASKS, guidance_from_pb, image_sampling_from_pb, text_sampling_from_pb)
from .errors import InvalidArgument, NotFound, Unimplemented, quote
from .images import ImageHeader, check_image, decode_image  # noqa: F401 (stages import it here)

# The one request_id rule (api.proto states it; the storage layout accepts a superset).
REQUEST_ID_RULE = "1-64 characters of [A-Za-z0-9_-], the first a letter or digit"
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Bounds that keep fp32 sampling finite (1/T and s * (c - u) must not overflow).
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
MAX_GUIDANCE_SCALE = 1e3
_DECODE_MODES_SERVED = (api_pb2.DECODE_MODE_UNSPECIFIED, api_pb2.AUTOREGRESSIVE)
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 8192
    max_images: int = 3
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = 4096 * 4096  # decompression-bomb guard, checked from the header


@dataclass(frozen=True)
class CheckedRequest:
    """A request whose every field is valid, with the task's defaults filled in."""

    task: Task
    prompt: str
    images: tuple[bytes, ...]
    image_headers: tuple[ImageHeader, ...]
    size: ImageGrid | None       # explicit output grid
    size_given: bool             # False: the reference rule picks the grid
    text: SamplingParams
    image: SamplingParams
    guidance: Guidance
    seed: int | None             # None: the gateway draws one
    max_new_tokens: int | None   # None: the task's default, clamped to the context left
    stop: StopRule
    request_id: str              # "" : the gateway makes one


def check_request_id(request_id: str) -> None:
    if request_id and not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(f"request_id: {quote(request_id)} is invalid; use {REQUEST_ID_RULE}")


def check_request(pb: api_pb2.GenerateRequest, limits: Limits,
                  model_name: str = "") -> CheckedRequest:
    """Every field of ``pb``, cheapest first; raises InvalidArgument (NotFound for an unknown
    model, Unimplemented for a decode mode or guidance mode not served yet)."""
    check_known_fields(pb, "request")
    if pb.task not in TASKS:
        raise InvalidArgument(f"task: {pb.task} is not a task; use one of t2i, x2i, howto, "
                              "story, explore, vla")
    task = TASKS[pb.task]
    check_request_id(pb.request_id)
    _check_model(pb.model, model_name)
    _check_decode_mode(pb.decode_mode)
    _check_prompt(pb.prompt, limits)
    stop = _stop_rule(pb, task)
    max_new_tokens = None
    if pb.HasField("max_new_tokens"):
        if pb.max_new_tokens < 1:
            raise InvalidArgument(f"max_new_tokens: must be >= 1, got {pb.max_new_tokens}")
        max_new_tokens = pb.max_new_tokens
    text, image = text_sampling_from_pb(pb.text_sampling, task), image_sampling_from_pb(
        pb.image_sampling, task)
    _check_sampling(text, pb.text_sampling, "text_sampling")
    _check_sampling(image, pb.image_sampling, "image_sampling")
    guidance = _guidance(pb.guidance, task)
    size, given = _size(pb)
    headers = _images(pb, task, limits)
    return CheckedRequest(task, pb.prompt, tuple(im.data for im in pb.images), headers, size,
                          given, text, image, guidance, pb.seed if pb.HasField("seed") else None,
                          max_new_tokens, stop, pb.request_id)


def check_known_fields(msg, name: str) -> None:
    """Reject fields this server does not know (a newer client's, or a known number sent with
    the wrong wire type): the API never accepts what the server would ignore."""
    for field in unknown_fields.UnknownFieldSet(msg):
        known = msg.DESCRIPTOR.fields_by_number.get(field.field_number)
        what = (f"field {field.field_number} ({known.name}) has the wrong wire type" if known
                else f"unknown field number {field.field_number}")
        raise InvalidArgument(f"{name}: {what}; this server does not take it")
    for fd, value in msg.ListFields():
        if fd.message_type is None or fd.message_type.GetOptions().map_entry:
            continue
        if fd.is_repeated:
            for i, item in enumerate(value):
                check_known_fields(item, f"{fd.name}[{i}]")
        else:
            check_known_fields(value, fd.name if name == "request" else f"{name}.{fd.name}")


def _check_model(model: str, served: str) -> None:
    if model and model != served:
        raise NotFound(f"model: {quote(model)} is not served here; use {served!r} "
                       "(see ListModels) or leave it empty")


def _check_decode_mode(mode: int) -> None:
    if mode in _DECODE_MODES_SERVED:
        return
    if mode in api_pb2.DecodeMode.values():
        raise Unimplemented(f"decode_mode: {api_pb2.DecodeMode.Name(mode)} is not implemented "
                            "yet; use AUTOREGRESSIVE (or leave it unset)")
    raise InvalidArgument(f"decode_mode: {mode} is not a DecodeMode; use AUTOREGRESSIVE")


def _check_prompt(prompt: str, limits: Limits) -> None:
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidArgument(f"prompt: {len(prompt)} characters, the limit is "
                              f"{limits.max_prompt_chars}")
    if not prompt.strip():
        raise InvalidArgument("prompt: must not be empty")


def _stop_rule(pb: api_pb2.GenerateRequest, task: Task) -> StopRule:
    if not pb.stop_at_image_end:
        return StopRule.EOS
    if task not in (Task.T2I, Task.X2I):
        raise InvalidArgument(f"stop_at_image_end: only for t2i and x2i, not {task.value}")
    return StopRule.EOI


def _check_sampling(p: SamplingParams, pb: common_pb2.SamplingParams, name: str) -> None:
    """Only the caller's fields can be bad (the defaults are valid)."""
    if pb.HasField("top_p") and not (math.isfinite(p.top_p) and 0.0 < p.top_p <= 1.0):
        raise InvalidArgument(f"{name}.top_p: must be in (0, 1], got {p.top_p!r}")
    if pb.HasField("temperature") and not (math.isfinite(p.temperature)
                                           and MIN_TEMPERATURE <= p.temperature <= MAX_TEMPERATURE):
        raise InvalidArgument(f"{name}.temperature: must be a finite number in "
                              f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {p.temperature!r}")


def _guidance(pb: common_pb2.Guidance, task: Task) -> Guidance:
    if pb.mode not in common_pb2.GuidanceMode.values():
        raise InvalidArgument(f"guidance.mode: {pb.mode} is not a GuidanceMode; use NO_TEXT or "
                              "NONE")
    if pb.mode == common_pb2.NO_TEXT_IMG_CFG:
        raise Unimplemented("guidance.mode: NO_TEXT_IMG_CFG needs a full-unconditional prompt, "
                            "which this API does not take yet; use NO_TEXT or NONE")
    if pb.HasField("image_scale"):
        raise InvalidArgument("guidance.image_scale: only used by NO_TEXT_IMG_CFG (not served "
                              "yet); leave it unset")
    g = guidance_from_pb(pb, task)
    if pb.HasField("scale"):
        if g.mode is GuidanceMode.NONE:
            raise InvalidArgument("guidance.scale: mode NONE uses no scale; leave it unset")
        if not (math.isfinite(g.scale) and 0.0 <= g.scale <= MAX_GUIDANCE_SCALE):
            raise InvalidArgument(f"guidance.scale: must be a finite number in "
                                  f"[0, {MAX_GUIDANCE_SCALE:g}], got {g.scale!r}")
    return g


def _size(pb: api_pb2.GenerateRequest) -> tuple[ImageGrid | None, bool]:
    which = pb.size.WhichOneof("size")
    try:
        if which == "preset":
            if len(pb.size.preset) > 16:
                raise ImageSizeError(f"preset {quote(pb.size.preset)} is not a preset")
            grid = parse_image_size(pb.size.preset)
            if grid is None:  # "auto" spelled as a preset
                raise ImageSizeError("preset 'auto' is not a preset; set size.auto = true")
            return grid, True
        if which == "grid":
            g = pb.size.grid
            return parse_image_size(f"{g.h}*{g.w}") if g.h > 0 and g.w > 0 else _bad_grid(g), True
        if which == "auto":
            if not pb.size.auto:
                raise ImageSizeError("auto = false names no size; set a preset or a grid, or "
                                     "leave size unset")
            return None, True
    except ImageSizeError as e:
        raise InvalidArgument(f"size: {e}") from None
    return None, False


def _bad_grid(g: common_pb2.ImageGrid):
    raise ImageSizeError(f"grid {g.h}*{g.w}: each side must be 1..256 tokens")


def _images(pb: api_pb2.GenerateRequest, task: Task, limits: Limits) -> tuple[ImageHeader, ...]:
    if len(pb.images) > limits.max_images:
        raise InvalidArgument(f"images: {len(pb.images)} given, the limit is {limits.max_images}")
    if task is Task.X2I and not pb.images:
        raise InvalidArgument("images: x2i needs at least one reference image")
    return tuple(check_image(im.data, f"images[{i}]", limits.max_image_bytes,
                             limits.max_image_pixels) for i, im in enumerate(pb.images))
