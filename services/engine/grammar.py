"""The output grammar of spec §5 as a per-request state machine.

Each step the state says what kind of token comes next (``StepKind``) and, for forced tokens,
which one; the sampler turns kinds into vectorised masks for all rows at once. After sampling,
``advance`` moves the state and reports what happened (image started, row done, image done).

response := [BOG text EOG] item* ESS EOS;  item := text | BOC text EOC | image
image    := BOI header IMG row (EOL row)* EOI
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.model.image_tokens import ImageGrid
from services.model.text_tokenizer import SpecialIds


class StepKind(enum.IntEnum):
    TEXT = 0           # text mode: visual ids and stray structure tokens masked, no CFG
    DIGIT_NONZERO = 1  # auto header, first digit of h or w: "1".."9", image params, no CFG
    DIGIT = 2          # auto header, second digit: "0".."9"
    VISUAL = 3         # a visual token: CFG, non-visual ids masked, image params
    FORCED = 4         # one-hot: header of a fixed grid, '*', IMG, EOL, EOI


class Mode(enum.IntEnum):
    TEXT = 0
    HEADER = 1
    VISUAL = 2


@dataclass
class Transition:
    """What one sampled token did, for events."""

    image_started: ImageGrid | None = None   # header complete (IMG emitted)
    row_done: int | None = None              # rows completed in the current image
    image_done: bool = False                 # EOI emitted
    image_entered: bool = False              # BOI emitted


def stray_text_ids(special: SpecialIds) -> tuple[int, ...]:
    """Structure tokens text mode masks besides the visual ids (the reference masks only
    those): they are valid only inside an image or at sequence start (spec §12 item 28)."""
    return (special.eol, special.img, special.eoi, special.pad, special.bos)


def refusal(special: SpecialIds, kind: StepKind, forced: int, token: int, vocab_size: int
            ) -> str | None:
    """Why ``token`` cannot be drawn at a step of this kind (None: it can). The sampler's
    masks make a refused token impossible unless its scores were not finite (it then draws a
    negative id)."""
    s = special
    if forced >= 0:
        ok = token == forced
    elif kind is StepKind.VISUAL:
        ok = s.visual_base <= token < vocab_size
    elif kind is StepKind.DIGIT:
        ok = token in s.digits
    elif kind is StepKind.DIGIT_NONZERO:
        ok = token in s.digits[1:]
    else:
        ok = 0 <= token < s.visual_base and token not in stray_text_ids(s)
    if ok:
        return None
    what = "no valid token" if token < 0 else f"token {token}, outside the grammar"
    return f"sampling failed at a {kind.name.lower()} step ({what}: non-finite scores?)"


def header_tokens(special: SpecialIds, grid: ImageGrid) -> list[int]:
    """'h*w' as ids: every digit and '*' is one BPE token (spec §2.1), then IMG."""
    digits = [special.digits[int(c)] for c in str(grid.h)]
    digits += [special.star] + [special.digits[int(c)] for c in str(grid.w)]
    return digits + [special.img]


@dataclass
class GrammarState:
    """Where one request is in the grammar. ``fixed_grid``: the grid every image uses once
    known (request's size, the last reference image, or the first generated image)."""

    special: SpecialIds
    fixed_grid: ImageGrid | None = None
    mode: Mode = Mode.TEXT
    header: list[int] = field(default_factory=list)  # tokens after BOI, this image
    k: int = 0              # 1-based index of the next token after IMG
    grid: ImageGrid | None = None  # the current image's grid
    images_done: int = 0

    def next_step(self) -> tuple[StepKind, int]:
        """(kind, forced token or -1) of the next token."""
        if self.mode is Mode.TEXT:
            return StepKind.TEXT, -1
        if self.mode is Mode.HEADER:
            j = len(self.header) + 1
            if self.fixed_grid is not None:
                return StepKind.FORCED, header_tokens(self.special, self.fixed_grid)[j - 1]
            if j in (1, 4):
                return StepKind.DIGIT_NONZERO, -1
            if j in (2, 5):
                return StepKind.DIGIT, -1
            return StepKind.FORCED, (self.special.star if j == 3 else self.special.img)
        h, w = self.grid.h, self.grid.w
        if self.k == h * (w + 1):
            return StepKind.FORCED, self.special.eoi
        if self.k % (w + 1) == 0:
            return StepKind.FORCED, self.special.eol
        return StepKind.VISUAL, -1

    def refuses(self, token: int, vocab_size: int) -> str | None:
        """Why ``token`` cannot come next (None: it can); see :func:`refusal`."""
        kind, forced = self.next_step()
        return refusal(self.special, kind, forced, token, vocab_size)

    def in_image(self) -> bool:
        return self.mode is not Mode.TEXT

    def advance(self, token: int) -> Transition:
        s = self.special
        if self.mode is Mode.TEXT:
            if token == s.boi:
                self.mode, self.header = Mode.HEADER, []
                return Transition(image_entered=True)
            return Transition()
        if self.mode is Mode.HEADER:
            if token != s.img:
                self.header.append(token)
                return Transition()
            self.grid = self.fixed_grid or self._parse_header()
            self.fixed_grid = self.grid  # later images replay it (spec §3.4 rule 4)
            self.mode, self.k = Mode.VISUAL, 1
            return Transition(image_started=self.grid)
        self.k += 1
        if token == s.eoi:
            self.mode = Mode.TEXT
            self.images_done += 1
            return Transition(row_done=self.grid.h, image_done=True)
        if token == s.eol:
            return Transition(row_done=(self.k - 1) // (self.grid.w + 1))
        return Transition()

    def _parse_header(self) -> ImageGrid:
        digit_value = {t: d for d, t in enumerate(self.special.digits)}
        star = self.header.index(self.special.star)
        h = int("".join(str(digit_value[t]) for t in self.header[:star]))
        w = int("".join(str(digit_value[t]) for t in self.header[star + 1:]))
        return ImageGrid(h, w)


def grid_from_prompt(special: SpecialIds, ids: tuple[int, ...]) -> ImageGrid | None:
    """The grid of the last image header in a prompt (spec §3.4 rule 1), or None."""
    try:
        img = len(ids) - 1 - ids[::-1].index(special.img)
        boi = img - 1 - ids[img - 1::-1].index(special.boi)
    except ValueError:
        return None
    state = GrammarState(special, header=list(ids[boi + 1:img]), mode=Mode.HEADER)
    return state._parse_header()
