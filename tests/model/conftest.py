"""Fixtures of the model-layer tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.model.ibq import VisionTokenizer, write_tiny_vision_tokenizer

from .ibq_fixtures import N_EMBED


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_ibq")
    write_tiny_vision_tokenizer(out, n_embed=N_EMBED, seed=0)
    return out


@pytest.fixture(scope="module")
def tok(tiny_dir) -> VisionTokenizer:
    return VisionTokenizer.from_dir(tiny_dir)
