"""The engine core: schedule -> run -> sample -> advance, one step at a time, in-process.

``Engine.step()`` returns the events of that step; callers (the offline CLI, the generator
stage) drive it. A request's streams live in one GuidanceGroup (DESIGN.md §5).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import torch

from kernels.registry import guided_scores_impl
from kernels.sampling import GUIDE_CFG, GUIDE_NONE, GUIDE_THREE_WAY
from services.model.image_tokens import parse_image_span
from services.model.text_tokenizer import TextTokenizer
from services.model.transformer import Emu35ForCausalLM

from .detokenizer import IncrementalDetokenizer
from .events import Event, Finished, ImageComplete, ImageProgress, ImageStarted, TextDelta, Usage
from .grammar import GrammarState, Mode, StepKind, grid_from_prompt
from .request import GenerationRequest, GuidanceMode, RequestError, StopRule
from .memory import plan_kv_cache
from .runner import ModelRunner, build_step_input
from .rng import token_uniform
from .sampler import GrammarMasks, RowSampling, SamplingBatch, sample
from .scheduler import Scheduler, SchedulerConfig
from .sequence import GuidanceGroup, Role, Sequence, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    attention: str | None = None  # "reference" | "triton" | "flash"; None picks by device
    # Decode steps replay CUDA graphs when the device and attention allow (runner.py).
    cuda_graphs: bool = True
    # With scheduler.num_blocks None, the KV cache takes what this fraction of the device's
    # memory leaves after weights, activations and graphs (memory.py).
    gpu_memory_utilization: float = 0.90
    sampling: str | None = None   # guided scores: "reference" | "triton"; None picks by device


@dataclass
class _Live:
    """Per-request engine state beside the group (detokenizer, timings)."""

    detok: IncrementalDetokenizer
    scheduled_at: float | None = None


class Engine:
    def __init__(self, model: Emu35ForCausalLM, tok: TextTokenizer, config: EngineConfig = EngineConfig()):
        if model.config.vocab_size != tok.vocab_size:
            raise ValueError(f"model vocab_size {model.config.vocab_size} != tokenizer {tok.vocab_size}")
        self.model, self.tok, self.config = model, tok, config
        sc = config.scheduler
        self.kv_plan = None
        if sc.num_blocks is None:
            self.kv_plan = plan_kv_cache(model, sc, config.gpu_memory_utilization, config.attention)
            sc = replace(sc, num_blocks=self.kv_plan.num_blocks)
        self.scheduler = Scheduler(sc)
        self.runner = ModelRunner(model, sc.num_blocks, sc.block_size, config.attention)
        if config.cuda_graphs and self.runner.can_capture_graphs:
            self.runner.capture_decode_graphs(sc.max_num_seqs)
        self.masks = GrammarMasks(tok.special, tok.vocab_size, model.device)
        self.guided_scores = guided_scores_impl(model.device, config.sampling)
        self.groups: dict[str, GuidanceGroup] = {}
        self.live: dict[str, _Live] = {}
        self.pending_events: list[Event] = []

    # ------------------------------------------------------------------ requests
    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request. Raises RequestError (bad field) or QueueFull (backpressure)."""
        request.validate(self.tok.vocab_size, self.model.config.max_position_embeddings)
        if request.request_id in self.groups:
            raise RequestError(f"request_id {request.request_id!r} is already in flight")
        group = self._new_group(request)
        self._check_capacity(group)
        self.scheduler.add(group)
        self.groups[request.request_id] = group
        self.live[request.request_id] = _Live(IncrementalDetokenizer(self.tok))

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; its Finished event comes next step."""
        group = self.groups.get(request_id)
        if group is None:
            return False
        self._finish(group, "aborted", self.pending_events)
        return True

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.pending_events)

    def _new_group(self, req: GenerationRequest) -> GuidanceGroup:
        s = self.tok.special
        mode = req.guidance.mode
        if mode is GuidanceMode.NO_TEXT and req.guidance.scale == 1.0:
            mode = GuidanceMode.NONE  # L == c at s = 1: the unconditional stream is skipped
        seqs = {Role.COND: Sequence(Role.COND, req.cond_ids)}
        if mode is not GuidanceMode.NONE:
            seqs[Role.UNCOND] = Sequence(Role.UNCOND, req.uncond_ids)
        if mode is GuidanceMode.NO_TEXT_IMG_CFG:
            seqs[Role.FULL_UNCOND] = Sequence(Role.FULL_UNCOND, req.full_uncond_ids)
        fixed = req.output_grid or grid_from_prompt(s, req.uncond_ids)
        return GuidanceGroup(request=req, grammar=GrammarState(s, fixed_grid=fixed), seqs=seqs)

    def _check_capacity(self, group: GuidanceGroup) -> None:
        bs, budget = self.scheduler.pool.block_size, group.request.max_new_tokens
        need = sum(-(-(len(q.tokens) + budget) // bs) for q in group.seqs.values())
        if need > self.scheduler.pool.num_blocks:
            raise RequestError(f"max_new_tokens: this request may need {need} KV blocks but the "
                               f"cache has {self.scheduler.pool.num_blocks}")

    # ---------------------------------------------------------------------- step
    def step(self) -> list[Event]:
        events, self.pending_events = self.pending_events, []
        plan = self.scheduler.schedule(self._needs_logits)
        if not plan.chunks:
            if self.scheduler.has_work() and not events and not plan.preempted:
                # Never spin silently: with nothing schedulable the queue cannot drain.
                raise RuntimeError("engine made no progress: the waiting request cannot be "
                                   "admitted with the KV cache available")
            return events
        now = time.monotonic()
        for c in plan.chunks:
            live = self.live[c.group.request_id]
            live.scheduled_at = live.scheduled_at or now
        logits = self.runner.execute(build_step_input(plan, self.scheduler.pool.block_size))
        rows: dict[tuple[int, Role], torch.Tensor] = {}
        i = 0
        for c in plan.chunks:
            self.scheduler.kv.commit(c.seq, c.length)
            if c.need_logits:
                rows[(id(c.group), c.seq.role)] = logits[i]
                i += 1
        if plan.sampling:
            self._sample_and_advance(plan.sampling, rows, events)
        return events

    def _needs_logits(self, group: GuidanceGroup, role: Role) -> bool:
        return group.grammar.next_step()[0] is StepKind.VISUAL

    def _sample_and_advance(self, groups, rows, events) -> None:
        batch = self._sampling_batch(groups)
        cond = torch.stack([rows[(id(g), Role.COND)] for g in groups])  # [R, V]
        uncond = self._guide_logits(groups, rows, Role.UNCOND)
        full = self._guide_logits(groups, rows, Role.FULL_UNCOND)
        tokens = sample(cond, uncond, full, batch, self.masks, self.guided_scores)
        for group, token in zip(groups, tokens):
            self._append(group, token, events)

    @staticmethod
    def _guide_logits(groups, rows, role: Role) -> torch.Tensor | None:
        """[R, V] logits of a guide stream, or None when no row has them. They exist only on
        guided visual steps; other rows repeat cond as filler (the sampler never reads it)."""
        if not any((id(g), role) in rows for g in groups):
            return None
        return torch.stack([rows.get((id(g), role), rows[(id(g), Role.COND)]) for g in groups])

    def _sampling_batch(self, groups: list[GuidanceGroup]) -> SamplingBatch:
        rows = []
        for g in groups:
            kind, forced = g.grammar.next_step()
            req = g.request
            guided = kind is StepKind.VISUAL and Role.UNCOND in g.seqs
            three_way = guided and Role.FULL_UNCOND in g.seqs
            rows.append(RowSampling(
                kind=kind, forced=forced, allow_boi=self._boi_fits(g),
                params=req.text if kind is StepKind.TEXT else req.image,
                guide=GUIDE_THREE_WAY if three_way else GUIDE_CFG if guided else GUIDE_NONE,
                cfg_scale=req.guidance.scale if guided else 1.0,
                image_cfg_scale=req.guidance.image_scale,
                uniform=token_uniform(req.seed, len(g.output)) if forced < 0 else 0.0))
        return SamplingBatch.build(rows, self.tok.vocab_size, self.model.device)

    def _boi_fits(self, group: GuidanceGroup) -> bool:
        """An image may start only if a known grid fits the remaining budget (spec §12 item
        16: the reference silently drops images cut by the budget)."""
        grid = group.grammar.fixed_grid
        left = group.request.max_new_tokens - len(group.output)
        return grid is None or grid.span_length <= left

    def _append(self, group: GuidanceGroup, token: int, events: list[Event]) -> None:
        rid, live, g = group.request_id, self.live[group.request_id], group.grammar
        group.first_token_at = group.first_token_at or time.monotonic()
        was_image = g.in_image()
        group.cond.tokens.append(token)
        group.output.append(token)
        tr = g.advance(token)
        if was_image or tr.image_entered:
            self._feed_guides(group, token, tr.image_entered)
        if not was_image and not tr.image_entered:
            out = live.detok.push(token)
            if out:
                events.append(TextDelta(rid, out[1], out[0]))
        elif tr.image_entered:
            out = live.detok.flush()
            if out:
                events.append(TextDelta(rid, out[1], out[0]))
        self._image_events(group, tr, events)
        self._check_stop(group, token, events)

    def _feed_guides(self, group: GuidanceGroup, token: int, image_entered: bool) -> None:
        for seq in group.guide_streams():
            if image_entered and seq.role is Role.FULL_UNCOND:
                self.scheduler.kv.truncate(seq, seq.prompt_len)  # A restarts at every BOI
            seq.tokens.append(token)

    def _image_events(self, group: GuidanceGroup, tr, events: list[Event]) -> None:
        rid, g = group.request_id, group.grammar
        index = g.images_done - (1 if tr.image_done else 0)
        if tr.image_started:
            events.append(ImageStarted(rid, index, tr.image_started.h, tr.image_started.w))
        if tr.row_done is not None:
            events.append(ImageProgress(rid, index, tr.row_done, g.grid.h))
        if tr.image_done:
            toks = group.cond.tokens
            boi = len(toks) - 1 - toks[::-1].index(self.tok.special.boi)
            events.append(ImageComplete(rid, index, parse_image_span(self.tok, toks[boi:])))

    def _check_stop(self, group: GuidanceGroup, token: int, events: list[Event]) -> None:
        req, s = group.request, self.tok.special
        if token == s.eos and req.stop is StopRule.EOS:
            self._finish(group, "stop", events)
        elif token == s.eoi and req.stop is StopRule.EOI:
            self._finish(group, "stop", events)
        elif len(group.output) >= req.max_new_tokens:
            self._finish(group, "length", events)

    def _finish(self, group: GuidanceGroup, reason: str, events: list[Event],
                error: str | None = None) -> None:
        rid, live = group.request_id, self.live.pop(group.request_id)
        out = live.detok.flush()
        if out and reason != "aborted":
            events.append(TextDelta(rid, out[1], out[0]))
        self.scheduler.free(group)
        group.status = Status.FINISHED
        del self.groups[rid]
        now = time.monotonic()
        req = group.request
        usage = Usage(
            prompt_tokens=len(req.cond_ids), uncond_prompt_tokens=len(req.uncond_ids),
            cached_prompt_tokens=group.cached_prompt_tokens, generated_tokens=len(group.output),
            images=group.grammar.images_done, preemptions=group.num_preemptions,
            queue_s=(live.scheduled_at or now) - group.arrival,
            first_token_s=None if group.first_token_at is None else group.first_token_at - group.arrival,
            total_s=now - group.arrival)
        events.append(Finished(rid, reason, usage, tuple(group.output),
                               incomplete_image=group.grammar.mode is not Mode.TEXT, error=error))
