"""The engine core: schedule -> run -> sample -> advance, one step at a time, in-process.

``Engine.step()`` returns events; callers (the offline CLI, the generator stage) drive it. A
request's streams live in one GuidanceGroup (DESIGN.md §5).

The device must not wait for the host between steps, so a step is pipelined over two calls:
call N launches forward + sampling of step N and returns; call N+1 reads step N's tokens and
settles them (streams, grammar, stops, frees), schedules and launches step N+1, and only then
makes step N's events (detokenizer, image events, Finished), which the caller handles while
the device computes. When every row of step N is a forced or visual token, nothing the
schedule needs depends on the drawn values, so step N+1 is even planned before the sync
(``InFlight``). ``EngineConfig(pipeline=False)`` runs one whole step per call instead.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from kernels.registry import guided_scores_impl
from kernels.sampling import GUIDE_CFG, GUIDE_NONE, GUIDE_THREE_WAY
from services.model.image_tokens import parse_image_span
from services.model.text_tokenizer import TextTokenizer
from services.model.transformer import Emu35ForCausalLM

from .admission import Admission
from .config import EngineConfig, EngineDead
from .detokenizer import IncrementalDetokenizer
from .events import Event, ImageComplete, ImageProgress, ImageStarted, TextDelta
from .grammar import GrammarState, StepKind, Transition, grid_from_prompt, refusal
from .request import GenerationRequest, GuidanceMode, RequestError, StopRule
from .memory import CPU_KV_BLOCKS, plan_kv_cache
from .runner import ModelRunner, StepInput, build_step_input
from .rng import token_uniform
from .sampler import GrammarMasks, RowSampling, SamplingBatch, draw
from .scheduler import Scheduler, StepPlan
from .sequence import GuidanceGroup, Role, Sequence, Status
from .step_state import InFlight, Live, Settled, finish_events

__all__ = ["Engine", "EngineConfig", "EngineDead"]

log = logging.getLogger(__name__)

# Step kinds whose token does not change what comes next (see InFlight).
_BLIND_KINDS = (StepKind.VISUAL, StepKind.FORCED)


class Engine:
    def __init__(self, model: Emu35ForCausalLM, tok: TextTokenizer, config: EngineConfig = EngineConfig()):
        if model.config.vocab_size != tok.vocab_size:
            raise ValueError(f"model vocab_size {model.config.vocab_size} != tokenizer {tok.vocab_size}")
        self.model, self.tok, self.config = model, tok, config
        model.use_kernels(config.kernels)
        sc = config.scheduler
        self.kv_plan = None
        if sc.num_blocks is None and model.device.type == "cuda":
            self.kv_plan = plan_kv_cache(model, sc, config.gpu_memory_utilization,
                                         config.kernels.attention)
            sc = replace(sc, num_blocks=self.kv_plan.num_blocks)
        elif sc.num_blocks is None:
            sc = replace(sc, num_blocks=CPU_KV_BLOCKS)
        self.scheduler = Scheduler(sc)
        self.admission = Admission(sc.max_queue_delay_s)
        self.runner = ModelRunner(model, sc.num_blocks, sc.block_size, config.kernels.attention)
        if config.cuda_graphs and self.runner.can_capture_graphs:
            self.runner.capture_decode_graphs(sc.max_num_seqs)
        self.masks = GrammarMasks(tok.special, tok.vocab_size, model.device)
        self.guided_scores = guided_scores_impl(model.device, config.kernels.sampling)
        self.groups: dict[str, GuidanceGroup] = {}
        self.live: dict[str, Live] = {}
        self.pending_events: list[Event] = []
        self.in_flight: InFlight | None = None
        self.failed_steps = 0  # consecutive

    # ------------------------------------------------------------------ requests
    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request. Raises RequestError (bad field) or QueueFull (backpressure)."""
        request.validate(self.tok.vocab_size, self.model.config.max_position_embeddings)
        if request.request_id in self.groups:
            raise RequestError(f"request_id {request.request_id!r} is already in flight")
        group = self._new_group(request)
        self._check_capacity(group)
        self.admission.check(self.scheduler, group)
        self.scheduler.add(group)
        self.groups[request.request_id] = group
        self.live[request.request_id] = Live(IncrementalDetokenizer(self.tok))

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; its Finished event comes next step and
        nothing else of it does (a token of the step in flight is dropped)."""
        group = self.groups.get(request_id)
        if group is None:
            return False
        live = self.live[request_id]
        self.pending_events += finish_events(group, live, "aborted",
                                              self._release(group, time.monotonic()))
        return True

    def has_work(self) -> bool:
        return (self.scheduler.has_work() or bool(self.pending_events)
                or self.in_flight is not None)

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
        """Finish the step in flight, launch the next one, then produce the finished step's
        events while the device computes (with ``config.pipeline``; else one whole step).

        A step that raises ends the requests it was running with reason "error" (their
        Finished events are returned) and the engine goes on with the queue;
        ``config.max_failed_steps`` failures in a row raise :class:`EngineDead`."""
        events, start = self.pending_events, time.monotonic()
        try:
            events = self._step()
        except Exception as e:
            return events + self._step_failed(e)
        self.failed_steps = 0
        if self.in_flight is not None:  # a busy step: its time feeds admission's estimate
            self.admission.record_step(time.monotonic() - start)
        return events

    def _step_failed(self, cause: Exception) -> list[Event]:
        """Fail every admitted request (its streams and KV may be half-updated), forget the
        prefix cache (the failed step may have published blocks it never wrote), keep the
        waiting ones."""
        self.failed_steps += 1
        message = f"engine step failed: {type(cause).__name__}: {cause}"
        if self.failed_steps >= self.config.max_failed_steps:
            raise EngineDead(f"{self.failed_steps} engine steps failed in a row; last: "
                             f"{type(cause).__name__}: {cause}") from cause
        log.error("%s; failing the running requests", message, exc_info=cause)
        self.in_flight, self.pending_events = None, []
        now, events = time.monotonic(), []
        for group in [g for g in self.groups.values() if g.status is Status.RUNNING]:
            live = self.live[group.request_id]
            events += finish_events(group, live, "error", self._release(group, now), message)
        self.scheduler.pool.forget_cached()
        return events

    def _step(self) -> list[Event]:
        events, self.pending_events = self.pending_events, []
        flight, self.in_flight = self.in_flight, None
        blind = flight is not None and flight.stand_ins is not None
        settled = []
        if flight is not None:
            settled = self._settle(flight, flight.stand_ins if blind else flight.read())
        plan = self.scheduler.schedule(self._needs_logits)
        step_input = build_step_input(plan, self.scheduler.pool.block_size) if plan.chunks else None
        if blind:  # the step was planned on stand-ins: now wait for the real tokens
            if step_input is not None:
                self.runner.stage(step_input)
            self._fill(settled, flight.read(), step_input)
        if plan.chunks:
            self._launch(plan, step_input)
        if blind:
            self._release_refused(settled)
        if not plan.chunks and self.scheduler.has_work() and not (settled or events or plan.preempted):
            # Never spin silently: the head of the queue cannot be admitted at all.
            events += self._refuse_head()
        if self.in_flight and not self.config.pipeline:
            flight, self.in_flight = self.in_flight, None
            settled += self._settle(flight, flight.read())
        self._emit(settled, events)
        return events

    def _release_refused(self, settled: list[Settled]) -> None:
        """Free the requests whose drawn token :meth:`_fill` refused; their row of the step
        just launched runs on a harmless token, and its result is dropped."""
        now = time.monotonic()
        for d in settled:
            if d.error is not None and d.group.status is Status.RUNNING:
                d.total_s = self._release(d.group, now)

    def _refuse_head(self) -> list[Event]:
        """Fail the waiting request that cannot be admitted with the KV cache available (and
        nothing running will free more), so the queue behind it drains."""
        group = self.scheduler.waiting[0]
        live = self.live[group.request_id]
        total_s = self._release(group, time.monotonic())
        return finish_events(group, live, "error", total_s,
                              "the KV cache cannot hold this request's prompt")

    def _needs_logits(self, group: GuidanceGroup, role: Role) -> bool:
        return group.grammar.next_step()[0] is StepKind.VISUAL

    def _launch(self, plan: StepPlan, step_input: StepInput) -> None:
        """Queue the step's forward, then its sampling, without waiting for either."""
        logits = self.runner.execute(step_input)
        now = time.monotonic()
        rows: dict[tuple[int, Role], torch.Tensor] = {}
        i = 0
        for c in plan.chunks:
            live = self.live[c.group.request_id]
            live.scheduled_at = live.scheduled_at or now
            # Later steps (and prefix-cache hits) read this KV after the forward: the device
            # runs them in stream order, so it counts as computed from here on.
            self.scheduler.kv.commit(c.seq, c.length)
            if c.need_logits:
                rows[(id(c.group), c.seq.role)] = logits[i]
                i += 1
        self.in_flight = InFlight(plan.sampling, None)
        if plan.sampling:
            self._launch_sampling(self.in_flight, rows)

    def _launch_sampling(self, flight: InFlight, rows) -> None:
        groups = flight.groups
        batch, kinds = self._sampling_batch(groups)
        cond = torch.stack([rows[(id(g), Role.COND)] for g in groups])  # [R, V]
        uncond = self._guide_logits(groups, rows, Role.UNCOND)
        full = self._guide_logits(groups, rows, Role.FULL_UNCOND)
        flight.tokens = draw(cond, uncond, full, batch, self.masks, self.guided_scores,
                             self.config.kernels.draw)
        if self.config.pipeline and all(k in _BLIND_KINDS for k, _ in kinds):
            flight.stand_ins = [f if f >= 0 else -(i + 1) for i, (_, f) in enumerate(kinds)]

    @staticmethod
    def _guide_logits(groups, rows, role: Role) -> torch.Tensor | None:
        """[R, V] logits of a guide stream, or None when no row has them. They exist only on
        guided visual steps; other rows repeat cond as filler (the sampler never reads it)."""
        if not any((id(g), role) in rows for g in groups):
            return None
        return torch.stack([rows.get((id(g), role), rows[(id(g), Role.COND)]) for g in groups])

    def _sampling_batch(self, groups: list[GuidanceGroup]):
        """The batch, and each row's (kind, forced token)."""
        rows, kinds = [], []
        for g in groups:
            kind, forced = g.grammar.next_step()
            kinds.append((kind, forced))
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
        return SamplingBatch.build(rows, self.tok.vocab_size, self.model.device), kinds

    def _boi_fits(self, group: GuidanceGroup) -> bool:
        """An image may start only if a known grid fits the remaining budget (spec §12 item
        16: the reference silently drops images cut by the budget)."""
        grid = group.grammar.fixed_grid
        left = group.request.max_new_tokens - len(group.output)
        return grid is None or grid.span_length <= left

    # ------------------------------------------------- settle (before the next launch)
    def _settle(self, flight: InFlight, tokens: list[int]) -> list[Settled]:
        """Apply a step's tokens as far as the next schedule depends on them: streams,
        grammar, stops and frees. Everything else waits for :meth:`_emit`. Drawn tokens are
        checked against the grammar here; stand-ins are checked by :meth:`_fill`."""
        now = time.monotonic()
        drawn = tokens is not flight.stand_ins
        return [self._advance(g, t, now, row, drawn)
                for row, (g, t) in enumerate(zip(flight.groups, tokens))
                if g.status is Status.RUNNING]  # aborted since the launch: token dropped

    def _fill(self, settled: list[Settled], tokens: list[int], step_input: StepInput | None
              ) -> None:
        """Replace the stand-ins (``InFlight``) by the drawn tokens: in the streams, and in the
        next step's input, where a stand-in can only be a row's last token. A drawn token that
        is not a visual id marks its request failed (released after the launch) and enters the
        launched step as a harmless visual id, so no other row's forward sees it."""
        safe = self.tok.special.visual_base
        for d in settled:
            if d.token < 0:
                token = tokens[d.row]
                # a stand-in stood for a visual token (the grammar has moved past it)
                problem = refusal(self.tok.special, StepKind.VISUAL, -1, token,
                                  self.tok.vocab_size)
                if problem is not None:
                    d.reason, d.error = "error", problem
                    tokens[d.row] = token = safe
                d.token = token
                d.group.output[-1] = token
                for seq in d.group.seqs.values():  # the guides took it too (image mode)
                    seq.tokens[-1] = token
        if step_input is not None:
            ids = step_input.token_ids
            for end in step_input.cu_q[1:]:
                if ids[end - 1] < 0:
                    ids[end - 1] = tokens[-ids[end - 1] - 1]

    def _advance(self, group: GuidanceGroup, token: int, now: float, row: int,
                 drawn: bool = True) -> Settled:
        g = group.grammar
        problem = g.refuses(token, self.tok.vocab_size) if drawn else None
        if problem is not None:  # this request alone ends; its token never reaches the model
            done = Settled(group, token, row, False, Transition(), g.images_done,
                            self.live[group.request_id], reason="error", error=problem)
            done.total_s = self._release(group, now)
            return done
        group.first_token_at = group.first_token_at or now
        was_image = g.in_image()
        group.cond.tokens.append(token)
        group.output.append(token)
        tr = g.advance(token)
        if was_image or tr.image_entered:
            self._feed_guides(group, token, tr.image_entered)
        done = Settled(group, token, row, was_image, tr, g.images_done - int(tr.image_done),
                        self.live[group.request_id])
        done.reason = self._stop_reason(group, token)
        if done.reason:
            done.total_s = self._release(group, now)
        return done

    def _feed_guides(self, group: GuidanceGroup, token: int, image_entered: bool) -> None:
        for seq in group.guide_streams():
            if image_entered and seq.role is Role.FULL_UNCOND:
                self.scheduler.kv.truncate(seq, seq.prompt_len)  # A restarts at every BOI
            seq.tokens.append(token)

    def _stop_reason(self, group: GuidanceGroup, token: int) -> str | None:
        req, s = group.request, self.tok.special
        if token == s.eos and req.stop is StopRule.EOS:
            return "stop"
        if token == s.eoi and req.stop is StopRule.EOI:
            return "stop"
        if len(group.output) >= req.max_new_tokens:
            return "length"
        return None

    def _release(self, group: GuidanceGroup, now: float) -> float:
        """Free the group's KV blocks and forget it; returns its total time. Blocks of a step
        still in flight may be handed out again at once: later steps run after it on the
        device."""
        self.scheduler.free(group)
        group.status = Status.FINISHED
        del self.groups[group.request_id]
        del self.live[group.request_id]
        return now - group.arrival

    # ---------------------------------------------------- emit (while the device runs)
    def _emit(self, settled: list[Settled], events: list[Event]) -> None:
        for d in settled:
            try:
                self._emit_one(d, events)
            except Exception as e:  # e.g. an image span that does not parse: this request ends
                log.exception("request %s: its events failed", d.group.request_id)
                if d.group.status is Status.RUNNING:
                    d.total_s = self._release(d.group, time.monotonic())
                events += finish_events(d.group, d.live, "error", d.total_s,
                                         f"internal error ({type(e).__name__}: {e})")

    def _emit_one(self, d: Settled, events: list[Event]) -> None:
        rid, tr = d.group.request_id, d.tr
        if d.error is not None:  # the token was refused: nothing of it is shown
            events += finish_events(d.group, d.live, "error", d.total_s, d.error)
            return
        if not d.was_image and not tr.image_entered:
            out = d.live.detok.push(d.token)
        elif tr.image_entered:
            out = d.live.detok.flush()
        else:
            out = None
        if out:
            events.append(TextDelta(rid, out[1], out[0]))
        if tr.image_started or tr.row_done is not None:
            self._image_events(d, events)
        if d.reason:
            events += finish_events(d.group, d.live, d.reason, d.total_s)

    def _image_events(self, d: Settled, events: list[Event]) -> None:
        rid, tr, index = d.group.request_id, d.tr, d.image_index
        if tr.image_started:
            events.append(ImageStarted(rid, index, tr.image_started.h, tr.image_started.w))
        if tr.row_done is not None:
            events.append(ImageProgress(rid, index, tr.row_done, d.group.grammar.grid.h))
        if tr.image_done:
            toks = d.group.cond.tokens
            boi = len(toks) - 1 - toks[::-1].index(self.tok.special.boi)
            events.append(ImageComplete(rid, index, parse_image_span(self.tok, toks[boi:])))
