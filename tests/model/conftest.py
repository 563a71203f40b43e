"""Fixtures of the model-layer tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.model.ibq import VisionTokenizer, write_tiny_vision_tokenizer
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TIKTOKEN_FILE, TextTokenizer

from .ibq_fixtures import N_EMBED


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_ibq")
    write_tiny_vision_tokenizer(out, n_embed=N_EMBED, seed=0)
    return out


@pytest.fixture(scope="module")
def vision(tiny_dir) -> VisionTokenizer:
    return VisionTokenizer.from_dir(tiny_dir)


def _real_tokenizer_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "emu35-tokenizer"
    return Path(os.environ.get("EMU35_TOKENIZER_DIR", default))


@pytest.fixture(scope="module")
def real_tok() -> TextTokenizer:
    """The real Emu3.5 tokenizer files (../shared/emu35-tokenizer), or skip."""
    path = _real_tokenizer_dir()
    if not (path / TIKTOKEN_FILE).exists():
        pytest.skip(f"real Emu3.5 tokenizer files not found at {path}")
    return TextTokenizer.from_dir(path)


@pytest.fixture(scope="module")
def synth_tok(tmp_path_factory) -> TextTokenizer:
    """A small synthetic vocabulary with the same special-token structure."""
    path = tmp_path_factory.mktemp("synth")
    write_synthetic_tokenizer(path, num_visual_tokens=100)
    return TextTokenizer.from_dir(path)


@pytest.fixture(params=["real", "synth"])
def tok(request) -> TextTokenizer:
    """Each test runs with both vocabularies."""
    return request.getfixturevalue(f"{request.param}_tok")
