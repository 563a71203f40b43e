"""Per-row constrained sampling with classifier-free guidance, vectorised over the batch
(spec §6.2): CFG in log-softmax space (visual rows of guided requests) -> grammar mask -> ÷T
in one fused pass (:mod:`kernels.sampling`) -> top-k (ties kept) -> top-p (crossing token
kept) -> the inverse-CDF draw with the token's own uniform (:mod:`kernels.token_draw`,
:mod:`services.engine.rng`).

Every row is computed independently of the others and its uniform is fixed by (request seed,
output index), so a request's tokens do not depend on which requests share its batch. A step
syncs with the device once, for the tokens; a second time only in the rare step where a row's
ties at its k-th score overflow the shared top-k (that row is then redone exactly). On CUDA,
image rows (top-k without top-p) take the sort-free draw instead, which is exact by
construction; the shared top-k is left to the top-p rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kernels.registry import guided_scores_impl
from kernels.sampling import GUIDE_NONE
from kernels.token_draw import NEEDS_EXACT, DrawPlan, draw_tokens, draw_tokens_reference
from services.model.text_tokenizer import SpecialIds

from .grammar import StepKind, stray_text_ids
from .request import SamplingParams

# Rows of GrammarMasks.table: text mode with and without BOI, then one per constrained kind.
TEXT_WITH_BOI, TEXT_NO_BOI, VISUAL_IDS, DIGITS, NONZERO_DIGITS = range(5)
# The token of a sampled row whose scores hold a NaN (non-finite guidance or temperature that
# slipped past validation, or a numeric fault): nothing valid can be drawn from them, so the
# engine fails that request alone (engine.py) instead of feeding garbage to the model.
INVALID_TOKEN = -2


@dataclass(frozen=True)
class RowSampling:
    """One row's sampling inputs, on the host (built by the engine each step)."""

    kind: StepKind
    forced: int                  # the forced token, or -1
    allow_boi: bool              # an image may start (budget left for a fixed grid)
    params: SamplingParams       # the modality's temperature, top-k, top-p
    guide: int = GUIDE_NONE      # kernels.sampling.GUIDE_*: CFG only on visual rows
    cfg_scale: float = 1.0
    image_cfg_scale: float = 1.0
    uniform: float = 0.0         # rng.token_uniform(seed, output index)


@dataclass(frozen=True)
class SamplingBatch:
    """Per-row parameters as device tensors [R], sent in one host-to-device copy, and the
    host-side routing of rows to draw paths."""

    kind: torch.Tensor             # int64 StepKind
    forced: torch.Tensor           # int64, -1 where not forced
    allow_boi: torch.Tensor        # bool
    mask_row: torch.Tensor         # int64 row of GrammarMasks.table
    temperature: torch.Tensor      # fp32
    top_k: torch.Tensor            # int64, <= 0 or >= V disables, 1 is greedy
    top_p: torch.Tensor            # float64, >= 1 disables
    cfg_scale: torch.Tensor        # fp32
    image_cfg_scale: torch.Tensor  # fp32 (3-way guidance only)
    guide: torch.Tensor            # int64 GUIDE_*
    uniforms: torch.Tensor         # float64 in [0, 1)
    plan: DrawPlan

    @classmethod
    def build(cls, rows: list[RowSampling], vocab_size: int, device) -> "SamplingBatch":
        """Pack the rows' numbers into one float64 [11, R] tensor (ints and fp32 values are
        exact in float64) and copy it without waiting for the device."""
        cols = [[r.kind, r.forced, r.allow_boi, mask_table_row(r.kind, r.allow_boi),
                 r.params.temperature, r.params.top_k, r.params.top_p, r.cfg_scale,
                 r.image_cfg_scale, r.guide, r.uniform] for r in rows]
        packed = torch.tensor(cols, dtype=torch.float64).reshape(len(rows), 11).T.contiguous()
        if torch.device(device).type == "cuda":
            packed = packed.pin_memory()  # a truly asynchronous copy, behind the forward
        d = packed.to(device, non_blocking=True)
        i64, f32 = torch.int64, torch.float32
        plan = DrawPlan.build([r.params.top_k for r in rows], [r.params.top_p for r in rows],
                              vocab_size, skip=[r.forced >= 0 for r in rows])
        return cls(d[0].to(i64), d[1].to(i64), d[2] != 0, d[3].to(i64), d[4].to(f32),
                   d[5].to(i64), d[6], d[7].to(f32), d[8].to(f32), d[9].to(i64), d[10], plan)


def mask_table_row(kind: StepKind, allow_boi: bool) -> int:
    """Which row of GrammarMasks.table constrains a step of this kind (forced steps: any)."""
    if kind == StepKind.VISUAL:
        return VISUAL_IDS
    if kind == StepKind.DIGIT:
        return DIGITS
    if kind == StepKind.DIGIT_NONZERO:
        return NONZERO_DIGITS
    return TEXT_WITH_BOI if allow_boi else TEXT_NO_BOI


class GrammarMasks:
    """Vocabulary-wide tables of allowed ids, one uint8 row per mask kind ([5, V]), built once
    per device."""

    def __init__(self, special: SpecialIds, vocab_size: int, device):
        ids = torch.arange(vocab_size, device=device)
        visual = ids >= special.visual_base
        stray = torch.tensor(stray_text_ids(special), device=device)
        text = ~visual & ~torch.isin(ids, stray)
        digits = torch.tensor(special.digits, device=device)
        table = [text, text & (ids != special.boi), visual, torch.isin(ids, digits),
                 torch.isin(ids, digits[1:])]
        self.table = torch.stack(table).to(torch.uint8)  # [5, V], rows TEXT_WITH_BOI..

    def allowed(self, kind: torch.Tensor, allow_boi: torch.Tensor) -> torch.Tensor:
        """[R, V] bool: which ids each row may take (forced rows are handled elsewhere)."""
        rows = [mask_table_row(StepKind(k), bool(b))
                for k, b in zip(kind.tolist(), allow_boi.tolist())]
        return self.table[rows].bool()


class PendingTokens:
    """A step's tokens, drawn on the device and on their way to the host: ``read`` waits for
    them. Split from the draw so the engine can launch the next forward before reading."""

    def __init__(self, drawn: torch.Tensor, scores: torch.Tensor, batch: SamplingBatch):
        self.scores, self.batch = scores, batch  # kept for the rare exact redo
        tokens = torch.where(batch.forced >= 0, batch.forced, drawn)
        self.ready = None
        if tokens.is_cuda:  # start the copy now; read() only waits for it
            tokens = tokens.to("cpu", non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        self.host = tokens

    def read(self) -> list[int]:
        """The R tokens as host ints: the step's one device sync."""
        if self.ready is not None:
            self.ready.synchronize()
        tokens = self.host.tolist()
        redo = [r for r, t in enumerate(tokens) if t == NEEDS_EXACT]
        if redo:  # ties at a row's k-th score overflow the shared top-k: the full-sort path
            b, index = self.batch, torch.tensor(redo, device=self.scores.device)
            exact = draw_tokens_reference(*(t.index_select(0, index) for t in (
                self.scores, b.top_k, b.top_p, b.uniforms))).tolist()
            for r, token in zip(redo, exact):
                tokens[r] = token
        return tokens


def draw(cond: torch.Tensor, uncond: torch.Tensor | None, full_uncond: torch.Tensor | None,
         batch: SamplingBatch, masks: GrammarMasks,
         guided_scores: Callable | None = None, select: str | None = None) -> PendingTokens:
    """Launch the sampling of a step without waiting for it. cond: fp32 logits [R, V];
    uncond/full_uncond: [R, V] (read only on rows whose ``batch.guide`` asks for them) or
    None. ``guided_scores``: the kernel (default: the registry's choice for the device);
    ``select``: the top-k draw path (``KernelChoice.draw``; None: by device)."""
    guided_scores = guided_scores or guided_scores_impl(cond.device)
    scores = guided_scores(cond, uncond, full_uncond, batch.guide, batch.cfg_scale,
                           batch.image_cfg_scale, masks.table, batch.mask_row,
                           batch.temperature)                       # [R, V] fp32
    drawn = draw_tokens(scores, batch.top_k, batch.top_p, batch.uniforms, batch.plan, select)
    drawn = torch.where(torch.isnan(scores).any(-1), INVALID_TOKEN, drawn)
    return PendingTokens(drawn, scores, batch)


def sample(cond: torch.Tensor, uncond: torch.Tensor | None, full_uncond: torch.Tensor | None,
           batch: SamplingBatch, masks: GrammarMasks,
           guided_scores: Callable | None = None) -> list[int]:
    """:func:`draw`, then wait for the R tokens as host ints."""
    return draw(cond, uncond, full_uncond, batch, masks, guided_scores).read()
