"""What a caller asks the engine for: typed, validated, immutable records (DESIGN.md §5)."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

from services.model.image_tokens import ImageGrid
from services.model.templates import TASK_DEFAULTS, Task, parse_task

# Tasks whose answer is an image: their budget must hold at least one output image.
IMAGE_TASKS = (Task.T2I, Task.X2I)


class RequestError(ValueError):
    """A request field is invalid; the message names the field."""


@dataclass(frozen=True)
class SamplingParams:
    """One modality's sampling: temperature, then top-k (ties kept), then top-p (the crossing
    token kept). top_k <= 0 or >= vocab and top_p >= 1 disable that filter; top_k = 1 is
    greedy."""

    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0

    def validate(self, name: str) -> None:
        """``name``: the public field, ``text_sampling`` or ``image_sampling``."""
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise RequestError(f"{name}.top_k: must be an integer, got {_short(self.top_k)}")
        top_p = _finite(f"{name}.top_p", self.top_p)
        if not 0.0 < top_p <= 1.0:
            raise RequestError(f"{name}.top_p: must be in (0, 1], got {top_p!r}")
        temperature = _finite(f"{name}.temperature", self.temperature)
        if not temperature > 0.0:
            raise RequestError(f"{name}.temperature: must be > 0, got {temperature!r}")


class GuidanceMode(str, enum.Enum):
    NONE = "none"                        # no unconditional stream
    NO_TEXT = "no_text"                  # spec §6.3 (default)
    NO_TEXT_IMG_CFG = "no_text_img_cfg"  # spec §6.4, done correctly (third independent stream)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance on visual steps: L = u + scale * (c - u) in log-softmax space;
    3-way: L = a + image_scale * (u - a) + scale * (c - u)."""

    mode: GuidanceMode = GuidanceMode.NO_TEXT
    scale: float = 1.0
    image_scale: float = 1.0

    def validate(self) -> None:
        if not isinstance(self.mode, GuidanceMode):
            raise RequestError(f"guidance.mode: unknown mode {_short(self.mode)}")
        for name in ("scale", "image_scale"):
            if _finite(f"guidance.{name}", getattr(self, name)) < 0:
                raise RequestError(f"guidance.{name}: must be >= 0, got {getattr(self, name)!r}")


class StopRule(str, enum.Enum):
    EOS = "eos"  # reference HF path: stop at <|extra_204|> (or the budget)
    EOI = "eoi"  # t2i/x2i on request: stop when the first image ends


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompts in token ids plus everything that steers decoding.

    output_grid: the grid every generated image uses; None means auto (the first image's
    header digits are sampled, later images replay it, spec §3.4).
    seed: the request's randomness (taken modulo 2^64). The token at output index i draws the
    uniform ``rng.token_uniform(seed, i)`` and nothing else, so the same seed, inputs,
    parameters and kernels reproduce the same output whatever shares the batch (spec §6.5);
    forced and greedy tokens leave their uniform unused.
    """

    request_id: str
    task: Task
    cond_ids: tuple[int, ...]
    uncond_ids: tuple[int, ...] = ()
    full_uncond_ids: tuple[int, ...] = ()  # 3-way guidance's "full unconditional" prompt
    text: SamplingParams = SamplingParams()
    image: SamplingParams = SamplingParams()
    guidance: Guidance = Guidance()
    output_grid: ImageGrid | None = None
    max_new_tokens: int = 5120
    stop: StopRule = StopRule.EOS
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def validate(self, vocab_size: int, max_context: int) -> None:
        """Raise RequestError naming the first bad field (by its public name)."""
        if not self.request_id:
            raise RequestError("request_id: must be non-empty")
        if not self.cond_ids:
            raise RequestError("prompt: the conditional prompt is empty")
        for name in ("cond_ids", "uncond_ids", "full_uncond_ids"):
            ids = getattr(self, name)
            bad = next((t for t in ids if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise RequestError(f"{name}: token id {bad} outside the vocabulary [0, {vocab_size})")
        self.guidance.validate()
        guided = self.guidance.mode is not GuidanceMode.NONE
        if guided and not self.uncond_ids:
            raise RequestError(f"uncond_ids: required for guidance mode {self.guidance.mode.value}")
        if self.guidance.mode is GuidanceMode.NO_TEXT_IMG_CFG and not self.full_uncond_ids:
            raise RequestError("full_uncond_ids: required for guidance mode no_text_img_cfg")
        self._validate_budget(max_context)
        if self.stop is StopRule.EOI and self.task not in IMAGE_TASKS:
            raise RequestError("stop_at_image_end: only for t2i and x2i")
        self.text.validate("text_sampling")
        self.image.validate("image_sampling")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise RequestError(f"seed: must be an integer, got {_short(self.seed)}")

    @property
    def prompt_tokens(self) -> int:
        """The longest of the request's prompts: what the context must hold besides the output."""
        return max(len(self.cond_ids), len(self.uncond_ids), len(self.full_uncond_ids))

    def _validate_budget(self, max_context: int) -> None:
        n = self.max_new_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise RequestError(f"max_new_tokens: must be a positive integer, got {_short(n)}")
        if self.prompt_tokens >= max_context:
            raise RequestError(f"prompt: {self.prompt_tokens} tokens leave no room in the "
                               f"model context ({max_context})")
        if self.prompt_tokens + n > max_context:
            raise RequestError(
                f"max_new_tokens: prompt ({self.prompt_tokens} tokens) + max_new_tokens "
                f"({n}) exceeds the model context ({max_context})")
        grid = self.output_grid  # interleaved tasks may answer in text when no image fits
        if grid is not None and self.task in IMAGE_TASKS and grid.span_length > n:
            raise RequestError(
                f"size: a {grid.h}*{grid.w} image takes {grid.span_length} tokens, more than "
                f"max_new_tokens ({n})")


def token_budget(task: Task, requested: int | None, prompt_tokens: int, max_context: int,
                 output_grid: ImageGrid | None = None, reference_tokens: int = 0,
                 size_given: bool = False) -> int:
    """A request's max_new_tokens: the one rule for the gateway and ``emu35 generate``.

    ``requested`` None takes the task's default (spec §6.1), clamped to the context the
    prompt leaves (the reference's 32,768 for interleaved tasks exceeds every context once a
    prompt is added, spec §5.4 rule 4). An explicit value above what is left stays an error
    naming ``max_new_tokens``. Either way, when the context left cannot hold the smallest
    useful answer (one output image of ``output_grid`` for t2i/x2i, else one token), the
    error names the cause: the reference images (``images``) when the prompt fits without
    them, else an explicit ``size``, else the ``prompt``.

    prompt_tokens: the longest prompt (cond, uncond); reference_tokens: the reference
    images' spans in it; size_given: the output grid is the caller's ``size``.
    """
    room = max_context - prompt_tokens
    need = output_grid.span_length if output_grid is not None and task in IMAGE_TASKS else 1
    if room < need:
        raise RequestError(_too_long(prompt_tokens, max_context, output_grid if need > 1 else None,
                                     reference_tokens, size_given))
    if requested is None:
        return min(TASK_DEFAULTS[task].max_new_tokens, room)
    if not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0:
        raise RequestError(f"max_new_tokens: must be a positive integer, got {_short(requested)}")
    if requested > room:
        raise RequestError(
            f"max_new_tokens: {requested} exceeds the {room} tokens the model context "
            f"({max_context}) leaves after the prompt ({prompt_tokens} tokens)")
    return requested


def _too_long(prompt_tokens: int, max_context: int, grid: ImageGrid | None,
              reference_tokens: int, size_given: bool) -> str:
    need = grid.span_length if grid is not None else 1
    answer = (f"the output image ({grid.h}*{grid.w}, {need} tokens)" if grid is not None
              else "any output")
    if reference_tokens and prompt_tokens - reference_tokens + need <= max_context:
        return (f"images: the reference images take {reference_tokens} of the prompt's "
                f"{prompt_tokens} tokens, leaving no room in the model context ({max_context}) "
                f"for {answer}; use fewer or smaller images")
    if size_given and grid is not None:
        return (f"size: a {grid.h}*{grid.w} image takes {need} tokens; with the prompt "
                f"({prompt_tokens} tokens) that exceeds the model context ({max_context})")
    return (f"prompt: the prompt takes {prompt_tokens} tokens, leaving no room in the model "
            f"context ({max_context}) for {answer}")


def with_budget(request: GenerationRequest, requested: int | None, max_context: int,
                vocab_size: int, reference_tokens: int = 0, size_given: bool = False
                ) -> GenerationRequest:
    """``request`` with its budget resolved by :func:`token_budget` (``requested`` None: the
    task's default, clamped), validated. Raises RequestError naming the field."""
    budget = token_budget(request.task, requested, request.prompt_tokens, max_context,
                          request.output_grid, reference_tokens, size_given)
    request = replace(request, max_new_tokens=budget)
    request.validate(vocab_size, max_context)
    return request


def _finite(name: str, value) -> float:
    """``value`` as a finite float, else RequestError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name}: must be a number, got {_short(value)}")
    if not math.isfinite(value):
        raise RequestError(f"{name}: must be a finite number, got {value!r}")
    return float(value)


def _short(value, limit: int = 40) -> str:
    """A bad value for an error message: its repr, cut to a short prefix."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def default_request(request_id: str, task: str | Task, cond_ids, uncond_ids, **overrides
                    ) -> GenerationRequest:
    """A request with the task's reference defaults (spec §6.1), then the overrides."""
    task = parse_task(task)
    d = TASK_DEFAULTS[task]
    base = dict(
        request_id=request_id, task=task, cond_ids=tuple(cond_ids), uncond_ids=tuple(uncond_ids),
        text=SamplingParams(d.text_top_k, d.text_top_p, d.text_temperature),
        image=SamplingParams(d.image_top_k, d.image_top_p, d.image_temperature),
        guidance=Guidance(GuidanceMode.NO_TEXT, d.cfg_scale), max_new_tokens=d.max_new_tokens,
        seed=6666,
    )
    base.update(overrides)
    return GenerationRequest(**base)
