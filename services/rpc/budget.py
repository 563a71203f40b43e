"""The context budget of a request, computed before any image is encoded.

Each reference image becomes the grid that ``smart_resize`` (spec §3.3, the encoder's rule:
scaled to about the task's area, small images scaled up as the reference does) gives its
header's dimensions, so the prompt length is known exactly from the request. A failure names
the cause: the prompt, the images, ``size`` or an explicit ``max_new_tokens``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.model.ibq.resize import smart_resize_size
from services.model.image_tokens import PIXELS_PER_TOKEN, ImageGrid
from services.model.prompting import output_grid_for
from services.model.templates import TASK_DEFAULTS, build_prompts
from services.model.text_tokenizer import TextTokenizer

from .errors import InvalidArgument
from .validation import CheckedRequest


@dataclass(frozen=True)
class Budget:
    """What the request will take: reference grids, prompt length, output grid, budget."""

    reference_grids: tuple[ImageGrid, ...]
    prompt_tokens: int           # the longer of the conditional and unconditional prompts
    image_tokens: int            # of which the reference images' spans (in one prompt)
    output_grid: ImageGrid | None
    max_new_tokens: int


def reference_grids(checked: CheckedRequest) -> tuple[ImageGrid, ...]:
    """The grid each reference image will be encoded to, from its header's dimensions."""
    area = TASK_DEFAULTS[checked.task].image_area
    grids = []
    for i, header in enumerate(checked.image_headers):
        try:
            w, h = smart_resize_size(header.width, header.height, area, PIXELS_PER_TOKEN)
        except ValueError:
            raise InvalidArgument(
                f"images[{i}]: {header.width}x{header.height} pixels is too elongated: resized "
                f"to the task's area ({area} pixels), its short side would be under 16 pixels"
            ) from None
        grids.append(ImageGrid(h // PIXELS_PER_TOKEN, w // PIXELS_PER_TOKEN))
    return tuple(grids)


def plan_budget(tok: TextTokenizer, checked: CheckedRequest, context_length: int) -> Budget:
    """The request's token budget; InvalidArgument naming the cause when it does not fit."""
    grids = reference_grids(checked)
    spans = [[tok.special.boi] * g.span_length for g in grids]  # stand-ins of the right length
    prompts = build_prompts(tok, checked.task, checked.prompt, spans)
    prompt = max(len(prompts.cond), len(prompts.uncond))
    images = sum(g.span_length for g in grids)
    what = _prompt_parts(prompt, images, grids)
    room = context_length - prompt
    if room < 1:
        field = "images" if images else "prompt"
        raise InvalidArgument(f"{field}: {what} fill the model context ({context_length} tokens)"
                              " with no room to generate")
    output = output_grid_for(checked.task, checked.size, checked.size_given, grids)
    if checked.max_new_tokens is not None:
        budget = checked.max_new_tokens
        if budget > room:
            raise InvalidArgument(f"max_new_tokens: {budget} does not fit: {what} leave "
                                  f"{room} of the model context ({context_length} tokens)")
    else:
        budget = min(TASK_DEFAULTS[checked.task].max_new_tokens, room)
    if output is not None and output.span_length > budget:
        raise InvalidArgument(_image_too_big(checked, output, budget, room, what))
    return Budget(grids, prompt, images, output, budget)


def _prompt_parts(prompt: int, images: int, grids: Sequence[ImageGrid]) -> str:
    if not grids:
        return f"the prompt's {prompt} tokens"
    sizes = ", ".join(g.header_text for g in grids)
    return (f"the prompt's {prompt} tokens (the reference images' {images}: grids {sizes}, "
            "each resized to the task's area)")


def _image_too_big(checked: CheckedRequest, grid: ImageGrid, budget: int, room: int,
                   what: str) -> str:
    image = f"a {grid.h}*{grid.w} output image takes {grid.span_length} tokens"
    if checked.max_new_tokens is not None:
        field = "size" if checked.size_given else "max_new_tokens"
        return f"{field}: {image}, more than max_new_tokens ({budget})"
    if budget < room:  # the task's default budget is the limit, not the context
        field = "size" if checked.size_given else "images"
        return f"{field}: {image}, more than the task's default max_new_tokens ({budget})"
    field = "size" if checked.size_given else ("images" if checked.images else "prompt")
    return f"{field}: {image}, but {what} leave only {room} of the model context"
