"""What a caller asks the engine for: typed, validated, immutable records (DESIGN.md §5)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.model.image_tokens import ImageGrid
from services.model.templates import TASK_DEFAULTS, Task, parse_task


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
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise RequestError(f"{name}.top_k must be an integer, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"{name}.top_p must be in (0, 1], got {self.top_p!r}")
        if not self.temperature > 0.0:
            raise RequestError(f"{name}.temperature must be > 0, got {self.temperature!r}")


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
        """Raise RequestError naming the first bad field."""
        if not self.request_id:
            raise RequestError("request_id must be non-empty")
        if not self.cond_ids:
            raise RequestError("cond_ids must be non-empty")
        for name in ("cond_ids", "uncond_ids", "full_uncond_ids"):
            ids = getattr(self, name)
            bad = next((t for t in ids if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise RequestError(f"{name}: token id {bad} outside the vocabulary [0, {vocab_size})")
        guided = self.guidance.mode is not GuidanceMode.NONE
        if guided and not self.uncond_ids:
            raise RequestError(f"uncond_ids required for guidance mode {self.guidance.mode.value}")
        if self.guidance.mode is GuidanceMode.NO_TEXT_IMG_CFG and not self.full_uncond_ids:
            raise RequestError("full_uncond_ids required for guidance mode no_text_img_cfg")
        if not self.max_new_tokens > 0:
            raise RequestError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        longest = max(len(self.cond_ids), len(self.uncond_ids), len(self.full_uncond_ids))
        if longest + self.max_new_tokens > max_context:
            raise RequestError(
                f"max_new_tokens: prompt ({longest} tokens) + max_new_tokens "
                f"({self.max_new_tokens}) exceeds the model context ({max_context})")
        grid = self.output_grid
        if grid is not None and grid.span_length > self.max_new_tokens:
            raise RequestError(
                f"output_grid: a {grid.h}*{grid.w} image takes {grid.span_length} tokens, more "
                f"than max_new_tokens ({self.max_new_tokens})")
        if self.stop is StopRule.EOI and self.task not in (Task.T2I, Task.X2I):
            raise RequestError("stop: 'eoi' is only for t2i and x2i")
        self.text.validate("text")
        self.image.validate("image")
        if self.guidance.scale < 0 or self.guidance.image_scale < 0:
            raise RequestError("guidance.scale and guidance.image_scale must be >= 0")


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
