"""Checks of a public GenerateRequest before any work is done: every failure names the field
(DESIGN.md §7). Images are checked from their headers before any pixel is decoded."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from emu35_proto.v1 import api_pb2
from services.model.image_tokens import ImageGrid, ImageSizeError, parse_image_size
from services.model.templates import Task

from .convert import TASKS
from .errors import InvalidArgument

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_FORMATS = {"PNG", "JPEG", "WEBP", "BMP"}


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 8192
    max_images: int = 3
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = 4096 * 4096  # decompression-bomb guard, checked from the header


@dataclass(frozen=True)
class CheckedRequest:
    task: Task
    prompt: str
    images: tuple[bytes, ...]
    size: ImageGrid | None       # explicit output grid
    size_given: bool             # False: the reference rule picks the grid


def check_request(pb: api_pb2.GenerateRequest, limits: Limits) -> CheckedRequest:
    if pb.task not in TASKS:
        raise InvalidArgument("task: must be one of t2i, x2i, howto, story, explore, vla")
    task = TASKS[pb.task]
    if not pb.prompt.strip():
        raise InvalidArgument("prompt: must not be empty")
    if len(pb.prompt) > limits.max_prompt_chars:
        raise InvalidArgument(f"prompt: {len(pb.prompt)} characters, the limit is "
                              f"{limits.max_prompt_chars}")
    if pb.request_id and not _REQUEST_ID.fullmatch(pb.request_id):
        raise InvalidArgument("request_id: use 1-64 characters of [A-Za-z0-9._-]")
    if len(pb.images) > limits.max_images:
        raise InvalidArgument(f"images: {len(pb.images)} given, the limit is {limits.max_images}")
    if task is Task.X2I and not pb.images:
        raise InvalidArgument("images: x2i needs at least one reference image")
    for i, image in enumerate(pb.images):
        check_image(image.data, f"images[{i}]", limits)
    size, given = _size(pb)
    return CheckedRequest(task, pb.prompt, tuple(im.data for im in pb.images), size, given)


def check_image(data: bytes, field: str, limits: Limits) -> None:
    if not data:
        raise InvalidArgument(f"{field}: empty image")
    if len(data) > limits.max_image_bytes:
        raise InvalidArgument(f"{field}: {len(data)} bytes, the limit is {limits.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError:
        raise InvalidArgument(f"{field}: too many pixels, the limit is {limits.max_image_pixels} "
                              "(decompression-bomb guard)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidArgument(f"{field}: not a readable image ({type(e).__name__})") from None
    if fmt not in _FORMATS:
        raise InvalidArgument(f"{field}: format {fmt} is not one of {sorted(_FORMATS)}")
    if w * h > limits.max_image_pixels:
        raise InvalidArgument(f"{field}: {w}x{h} pixels, the limit is {limits.max_image_pixels}")


def _size(pb: api_pb2.GenerateRequest) -> tuple[ImageGrid | None, bool]:
    which = pb.size.WhichOneof("size")
    try:
        if which == "preset":
            return parse_image_size(pb.size.preset), True
        if which == "grid":
            return parse_image_size(f"{pb.size.grid.h}*{pb.size.grid.w}"), True
        if which == "auto":
            return None, True
    except ImageSizeError as e:
        raise InvalidArgument(f"size: {e}") from None
    return None, False


def decode_image(data: bytes) -> Image.Image:
    """Decode an already checked image fully (RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")
