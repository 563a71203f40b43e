"""From a user's request (task, text, reference images, size) to the token prompts the model
sees: reference images encoded at the task's area, templates filled, output grid chosen.

This is the one place that composes the text tokenizer, the vision tokenizer and the templates;
the CLI and the gateway both call it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .image_tokens import ImageGrid, image_span_ids, parse_image_size
from .templates import TASK_DEFAULTS, Task, TaskDefaults, build_prompts, parse_task
from .text_tokenizer import TextTokenizer

if TYPE_CHECKING:
    from PIL import Image

    from .ibq import VisionTokenizer


@dataclass(frozen=True)
class PreparedPrompt:
    """Everything generation needs to start a request, in token ids."""

    task: Task
    cond: tuple[int, ...]
    uncond: tuple[int, ...]
    reference_grids: tuple[ImageGrid, ...]
    output_grid: ImageGrid | None  # None: the model picks the size (auto header)
    defaults: TaskDefaults


def select_output_grid(explicit: ImageGrid | None,
                       reference_grids: Sequence[ImageGrid]) -> ImageGrid | None:
    """Spec §3.4: an explicit size wins, else the last reference image's grid, else auto.

    The reference ignores an explicit size when several reference images are given
    (force_same_image_size); production always honours the caller's size (spec §12 item 17).
    """
    if explicit is not None:
        return explicit
    return reference_grids[-1] if reference_grids else None


def output_grid_for(task: Task, explicit: ImageGrid | None, size_given: bool,
                    reference_grids: Sequence[ImageGrid]) -> ImageGrid | None:
    """The output grid of a request: with no size given, t2i without reference images uses
    the t2i config's "default" preset (spec §3.2); then :func:`select_output_grid`."""
    if not size_given and task is Task.T2I and not reference_grids:
        explicit = parse_image_size("default")
    return select_output_grid(explicit, reference_grids)


def prepare_prompt(tok: TextTokenizer, task: str | Task, question: str,
                   images: Sequence["Image.Image"] = (), size: str | None = None,
                   vision: "VisionTokenizer | None" = None) -> PreparedPrompt:
    """Build both prompts. ``size``: "auto", a preset ("1:1", "16:9", ...), "h*w" tokens or
    "HxW" pixels; None uses the task's reference behaviour (t2i: "default" = 4:3 preset)."""
    task = parse_task(task)
    defaults = TASK_DEFAULTS[task]
    explicit = parse_image_size(size) if size is not None else None
    spans, grids = [], []
    if images:
        if vision is None:
            raise ValueError("images: reference images need a vision tokenizer")
        for code_grid in vision.encode(list(images), area=defaults.image_area):
            spans.append(image_span_ids(tok, code_grid))
            grids.append(ImageGrid(*code_grid.shape))
    pair = build_prompts(tok, task, question, spans)
    return PreparedPrompt(task=task, cond=pair.cond, uncond=pair.uncond,
                          reference_grids=tuple(grids),
                          output_grid=output_grid_for(task, explicit, size is not None, grids),
                          defaults=defaults)
