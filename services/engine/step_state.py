"""The engine's per-step records: a launched step whose tokens are on their way (InFlight),
a sampled token applied to its request (Settled), and per-request state beside the group."""
from __future__ import annotations

from dataclasses import dataclass

from .detokenizer import IncrementalDetokenizer
from .events import Event, Finished, TextDelta, Usage
from .grammar import Mode, Transition
from .sampler import PendingTokens
from .sequence import GuidanceGroup


@dataclass
class Live:
    """Per-request engine state beside the group (detokenizer, timings)."""

    detok: IncrementalDetokenizer
    scheduled_at: float | None = None


@dataclass
class InFlight:
    """A launched step whose tokens the host has not read yet.

    ``stand_ins``: when every sampling row is a forced or a visual token, what the next
    schedule needs does not depend on the drawn values (a visual token only moves the grammar
    one place on; forced tokens are known), so the step is settled before the sync with the
    forced tokens and a placeholder -(row + 1) per visual token, patched in once read."""

    groups: list[GuidanceGroup]   # the groups that sample, in token order
    tokens: PendingTokens | None  # None: prefill chunks only
    stand_ins: list[int] | None = None

    def read(self) -> list[int]:
        return self.tokens.read() if self.tokens is not None else []


@dataclass
class Settled:
    """One sampled token applied to its group; its events come after the next launch."""

    group: GuidanceGroup
    token: int                 # a stand-in (< 0) until _fill
    row: int                   # in the step's sampling rows
    was_image: bool
    tr: Transition
    image_index: int
    live: Live
    reason: str | None = None  # set when this token ended the request
    total_s: float = 0.0
    error: str | None = None   # with reason "error": what went wrong (Finished.error)


def finish_events(group: GuidanceGroup, live: Live, reason: str, total_s: float,
                  error: str | None = None) -> list[Event]:
    """The request's last events: text the detokenizer held back, then Finished
    (``error``: with reason "error", what went wrong, for the caller)."""
    out = live.detok.flush() if reason not in ("aborted", "error") else None
    events: list[Event] = []
    if out:
        events.append(TextDelta(group.request_id, out[1], out[0]))
    req = group.request
    usage = Usage(
        prompt_tokens=len(req.cond_ids), uncond_prompt_tokens=len(req.uncond_ids),
        cached_prompt_tokens=group.cached_prompt_tokens, generated_tokens=len(group.output),
        images=group.grammar.images_done, preemptions=group.num_preemptions,
        queue_s=total_s if live.scheduled_at is None else live.scheduled_at - group.arrival,
        first_token_s=None if group.first_token_at is None else group.first_token_at - group.arrival,
        total_s=total_s)
    events.append(Finished(group.request_id, reason, usage, tuple(group.output),
                           incomplete_image=group.grammar.mode is not Mode.TEXT, error=error))
    return events
