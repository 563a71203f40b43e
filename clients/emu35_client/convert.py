"""The one place where protobuf meets the client's records: request building (``*_to_pb``) and
responses (``*_from_pb``). Request fields are checked here, before any RPC, so a mistake
raises ``InvalidArgument`` naming the argument; limits that depend on the deployment (prompt
length, image bytes) are the server's to check."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emu35_proto.v1 import api_pb2, common_pb2

from .errors import InvalidArgument
from .types import (
    EngineLoad,
    Event,
    Finished,
    Guidance,
    Health,
    ImageProgress,
    ImageReady,
    ImageStarted,
    ModelInfo,
    ResultRef,
    Sampling,
    ServerInfo,
    TextDelta,
    Usage,
)

ImageInput = str | os.PathLike | bytes | bytearray | memoryview
SizeInput = str | Sequence[int]

# The server's rule (api.proto GenerateRequest.request_id), checked here before the RPC.
REQUEST_ID_RULE = "1-64 characters of [A-Za-z0-9_-], the first a letter or digit"
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_PRESET = re.compile(r"\d+:\d+|default")
_TOKENS = re.compile(r"(\d+)\*(\d+)")   # "h*w" tokens
_PIXELS = re.compile(r"(\d+)x(\d+)")    # "HxW" pixels, 16 per token
_GRID_MAX = 256
# Every mode the API names; the server serves "ar" only (the others: Unimplemented).
_DECODE_MODES = {"ar": api_pb2.AUTOREGRESSIVE, "autoregressive": api_pb2.AUTOREGRESSIVE,
                 "dida": api_pb2.DIDA, "flashar": api_pb2.FLASHAR}


def generate_request(
    task: str, prompt: str, *, images: Sequence[ImageInput] = (), size: SizeInput | None = None,
    text_sampling: Sampling | Mapping[str, Any] | None = None,
    image_sampling: Sampling | Mapping[str, Any] | None = None,
    cfg: float | Guidance | Mapping[str, Any] | None = None, seed: int | None = None,
    max_new_tokens: int | None = None, stop_at_image_end: bool = False,
    request_id: str | None = None, decode_mode: str | None = None, model: str | None = None,
) -> api_pb2.GenerateRequest:
    """A ``GenerateRequest`` from ``Client.generate``'s arguments (see there)."""
    if not isinstance(prompt, str):
        raise InvalidArgument(f"prompt: expected str, got {type(prompt).__name__}")
    req = api_pb2.GenerateRequest(task=task_to_pb(task), prompt=prompt,
                                  images=images_to_pb(images),
                                  stop_at_image_end=bool(stop_at_image_end))
    if size is not None:
        req.size.CopyFrom(size_to_pb(size))
    if text_sampling is not None:
        req.text_sampling.CopyFrom(sampling_to_pb(text_sampling, "text_sampling"))
    if image_sampling is not None:
        req.image_sampling.CopyFrom(sampling_to_pb(image_sampling, "image_sampling"))
    if cfg is not None:
        req.guidance.CopyFrom(guidance_to_pb(cfg))
    if seed is not None:
        req.seed = _int(seed, "seed", -(2**63), 2**63 - 1)
    if max_new_tokens is not None:
        req.max_new_tokens = _int(max_new_tokens, "max_new_tokens", 1, 2**31 - 1)
    if request_id is not None:
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise InvalidArgument(f"request_id: {_quote(request_id)} is invalid; use "
                                  f"{REQUEST_ID_RULE}")
        req.request_id = request_id
    if decode_mode is not None:
        req.decode_mode = _named(decode_mode, _DECODE_MODES, "decode_mode")
    if model is not None:
        if not isinstance(model, str):
            raise InvalidArgument(f"model: expected a name (str), got {type(model).__name__}")
        req.model = model
    return req


def task_to_pb(task: str) -> int:
    names = {name.lower(): value for name, value in common_pb2.Task.items() if value}
    return _named(task, names, "task")


def images_to_pb(images: Sequence[ImageInput]) -> list[api_pb2.InputImage]:
    """Reference images: each a file path or the encoded bytes (PNG, JPEG, WEBP or BMP)."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise InvalidArgument("images: expected a sequence of paths or bytes, got a single "
                              f"{type(images).__name__}; wrap it in a list")
    return [api_pb2.InputImage(data=_image_bytes(image, f"images[{i}]"))
            for i, image in enumerate(images)]


def _image_bytes(image: ImageInput, name: str) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        try:
            data = Path(image).read_bytes()
        except FileNotFoundError:
            raise InvalidArgument(f"{name}: file not found: {image}") from None
        except OSError as e:
            raise InvalidArgument(f"{name}: cannot read {image}: {e.strerror or e}") from None
    else:
        raise InvalidArgument(f"{name}: expected a path or bytes, got {type(image).__name__}")
    if not data:
        raise InvalidArgument(f"{name}: empty image")
    return data


def size_to_pb(size: SizeInput) -> common_pb2.ImageSize:
    """``"auto"``; a preset (``"16:9"``, ``"default"``); ``"h*w"`` tokens; ``"HxW"`` pixels
    (multiples of 16); or ``(h, w)`` tokens."""
    if isinstance(size, str):
        text = size.strip().lower()
        if text == "auto":
            return common_pb2.ImageSize(auto=True)
        if _PRESET.fullmatch(text):
            return common_pb2.ImageSize(preset=text)
        if m := _TOKENS.fullmatch(text):
            return _grid(int(m[1]), int(m[2]), size)
        if m := _PIXELS.fullmatch(text):
            h, w = int(m[1]), int(m[2])
            if h % 16 or w % 16:
                raise InvalidArgument(f"size: {_quote(size)} pixels must be multiples of 16 (one token)")
            return _grid(h // 16, w // 16, size)
        raise InvalidArgument(f"size: {_quote(size)} is not 'auto', a preset like '16:9', 'h*w' tokens "
                              "or 'HxW' pixels")
    if (isinstance(size, Sequence) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        return _grid(size[0], size[1], size)
    raise InvalidArgument(f"size: expected a str or an (h, w) pair of ints, got {_quote(size)}")


def _grid(h: int, w: int, given: object) -> common_pb2.ImageSize:
    if not (1 <= h <= _GRID_MAX and 1 <= w <= _GRID_MAX):
        raise InvalidArgument(f"size: {_quote(given)} gives {h}x{w} tokens; each side must be "
                              f"1..{_GRID_MAX}")
    return common_pb2.ImageSize(grid=common_pb2.ImageGrid(h=h, w=w))


def sampling_to_pb(sampling: Sampling | Mapping[str, Any], name: str) -> common_pb2.SamplingParams:
    """From a ``Sampling``, a dict, or any object with top_k / top_p / temperature attributes."""
    fields = _fields(sampling, ("top_k", "top_p", "temperature"), name)
    pb = common_pb2.SamplingParams()
    if fields["top_k"] is not None:
        pb.top_k = _int(fields["top_k"], f"{name}.top_k", -(2**31), 2**31 - 1)
    for key in ("top_p", "temperature"):
        if fields[key] is not None:
            setattr(pb, key, _float(fields[key], f"{name}.{key}"))
    return pb


def guidance_to_pb(cfg: float | Guidance | Mapping[str, Any]) -> common_pb2.Guidance:
    """A number is the guidance scale; a ``Guidance`` (or dict) also sets the mode."""
    if isinstance(cfg, (int, float)) and not isinstance(cfg, bool):
        cfg = Guidance(scale=cfg)
    fields = _fields(cfg, ("scale", "mode", "image_scale"), "cfg")
    pb = common_pb2.Guidance()
    if fields["mode"] is not None:
        modes = {n.lower(): v for n, v in common_pb2.GuidanceMode.items() if v}
        pb.mode = _named(fields["mode"], modes, "cfg.mode")
    for key in ("scale", "image_scale"):
        if fields[key] is not None:
            setattr(pb, key, _float(fields[key], f"cfg.{key}"))
    return pb


def _fields(value: object, keys: tuple[str, ...], name: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise InvalidArgument(f"{name}: unknown key(s) {unknown}; expected {list(keys)}")
        return {k: value.get(k) for k in keys}
    if not any(hasattr(value, k) for k in keys):
        raise InvalidArgument(f"{name}: expected a dict or an object with {list(keys)}, "
                              f"got {type(value).__name__}")
    return {k: getattr(value, k, None) for k in keys}


def _named(value: object, names: Mapping[str, int], field_name: str) -> int:
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in names:
        raise InvalidArgument(f"{field_name}: unknown value {_quote(value)}; one of "
                              f"{', '.join(names)}")
    return names[key]


def _quote(value: object, limit: int = 40) -> str:
    """``repr`` of at most a short prefix of a bad value."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} long)"
    return repr(value)


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{name}: expected an int, got {_quote(value)}")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{name}: {value} is out of range [{lo}, {hi}]")
    return value


def _float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name}: expected a number, got {_quote(value)}")
    if not math.isfinite(value):
        raise InvalidArgument(f"{name}: expected a finite number, got {value!r}")
    return float(value)


# ---- responses -----------------------------------------------------------------------------

def event_from_pb(pb: api_pb2.GenerateEvent) -> Event | None:
    """The typed event; None for an event kind this client does not know (newer server)."""
    kind = pb.WhichOneof("event")
    if kind == "text":
        return TextDelta(text=pb.text.text, channel=pb.text.channel or "text")
    if kind == "image_started":
        e = pb.image_started
        return ImageStarted(index=e.index, h=e.grid.h, w=e.grid.w)
    if kind == "image_progress":
        e = pb.image_progress
        return ImageProgress(index=e.index, rows_done=e.rows_done, rows_total=e.rows_total)
    if kind == "image_ready":
        return ImageReady(index=pb.image_ready.index, ref=result_ref_from_pb(pb.image_ready.image))
    if kind == "finished":
        return finished_from_pb(pb.finished)
    return None


def finished_from_pb(pb: api_pb2.Finished) -> Finished:
    return Finished(
        reason=_enum_name(common_pb2.FinishReason, pb.reason), usage=usage_from_pb(pb.usage),
        story=result_ref_from_pb(pb.story) if pb.HasField("story") else None,
        manifest=result_ref_from_pb(pb.manifest) if pb.HasField("manifest") else None,
        incomplete_image=pb.incomplete_image, seed=pb.seed)


def result_ref_from_pb(pb: common_pb2.ResultRef) -> ResultRef:
    return ResultRef(uri=pb.uri, presigned_url=pb.presigned_url, sha256=pb.sha256, bytes=pb.bytes,
                     width=pb.width, height=pb.height, content_type=pb.content_type)


def usage_from_pb(pb: common_pb2.Usage) -> Usage:
    return Usage(prompt_tokens=pb.prompt_tokens, uncond_prompt_tokens=pb.uncond_prompt_tokens,
                 cached_prompt_tokens=pb.cached_prompt_tokens,
                 generated_tokens=pb.generated_tokens, images=pb.images,
                 queue_seconds=pb.queue_seconds, first_token_seconds=pb.first_token_seconds,
                 total_seconds=pb.total_seconds)


def health_from_pb(pb: api_pb2.HealthResponse) -> Health:
    return Health(ready=pb.ready, stages=dict(sorted(pb.stages.items())),
                  load=load_from_pb(pb.load) if pb.HasField("load") else None)


def info_from_pb(pb: api_pb2.InfoResponse) -> ServerInfo:
    return ServerInfo(version=pb.version, tasks=tuple(pb.tasks),
                      max_prompt_chars=pb.max_prompt_chars, max_images=pb.max_images,
                      max_image_bytes=pb.max_image_bytes, context_length=pb.context_length,
                      load=load_from_pb(pb.load) if pb.HasField("load") else None)


def load_from_pb(pb: api_pb2.EngineLoad) -> EngineLoad:
    return EngineLoad(replicas=pb.replicas, waiting=pb.waiting, running=pb.running,
                      kv_blocks_used=pb.kv_blocks_used, kv_blocks_total=pb.kv_blocks_total,
                      max_waiting=pb.max_waiting)


def models_from_pb(pb: api_pb2.ListModelsResponse) -> tuple[ModelInfo, ...]:
    return tuple(ModelInfo(name=m.name, checkpoint=m.checkpoint, vocab_size=m.vocab_size)
                 for m in pb.models)


def _enum_name(enum, value: int) -> str:
    """Lower-case enum name ("stop"); ``"unknown(7)"`` for a value newer than this client."""
    if value == 0:
        return "unspecified"
    try:
        return enum.Name(value).lower()
    except ValueError:
        return f"unknown({value})"
