"""Streaming events a request produces, in order (DESIGN.md §3 step 3)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class TextDelta:
    """New text. channel: "text", "global_cot" (inside BOG..EOG) or "image_cot" (BOC..EOC)."""

    request_id: str
    text: str
    channel: str = "text"


@dataclass(frozen=True)
class ImageStarted:
    request_id: str
    index: int  # 0-based image number within the response
    h: int      # grid in tokens; pixels are 16h x 16w
    w: int


@dataclass(frozen=True)
class ImageProgress:
    request_id: str
    index: int
    rows_done: int
    rows_total: int


@dataclass(frozen=True)
class ImageComplete:
    request_id: str
    index: int
    codes: torch.Tensor = field(repr=False)  # LongTensor [h, w] of IBQ codes


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int           # conditional prompt
    uncond_prompt_tokens: int
    cached_prompt_tokens: int    # served from the prefix cache
    generated_tokens: int
    images: int
    preemptions: int
    queue_s: float               # arrival -> first scheduled
    first_token_s: float | None  # arrival -> first generated token
    total_s: float


@dataclass(frozen=True)
class Finished:
    """reason: "stop" (EOS, or EOI when asked), "length" (budget), "aborted", "error"."""

    request_id: str
    reason: str
    usage: Usage
    token_ids: tuple[int, ...] = ()
    incomplete_image: bool = False  # the budget ran out inside an image (it is not returned)
    error: str | None = None


Event = TextDelta | ImageStarted | ImageProgress | ImageComplete | Finished
