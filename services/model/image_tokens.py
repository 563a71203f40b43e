"""Image token spans: grid sizes, presets, and the BOI..EOI id layout (spec §3).

An h x w image (rows x columns of IBQ codes, 16h x 16w pixels) is the span

    BOI str(h) "*" str(w) IMG row_0 EOL row_1 ... EOL row_{h-1} EOI

where the header characters are ordinary BPE tokens and visual code c has id visual_base + c.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

import torch

from services.model.text_tokenizer import TextTokenizer

PIXELS_PER_TOKEN = 16  # IBQ downsampling factor
DEFAULT_MAX_SIDE = 256  # tokens per side accepted by parse_image_size (4096 px)


class ImageSizeError(ValueError):
    """An image size specification that is malformed or out of range."""


class ImageSpanError(ValueError):
    """A token span that is not a well-formed BOI..EOI image."""


@dataclass(frozen=True)
class ImageGrid:
    """Image size in tokens: h rows by w columns (pixels: 16h x 16w)."""

    h: int
    w: int

    def __post_init__(self) -> None:
        for name in ("h", "w"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ImageSizeError(f"image grid {name}={value!r}: expected an integer >= 1")

    @property
    def num_visual(self) -> int:
        """Number of visual tokens (IBQ codes)."""
        return self.h * self.w

    @property
    def header_text(self) -> str:
        """The header characters between BOI and IMG, e.g. ``"55*73"``."""
        return f"{self.h}*{self.w}"

    @property
    def header_length(self) -> int:
        """Tokens from BOI through IMG inclusive (one token per header character)."""
        return len(self.header_text) + 2

    @property
    def span_length(self) -> int:
        """Tokens from BOI through EOI inclusive: h*w + (h-1) + len(str h) + len(str w) + 4."""
        return self.header_length + self.num_visual + (self.h - 1) + 1

    @property
    def height_px(self) -> int:
        """Image height in pixels."""
        return self.h * PIXELS_PER_TOKEN

    @property
    def width_px(self) -> int:
        """Image width in pixels."""
        return self.w * PIXELS_PER_TOKEN


# t2i presets (spec §3.2): the name is width:height, the grid is rows*columns.
ASPECT_PRESETS: Mapping[str, ImageGrid] = MappingProxyType({
    "1:1": ImageGrid(64, 64),
    "4:3": ImageGrid(55, 73),
    "default": ImageGrid(55, 73),
    "21:9": ImageGrid(41, 97),
    "16:9": ImageGrid(47, 85),
    "3:2": ImageGrid(52, 78),
    "3:4": ImageGrid(73, 55),
    "9:16": ImageGrid(85, 47),
    "2:3": ImageGrid(78, 52),
})

_TOKENS_RE = re.compile(r"(\d+)\*(\d+)")
_PIXELS_RE = re.compile(r"(\d+)[xX](\d+)")


def parse_image_size(spec: str, max_side: int = DEFAULT_MAX_SIDE) -> Optional[ImageGrid]:
    """Parse an output image size.

    Accepts "auto" (returns None: the model chooses), a preset name from ASPECT_PRESETS,
    "H*W" in tokens (e.g. "64*64") or "HxW" in pixels, each a multiple of 16 (e.g.
    "1024x1024"). Each side must be 1..max_side tokens.
    """
    if not isinstance(spec, str):
        raise ImageSizeError(f"image size {spec!r}: expected a string")
    text = spec.strip().lower()
    if text == "auto":
        return None
    if text in ASPECT_PRESETS:
        return ASPECT_PRESETS[text]
    if match := _TOKENS_RE.fullmatch(text):
        h, w = int(match.group(1)), int(match.group(2))
    elif match := _PIXELS_RE.fullmatch(text):
        h_px, w_px = int(match.group(1)), int(match.group(2))
        if h_px % PIXELS_PER_TOKEN or w_px % PIXELS_PER_TOKEN:
            raise ImageSizeError(f"image size {spec!r}: pixel sides must be multiples of "
                                 f"{PIXELS_PER_TOKEN}")
        h, w = h_px // PIXELS_PER_TOKEN, w_px // PIXELS_PER_TOKEN
    else:
        presets = ", ".join(ASPECT_PRESETS)
        raise ImageSizeError(f"image size {spec!r} not understood; use 'auto', a preset "
                             f"({presets}), 'H*W' in tokens or 'HxW' in pixels")
    if not (1 <= h <= max_side and 1 <= w <= max_side):
        raise ImageSizeError(f"image size {spec!r} is {h}*{w} tokens; each side must be 1.."
                             f"{max_side} tokens (16..{max_side * PIXELS_PER_TOKEN} px)")
    return ImageGrid(h, w)


def header_ids(tok: TextTokenizer, grid: ImageGrid) -> list[int]:
    """BOI, the BPE ids of "h*w", IMG."""
    return [tok.special.boi, *tok.encode_text(grid.header_text), tok.special.img]


def image_span_ids(tok: TextTokenizer, codes: torch.Tensor) -> list[int]:
    """The full BOI..EOI span of an image given its IBQ codes ``codes: [h, w]``."""
    if codes.dim() != 2 or codes.numel() == 0 or codes.is_floating_point():
        raise ImageSpanError(f"codes: expected a non-empty integer [h, w] tensor, "
                             f"got {codes.dtype} {tuple(codes.shape)}")
    sp = tok.special
    if int(codes.min()) < 0 or int(codes.max()) >= sp.num_visual:
        raise ImageSpanError(f"codes: values must be in [0, {sp.num_visual})")
    h, w = codes.shape
    codes = codes.to("cpu", torch.long)
    # Append an EOL column, flatten, drop the trailing EOL: EOL goes between rows only.
    eol = torch.full((h, 1), sp.eol, dtype=torch.long)
    body = torch.cat([codes + sp.visual_base, eol], dim=1).reshape(-1)[:-1]
    return header_ids(tok, ImageGrid(h, w)) + body.tolist() + [sp.eoi]


def parse_header(tok: TextTokenizer, ids: Sequence[int]) -> ImageGrid:
    """Grid of the header ``BOI digits "*" digits IMG`` at the start of ``ids``."""
    sp = tok.special
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if not ids or ids[0] != sp.boi:
        raise ImageSpanError("image header must start with BOI")
    digit_of = {token_id: str(d) for d, token_id in enumerate(sp.digits)}
    chars = []
    for token_id in ids[1:]:
        if token_id == sp.img:
            break
        if token_id != sp.star and token_id not in digit_of:
            raise ImageSpanError(f"image header: unexpected token id {token_id}")
        chars.append("*" if token_id == sp.star else digit_of[token_id])
    else:
        raise ImageSpanError("image header: missing IMG")
    text = "".join(chars)
    # Decimal without leading zeros, as the reference writes it (spec §3.1).
    if not re.fullmatch(r"[1-9]\d*\*[1-9]\d*", text):
        raise ImageSpanError(f"image header {text!r}: expected 'h*w' with h, w >= 1")
    h, w = text.split("*")
    return ImageGrid(int(h), int(w))


def parse_image_span(tok: TextTokenizer, ids: Sequence[int]) -> torch.Tensor:
    """IBQ codes ``[h, w]`` (int64) of a complete BOI..EOI span; inverse of image_span_ids."""
    sp = tok.special
    ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    grid = parse_header(tok, ids)
    if sp.eoi not in ids:
        raise ImageSpanError("image span: missing EOI")
    if ids[-1] != sp.eoi or ids.index(sp.eoi) != len(ids) - 1:
        raise ImageSpanError("image span: EOI must be the last token, exactly once")
    body = ids[grid.header_length:-1]
    h, w = grid.h, grid.w
    if len(body) != h * (w + 1) - 1:
        raise ImageSpanError(f"image span: rows are not {h} x {w}; row lengths "
                             f"{_row_lengths(body, sp.eol)[:16]}")
    rows = torch.tensor(body + [sp.eol], dtype=torch.long).view(h, w + 1)  # [h, w + 1]
    if not bool((rows[:, w] == sp.eol).all()):
        raise ImageSpanError(f"image span: rows are not {h} x {w}; row lengths "
                             f"{_row_lengths(body, sp.eol)[:16]}")
    codes = rows[:, :w] - sp.visual_base  # [h, w]
    bad = (codes < 0) | (codes >= sp.num_visual)
    if bool(bad.any()):
        r, c = (int(x) for x in bad.nonzero()[0])
        raise ImageSpanError(f"image span: non-visual id {int(rows[r, c])} at row {r}, "
                             f"column {c}")
    return codes


def _row_lengths(body: list[int], eol: int) -> list[int]:
    lengths, current = [], 0
    for token_id in body:
        if token_id == eol:
            lengths.append(current)
            current = 0
        else:
            current += 1
    return lengths + [current]
