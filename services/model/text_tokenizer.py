"""Emu3.5 text tokenizer: Qwen-v1 BPE (tiktoken) plus the Emu3 special-token layout (spec §2).

Only the BPE merges run inside tiktoken. Special tokens (the 208 Qwen/extra tokens and the
131,075 vision tokens) are handled here: handing all of them to tiktoken makes it compile a
131k-way alternation regex, which takes ~4 s per load, while special strings all share the
``<|...|>`` shape and can be found with a plain scan (see ``_split_specials``).

User text is never searched for special strings (spec §2.5, §12 item 14); only template text
(``Trusted``) and explicit id lists (image spans) can introduce special ids.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import tiktoken

TIKTOKEN_FILE = "emu3.tiktoken"
VISION_TOKENS_FILE = "emu3_vision_tokens.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Qwen-v1 pre-tokenizer pattern (spec §2.1); `\p{N}` makes every digit its own token.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

NUM_EXTRA_TOKENS = 205
BASE_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
) + tuple(f"<|extra_{i}|>" for i in range(NUM_EXTRA_TOKENS))

IMAGE_TOKEN = "<|image token|>"
IMAGE_START = "<|image start|>"
IMAGE_END = "<|image end|>"
VISUAL_TOKEN_FORMAT = "<|visual token {:06d}|>"
_VISUAL_TOKEN_RE = re.compile(r"<\|visual token (\d{6})\|>")

# Role -> special string; the ids are looked up in the loaded vocabulary, never hard-coded.
SPECIAL_ROLES: dict[str, str] = {
    "pad": "<|endoftext|>",
    "bos": "<|extra_203|>",
    "eos": "<|extra_204|>",
    "eol": "<|extra_200|>",
    "eof": "<|extra_201|>",
    "tms": "<|extra_202|>",
    "img": IMAGE_TOKEN,
    "boi": IMAGE_START,
    "eoi": IMAGE_END,
    "bss": "<|extra_100|>",
    "ess": "<|extra_101|>",
    "bog": "<|extra_60|>",
    "eog": "<|extra_61|>",
    "boc": "<|extra_50|>",
    "eoc": "<|extra_51|>",
}


@dataclass(frozen=True)
class Trusted:
    """Template text: special-token strings inside it become special ids."""

    text: str


@dataclass(frozen=True)
class UserText:
    """Untrusted text: encoded as plain BPE, special-token strings included."""

    text: str


# A part of `TextTokenizer.encode_segments`: template text, user text, or literal ids.
Segment = Union[Trusted, UserText, Sequence[int]]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens with a role in Emu3.5 (spec §2.2), derived from the files.

    pad/bos/eos: padding, begin/end of sequence; eol: image row separator; eof/tms: unused;
    img/boi/eoi: end of image header, image start, image end; bss/ess: assistant segment
    start/end; bog/eog: global chain of thought; boc/eoc: per-image chain of thought.
    Visual code c has id ``visual_base + c`` for 0 <= c < num_visual. ``digits[d]`` is the
    BPE id of the character str(d) and ``star`` the id of "*" (image header ``h*w``).
    """

    pad: int
    bos: int
    eos: int
    eol: int
    eof: int
    tms: int
    img: int
    boi: int
    eoi: int
    bss: int
    ess: int
    bog: int
    eog: int
    boc: int
    eoc: int
    visual_base: int
    num_visual: int
    digits: tuple[int, ...]
    star: int


def load_mergeable_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken ranks file (``base64 rank`` per line); ranks must be exactly 0..n-1."""
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for lineno, line in enumerate(_read_bytes(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected 'base64 rank'")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"{path}: line {lineno}: malformed ranks line ({exc})") from None
        if rank < 0 or rank in seen_ranks or token in ranks or not token:
            raise ValueError(f"{path}: line {lineno}: empty/duplicate token or bad rank {rank}")
        ranks[token] = rank
        seen_ranks.add(rank)
    # Special ids start at len(ranks), so a gap in the ranks would collide with them.
    if not ranks or max(seen_ranks) != len(ranks) - 1:
        raise ValueError(f"{path}: ranks must be exactly 0..{len(ranks) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        # Without every single byte, BPE cannot encode arbitrary user text.
        raise ValueError(f"{path}: single-byte tokens missing, e.g. byte {missing[0]}")
    return ranks


def load_vision_tokens(path: Path) -> list[str]:
    """Read the vision special tokens (one per non-empty line) and check their structure."""
    tokens: list[str] = []
    seen: set[str] = set(BASE_SPECIAL_TOKENS)
    visual_start = -1  # index in `tokens` of visual code 0
    for lineno, raw in enumerate(_read_bytes(path).decode("utf-8").splitlines(), start=1):
        token = raw.strip()
        if not token:
            continue
        if not _is_special_shape(token) or token in seen:
            raise ValueError(f"{path}: line {lineno}: bad or duplicate special token {token!r}")
        match = _VISUAL_TOKEN_RE.fullmatch(token)
        if match:
            code = int(match.group(1))
            visual_start = len(tokens) if code == 0 else visual_start
            # Visual ids are computed as base + code, so codes must be contiguous from 0.
            if visual_start < 0 or len(tokens) != visual_start + code:
                raise ValueError(f"{path}: line {lineno}: visual token {token!r} out of "
                                 "order; codes must be contiguous from 000000")
        seen.add(token)
        tokens.append(token)
    for required in (IMAGE_TOKEN, IMAGE_START, IMAGE_END, VISUAL_TOKEN_FORMAT.format(0)):
        if required not in seen:
            raise ValueError(f"{path}: required token {required!r} is missing")
    return tokens


class TextTokenizer:
    """Emu3.5 tokenizer: BPE ids 0..n-1, then the special tokens from id n (spec §2.2)."""

    def __init__(self, mergeable_ranks: dict[bytes, int], vision_tokens: Sequence[str]):
        """Build from in-memory ranks and vision tokens (already validated by the loaders)."""
        self._enc = tiktoken.Encoding(
            "emu3", pat_str=QWEN_PATTERN, mergeable_ranks=mergeable_ranks, special_tokens={}
        )
        self._num_bpe = len(mergeable_ranks)
        special_strings = BASE_SPECIAL_TOKENS + tuple(vision_tokens)
        self._specials = {s: self._num_bpe + i for i, s in enumerate(special_strings)}
        # One bytes table for all ids keeps decode a list lookup per id.
        table: list[bytes] = [b""] * self._num_bpe
        for token, rank in mergeable_ranks.items():
            table[rank] = token
        table.extend(s.encode("utf-8") for s in special_strings)
        self._id_bytes = table
        self.special = self._derive_special_ids(vision_tokens)

    @classmethod
    def from_dir(cls, path: Union[str, Path]) -> "TextTokenizer":
        """Load ``emu3.tiktoken`` and ``emu3_vision_tokens.txt`` from a directory."""
        path = Path(path)
        ranks = load_mergeable_ranks(path / TIKTOKEN_FILE)
        return cls(ranks, load_vision_tokens(path / VISION_TOKENS_FILE))

    @property
    def vocab_size(self) -> int:
        """Total number of ids (BPE plus special)."""
        return len(self._id_bytes)

    @property
    def num_bpe_tokens(self) -> int:
        """Number of BPE ids; the first special id (PAD) equals this."""
        return self._num_bpe

    def encode_text(self, text: str) -> list[int]:
        """Encode untrusted text: NFC, then BPE with no special-token recognition."""
        return self._enc.encode_ordinary(unicodedata.normalize("NFC", text))

    def encode_trusted(self, text: str) -> list[int]:
        """Encode template text: NFC, then special-token strings become special ids."""
        return self.encode_segments([Trusted(unicodedata.normalize("NFC", text))])

    def encode_segments(self, parts: Iterable[Segment]) -> list[int]:
        """Encode a prompt assembled from template text, user text and literal id lists.

        Plain text between special ids -- template and user text alike -- is joined into one
        run, NFC-normalised and BPE-encoded together, which is what encoding the fully
        substituted template string does (BPE pieces may span the template/user boundary).
        """
        ids: list[int] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                ids.extend(self.encode_text("".join(run)))
                run.clear()

        for part in parts:
            if isinstance(part, UserText):
                run.append(part.text)
            elif isinstance(part, Trusted):
                for piece in self._split_specials(part.text):
                    if isinstance(piece, str):
                        run.append(piece)
                    else:
                        flush()
                        ids.append(piece)
            elif isinstance(part, (str, bytes)):
                raise TypeError("wrap text segments in Trusted(...) or UserText(...)")
            else:
                flush()
                ids.extend(self._checked_ids(part))
        flush()
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Concatenate token bytes (specials as their strings) and decode UTF-8 with
        replacement; ``skip_special`` drops every id >= PAD, visual tokens included."""
        ids = self._checked_ids(ids)
        if skip_special:
            ids = [i for i in ids if i < self._num_bpe]
        return b"".join([self._id_bytes[i] for i in ids]).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of one id; a special id gives the UTF-8 bytes of its string."""
        self._checked_ids([token_id])
        return self._id_bytes[token_id]

    def id_of(self, special: str) -> int:
        """Id of a special-token string such as ``"<|extra_203|>"``."""
        try:
            return self._specials[special]
        except KeyError:
            raise KeyError(f"{special!r} is not a special token") from None

    def find_special(self, text: str) -> str | None:
        """The first special-token string written in ``text``, or None (the gateway refuses
        such user text rather than silently encoding it as plain text)."""
        for part in self._split_specials(text):
            if isinstance(part, int):
                return self._id_bytes[part].decode("utf-8")
        return None

    def is_visual(self, token_id: int) -> bool:
        """True for the ids of visual tokens (IBQ codes)."""
        return 0 <= token_id - self.special.visual_base < self.special.num_visual

    def visual_id(self, code: int) -> int:
        """Id of visual code ``code``."""
        if not 0 <= code < self.special.num_visual:
            raise ValueError(f"visual code {code} outside [0, {self.special.num_visual})")
        return self.special.visual_base + code

    def visual_code(self, token_id: int) -> int:
        """Visual code of a visual-token id."""
        if not self.is_visual(token_id):
            raise ValueError(f"token id {token_id} is not a visual token")
        return token_id - self.special.visual_base

    def _split_specials(self, text: str) -> Iterator[Union[str, int]]:
        """Yield plain-text pieces and special ids, matching leftmost special strings.

        Every special string starts with "<|" and contains "|>" only at its end (checked at
        load), so the only candidate starting at a "<|" ends at the next "|>".
        """
        start = pos = 0
        while (begin := text.find("<|", pos)) >= 0:
            end = text.find("|>", begin + 2)
            if end < 0:
                break
            token_id = self._specials.get(text[begin:end + 2])
            if token_id is None:
                pos = begin + 1
                continue
            if begin > start:
                yield text[start:begin]
            yield token_id
            start = pos = end + 2
        if start < len(text):
            yield text[start:]

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} outside the vocabulary [0, {self.vocab_size})")
        return ids

    def _derive_special_ids(self, vision_tokens: Sequence[str]) -> SpecialIds:
        roles = {role: self._specials[s] for role, s in SPECIAL_ROLES.items()}
        num_visual = sum(1 for t in vision_tokens if _VISUAL_TOKEN_RE.fullmatch(t))
        digits = tuple(self._single_token(str(d)) for d in range(10))
        return SpecialIds(
            **roles,
            visual_base=self._specials[VISUAL_TOKEN_FORMAT.format(0)],
            num_visual=num_visual,
            digits=digits,
            star=self._single_token("*"),
        )

    def _single_token(self, text: str) -> int:
        ids = self.encode_text(text)
        if len(ids) != 1:
            # Image headers and the auto-header digit mask need one token per character.
            raise ValueError(f"vocabulary encodes {text!r} as {len(ids)} tokens, expected 1")
        return ids[0]


def _is_special_shape(token: str) -> bool:
    # `_split_specials` relies on this shape: "<|" first, "|>" last and nowhere else.
    return len(token) >= 4 and token.startswith("<|") and token.find("|>", 2) == len(token) - 2


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"tokenizer file not found: {path}") from None
