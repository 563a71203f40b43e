"""Split a generated response into ordered entries: text, chains of thought, images (spec §8.2).

The reference detokenizes the whole response, deletes ESS/EOS and regex-splits the string on
the non-greedy spans BOG..EOG, BOC..EOC and BOI..EOI. ``split_response`` does the same on ids:
at each position an opener (BOG, BOC, BOI) starts a span if its closer occurs later, the span
ends at the first such closer, and everything between spans is text. For every output of the
grammar (spec §5.1) the entries equal the reference's. Working on ids means BPE text that
happens to spell a special string (``"<|image start|>"``) stays text, and an image's codes come
straight from its ids.

Where the reference silently drops content (spec §12 item 16), entries report it instead:

- an image span whose rows are not rectangular (or otherwise malformed) -> ``BrokenImage``;
- a BOI with no EOI after it (the budget ran out) -> ``IncompleteImage``. The text before that
  BOI is kept as a ``TextEntry``; the reference drops it together with the image.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch

from services.model.image_tokens import (
    ImageGrid,
    ImageSpanError,
    parse_header,
    parse_image_span,
)
from services.model.text_tokenizer import TextTokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class TextEntry:
    """Narration between the other entries (detokenized, special tokens kept)."""

    text: str


@dataclass(frozen=True)
class GlobalCot:
    """The global chain of thought (BOG..EOG, markers removed)."""

    text: str


@dataclass(frozen=True)
class ImageCot:
    """A per-image chain of thought (BOC..EOC, markers removed); precedes its image."""

    text: str


@dataclass(frozen=True, eq=False)
class ImageEntry:
    """A complete image: its IBQ codes ``codes: [h, w]`` (int64)."""

    codes: torch.Tensor

    @property
    def grid(self) -> ImageGrid:
        """Size of the image in tokens."""
        h, w = self.codes.shape
        return ImageGrid(int(h), int(w))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageEntry):
            return NotImplemented
        return torch.equal(self.codes, other.codes)


@dataclass(frozen=True)
class BrokenImage:
    """A BOI..EOI span that is not a well-formed image (e.g. ragged rows)."""

    reason: str


@dataclass(frozen=True)
class IncompleteImage:
    """An image cut off before its EOI; ``tokens_seen`` counts from BOI inclusive.

    ``grid`` is the size its header announced, when the header was complete and valid.
    """

    tokens_seen: int
    grid: ImageGrid | None = None


Entry = Union[TextEntry, GlobalCot, ImageCot, ImageEntry, BrokenImage, IncompleteImage]


@dataclass(frozen=True)
class PngImage:
    """An output or reference image encoded as PNG; width and height are read from the header."""

    data: bytes = field(repr=False)
    width: int = field(init=False)
    height: int = field(init=False)

    def __post_init__(self) -> None:
        data = self.data
        # Signature, then the IHDR chunk: length 13, type, width, height (big-endian), ..., CRC.
        if (not isinstance(data, bytes) or len(data) < 33 or data[:8] != PNG_SIGNATURE
                or data[12:16] != b"IHDR"):
            raise ValueError("PngImage: data is not a PNG file")
        object.__setattr__(self, "width", int.from_bytes(data[16:20], "big"))
        object.__setattr__(self, "height", int.from_bytes(data[20:24], "big"))


def split_response(tok: TextTokenizer, ids: Sequence[int] | torch.Tensor) -> list[Entry]:
    """Ordered entries of the generated ids ``ids`` (prompt excluded); see the module doc.

    ESS and EOS are dropped first. Text that is empty or whitespace-only is dropped; a global
    or image CoT is kept even when empty.
    """
    sp = tok.special
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
    if ids and (min(ids) < 0 or max(ids) >= tok.vocab_size):
        raise ValueError(f"token ids must be in [0, {tok.vocab_size})")
    ids = [i for i in ids if i != sp.ess and i != sp.eos]
    closer_of = {sp.bog: sp.eog, sp.boc: sp.eoc, sp.boi: sp.eoi}
    positions = {c: [k for k, i in enumerate(ids) if i == c] for c in closer_of.values()}
    entries: list[Entry] = []
    text_start = pos = 0
    while pos < len(ids):
        closer = closer_of.get(ids[pos])
        end = _next_position(positions[closer], pos) if closer is not None else None
        if end is None:
            pos += 1
            continue
        entries += _text_entries(tok, ids[text_start:pos])
        entries.append(_span_entry(tok, ids[pos:end + 1]))
        pos = text_start = end + 1
    entries += _text_entries(tok, ids[text_start:])
    return entries


def render_images(entries: Sequence[Entry], to_png: Callable[[torch.Tensor], PngImage]
                  ) -> list[Entry | PngImage]:
    """``entries`` with every ImageEntry replaced by ``to_png(codes)`` (codes ``[h, w]``)."""
    return [to_png(e.codes) if isinstance(e, ImageEntry) else e for e in entries]


def _next_position(sorted_positions: list[int], after: int) -> int | None:
    k = bisect.bisect_right(sorted_positions, after)
    return sorted_positions[k] if k < len(sorted_positions) else None


def _span_entry(tok: TextTokenizer, span: list[int]) -> Entry:
    """Entry of a complete span ``opener ... closer``."""
    sp = tok.special
    opener = span[0]
    if opener == sp.boi:
        try:
            return ImageEntry(parse_image_span(tok, span))
        except ImageSpanError as exc:
            return BrokenImage(str(exc))
    markers = (sp.bog, sp.eog) if opener == sp.bog else (sp.boc, sp.eoc)
    # The reference deletes every marker string inside the span, not only the outer pair.
    text = tok.decode([i for i in span[1:-1] if i not in markers])
    return GlobalCot(text) if opener == sp.bog else ImageCot(text)


def _text_entries(tok: TextTokenizer, ids: list[int]) -> list[Entry]:
    """Entries of the ids between spans: text, then an incomplete image if a BOI is left."""
    boi = tok.special.boi
    cut = ids.index(boi) if boi in ids else len(ids)
    text = tok.decode(ids[:cut])
    entries: list[Entry] = [TextEntry(text)] if text.strip() else []
    if cut < len(ids):
        entries.append(IncompleteImage(len(ids) - cut, _header_grid(tok, ids[cut:])))
    return entries


def _header_grid(tok: TextTokenizer, ids: list[int]) -> ImageGrid | None:
    try:
        return parse_header(tok, ids)
    except ImageSpanError:
        return None
