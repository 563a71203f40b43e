"""Which paged-attention implementation a device uses.

``flash`` (flash-attn importable, CUDA) > ``triton`` (CUDA) > ``reference`` (anything else).
``EMU35_ATTENTION=reference|triton|flash`` overrides the choice (a ``prefer`` argument
overrides both). Names resolve to functions only when asked for, so CPU-only use never
imports Triton.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

IMPLEMENTATIONS = ("reference", "triton", "flash")
ENV_VAR = "EMU35_ATTENTION"


def attention_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The implementation's name for ``device``: ``prefer``, else the env var, else the best
    one available."""
    name = prefer or os.environ.get(ENV_VAR) or None
    if name is not None:
        if name not in IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {name!r}; "
                             f"choose one of {', '.join(IMPLEMENTATIONS)}")
        return name
    if torch.device(device).type != "cuda":
        return "reference"
    from .paged_attention import flash_attn_available

    return "flash" if flash_attn_available() else "triton"


def attention_impl(device: torch.device | str, prefer: str | None = None) -> Callable:
    """The paged-attention function to call on ``device`` (signature of
    :func:`kernels.paged_attention.paged_attention_reference`)."""
    from . import paged_attention as pa

    name = attention_impl_name(device, prefer)
    return {"reference": pa.paged_attention_reference, "triton": pa.paged_attention_triton,
            "flash": pa.paged_attention_flash}[name]
