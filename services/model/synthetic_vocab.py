"""A small but real tokenizer with the Emu3.5 special-token structure, for tests.

``write_synthetic_tokenizer`` trains a byte-level BPE (the 256 single bytes plus learned
merges) on an embedded English corpus that contains the prompt templates, pre-tokenised with
the same Qwen-v1 pattern as the real vocabulary, and writes the three files the real
tokenizer directory holds. Special ids then follow from the files exactly as they do for the
real vocabulary, so code that derives them (never hard-codes them) works on both.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Union

import regex

from services.model.templates import IMAGE_PLACEHOLDER, Task, template_strings
from services.model.text_tokenizer import (
    BASE_SPECIAL_TOKENS,
    IMAGE_END,
    IMAGE_START,
    IMAGE_TOKEN,
    QWEN_PATTERN,
    TIKTOKEN_FILE,
    TOKENIZER_CONFIG_FILE,
    VISION_TOKENS_FILE,
    VISUAL_TOKEN_FORMAT,
)

_PROSE = """\
A clay astronaut explores Mars and discovers a new continent hidden beneath the red dust.
How to cook shrimp, celery, and pork dumplings. Please provide seven steps for the task.
Generate a picture of a cat sitting on a wooden table next to a window in the morning light.
Tell a story about a little robot who wants to learn how to paint the sea and the sky.
Step one: wash the vegetables and chop them into small pieces. Step two: mix the filling.
The image shows a quiet street with old houses, tall trees and a small red bicycle.
Replace the background with a snowy mountain and keep the person in the same position.
Walk forward through the forest, then turn left at the river and look at the bridge.
The robot arm picks up the blue cube and places it on top of the green block.
This is a photo of a dog playing in the park with a ball. It is a sunny day.
She opened the door, looked at the garden, and smiled at the flowers in the rain.
We will make a paper boat: fold the sheet in half, then fold the corners down.
"""

_QUESTIONS = ("a cat", "How to cook", "Tell a story about a dog",
              "Make the sky blue", "Explore the room", "Pick up the cup")


def write_synthetic_tokenizer(
    out_dir: Union[str, Path], num_visual_tokens: int, num_merges: int = 256
) -> int:
    """Write emu3.tiktoken, emu3_vision_tokens.txt and tokenizer_config.json to ``out_dir``.

    The output is byte-for-byte deterministic. Returns the vocabulary size:
    256 + num_merges + 208 base specials + 3 image tokens + num_visual_tokens.
    """
    if num_visual_tokens < 1:
        raise ValueError(f"num_visual_tokens={num_visual_tokens}: need at least 1")
    if num_merges < 0:
        raise ValueError(f"num_merges={num_merges}: must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = [bytes([b]) for b in range(256)] + train_bpe(_corpus_pieces(), num_merges)
    ranks_text = "".join(
        f"{base64.b64encode(token).decode('ascii')} {rank}\n" for rank, token in enumerate(tokens)
    )
    (out / TIKTOKEN_FILE).write_text(ranks_text, encoding="ascii")
    vision = [IMAGE_TOKEN, IMAGE_START, IMAGE_END]
    vision += [VISUAL_TOKEN_FORMAT.format(code) for code in range(num_visual_tokens)]
    (out / VISION_TOKENS_FILE).write_text("".join(t + "\n" for t in vision), encoding="utf-8")
    config = {
        "model_max_length": 1000000000000000000,
        "tokenizer_class": "Emu3Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_emu3.Emu3Tokenizer", None]},
    }
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return len(tokens) + len(BASE_SPECIAL_TOKENS) + len(vision)


def train_bpe(pieces: Counter, num_merges: int) -> list[bytes]:
    """Learn ``num_merges`` new tokens from pre-token counts; returns them in rank order.

    Merges happen only inside pre-token pieces (like tiktoken's encoder). The most frequent
    adjacent pair wins; ties go to the smallest pair of byte strings, for determinism.
    """
    words: Counter = Counter({tuple(bytes([b]) for b in piece): n for piece, n in pieces.items()})
    known = {bytes([b]) for b in range(256)}
    learned: list[bytes] = []
    while len(learned) < num_merges:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            raise ValueError(f"corpus supports only {len(learned)} merges, {num_merges} asked")
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        words = _apply_merge(words, best)
        merged = best[0] + best[1]
        # Different pairs can spell the same bytes ("a"+"bc", "ab"+"c"); keep one rank.
        if merged not in known:
            known.add(merged)
            learned.append(merged)
    return learned


def _apply_merge(words: Counter, pair: tuple[bytes, bytes]) -> Counter:
    merged_words: Counter = Counter()
    for word, count in words.items():
        out, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                out.append(word[i] + word[i + 1])
                i += 2
            else:
                out.append(word[i])
                i += 1
        merged_words[tuple(out)] += count
    return merged_words


def _corpus_pieces() -> Counter:
    """Pre-token counts of the corpus: prose plus every filled-in template, split at special
    strings first (tiktoken never merges across them), then by the Qwen pattern."""
    texts = [_PROSE]
    for task in Task:
        for with_image in (False, True):
            for template in template_strings(task, with_image):
                for question in _QUESTIONS:
                    filled = template.replace("{question}", question)
                    # An image span splits the text there, as a special string does.
                    texts.append(filled.replace(IMAGE_PLACEHOLDER, IMAGE_START))
    pattern = regex.compile(QWEN_PATTERN)
    special = regex.compile(r"<\|[^|]*\|>")
    pieces: Counter = Counter()
    for text in texts:
        for chunk in special.split(text):
            pieces.update(m.encode("utf-8") for m in pattern.findall(chunk))
    return pieces
