"""The context budget of a request, computed before any image is encoded.

Each reference image becomes the grid that ``smart_resize`` (spec §3.3, the encoder's rule:
scaled to about the task's area, small images scaled up as the reference does) gives its
header's dimensions, so the prompt length is known exactly from the request. A failure names
the cause: the prompt, the images, ``size`` or an explicit ``max_new_tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.engine.request import RequestError, token_budget
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
    output = output_grid_for(checked.task, checked.size, checked.size_given, grids)
    try:  # the one budget rule, shared with emu35 generate (services/engine/request.py)
        budget = token_budget(checked.task, checked.max_new_tokens, prompt, context_length,
                              output, images, checked.size_given)
    except RequestError as e:
        raise InvalidArgument(str(e)) from None
    if output is not None and output.span_length > budget:  # the engine refuses it too
        field = "size" if checked.size_given else (
            "max_new_tokens" if checked.max_new_tokens is not None else
            "images" if checked.images else "prompt")
        raise InvalidArgument(f"{field}: a {output.h}*{output.w} output image takes "
                              f"{output.span_length} tokens, more than max_new_tokens ({budget})")
    return Budget(grids, prompt, images, output, budget)
