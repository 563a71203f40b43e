"""What each stage re-checks before doing work, instead of trusting its caller (issue 11
item 1): the gateway validated the public request, but a stage guards its own resources and
invariants (pixels decoded, KV and grammar, storage keys), so a bug or a bypass upstream cannot
make it write outside a request's folder or run past its limits. Failures are InvalidArgument
naming the stage field."""
from __future__ import annotations

from services.model.image_tokens import DEFAULT_MAX_SIDE
from services.rpc.errors import InvalidArgument
from services.rpc.validation import REQUEST_ID, REQUEST_ID_RULE, Limits, check_image

MAX_IMAGE_INDEX = 1024           # images in one response
MAX_AREA = 4096 * 4096           # smart_resize target, as the pixel guard


def check_encode(images, area: int, limits: Limits) -> None:
    """Encoder: image count, bytes, format and pixels (from the header), and the target area."""
    if not images:
        raise InvalidArgument("images: at least one image is needed")
    if len(images) > limits.max_images:
        raise InvalidArgument(f"images: {len(images)} given, the limit is {limits.max_images}")
    for i, data in enumerate(images):
        check_image(data, f"images[{i}]", limits.max_image_bytes, limits.max_image_pixels)
    if not 0 < area <= min(MAX_AREA, limits.max_image_pixels):
        raise InvalidArgument(f"area: {area} pixels is outside 1..{min(MAX_AREA, limits.max_image_pixels)}")


def check_request_id(request_id: str, field: str = "request_id") -> None:
    if not REQUEST_ID.fullmatch(request_id or ""):
        raise InvalidArgument(f"{field}: use {REQUEST_ID_RULE}")


def check_decode(request_id: str, tenant: str, index: int, h: int, w: int, n_codes: int,
                 codes_range: tuple[int, int] | None, num_codes: int) -> None:
    """Decoder: who owns the image (request id, tenant), its index and its grid."""
    check_request_id(request_id)
    check_request_id(tenant, "tenant")
    if not 0 <= index < MAX_IMAGE_INDEX:
        raise InvalidArgument(f"index: {index} is outside 0..{MAX_IMAGE_INDEX - 1}")
    if not (1 <= h <= DEFAULT_MAX_SIDE and 1 <= w <= DEFAULT_MAX_SIDE):
        raise InvalidArgument(f"grid: {h}x{w} is outside 1..{DEFAULT_MAX_SIDE} per side")
    if n_codes != h * w:
        raise InvalidArgument(f"grid: {n_codes} codes do not fill {h}x{w}")
    if codes_range is not None and not (0 <= codes_range[0] and codes_range[1] < num_codes):
        raise InvalidArgument(f"grid: codes outside the codebook [0, {num_codes})")


def check_key_under(key: str, tenant: str, request_id: str) -> None:
    """The storage key stays inside the request's folder of its tenant."""
    prefix = f"{tenant}/{request_id}/"
    if not key.startswith(prefix) or ".." in key[len(prefix):].split("/"):
        raise InvalidArgument(f"request_id: the image key leaves the request's folder {prefix}")


def check_prompt_ids(ids, special, field: str) -> None:
    """Generator: control ids only where the prompt grammar puts them. Never pad, eos or the
    unused eof/tms; image spans (boi ... eoi) balanced and not nested; visual codes, row ends
    and the header end (img) only inside a span."""
    never = {special.pad: "pad", special.eos: "eos", special.eof: "eof", special.tms: "tms"}
    inside = False
    lo, hi = special.visual_base, special.visual_base + special.num_visual
    for pos, t in enumerate(ids):
        if t in never:
            raise InvalidArgument(f"{field}: control token {never[t]} at {pos} is not allowed")
        if t == special.boi:
            if inside:
                raise InvalidArgument(f"{field}: image start at {pos} inside an image")
            inside = True
        elif t == special.eoi:
            if not inside:
                raise InvalidArgument(f"{field}: image end at {pos} outside an image")
            inside = False
        elif not inside and (lo <= t < hi or t in (special.eol, special.img)):
            raise InvalidArgument(f"{field}: image token at {pos} outside an image span")
    if inside:
        raise InvalidArgument(f"{field}: an image span is not closed")


def check_output_grid(grid) -> None:
    """Generator: a fixed output grid within the sizes the API accepts."""
    if grid is not None and not (1 <= grid.h <= DEFAULT_MAX_SIDE and 1 <= grid.w <= DEFAULT_MAX_SIDE):
        raise InvalidArgument(f"output_grid: {grid.h}x{grid.w} is outside 1..{DEFAULT_MAX_SIDE} "
                              "per side")
