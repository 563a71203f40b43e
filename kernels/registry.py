"""Which kernel implementations a device uses.

Paged attention: ``flash`` (flash-attn importable, CUDA) > ``triton`` (CUDA) > ``reference``
(anything else); ``EMU35_ATTENTION=reference|triton|flash`` overrides the choice.

Elementwise ops (RMSNorm with the residual add, QK-norm + RoPE, SwiGLU; :mod:`kernels.fused_norm`):
``triton`` (fused kernels) on CUDA when Triton is installed, ``reference`` (plain torch)
anywhere else; ``EMU35_FUSED=1`` / ``0`` forces one or the other.

A ``prefer`` argument overrides both env vars. Names resolve to functions only when asked for,
so CPU-only use never imports Triton.
"""
from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .fused_norm import ElementwiseOps

IMPLEMENTATIONS = ("reference", "triton", "flash")
ENV_VAR = "EMU35_ATTENTION"
FUSED_ENV_VAR = "EMU35_FUSED"
FUSED_CHOICES = {"0": "reference", "1": "triton"}


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


@cache
def triton_installed() -> bool:
    """True when Triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def elementwise_ops_name(device: torch.device | str, prefer: str | None = None) -> str:
    """``"triton"`` or ``"reference"`` for ``device``: ``prefer``, else ``EMU35_FUSED``, else
    the fused kernels on CUDA when Triton is installed."""
    if prefer is not None:
        if prefer not in FUSED_CHOICES.values():
            raise ValueError(f"unknown elementwise implementation {prefer!r}; "
                             f"choose reference or triton")
        return prefer
    env = os.environ.get(FUSED_ENV_VAR)
    if env:
        if env not in FUSED_CHOICES:
            raise ValueError(f"{FUSED_ENV_VAR}={env!r}: use 1 (fused Triton kernels) or 0 (torch)")
        return FUSED_CHOICES[env]
    fused = torch.device(device).type == "cuda" and triton_installed()
    return "triton" if fused else "reference"


def elementwise_ops(device: torch.device | str, prefer: str | None = None) -> "ElementwiseOps":
    """The elementwise ops bundle to use on ``device`` (see :mod:`kernels.fused_norm`)."""
    from . import fused_norm

    if elementwise_ops_name(device, prefer) == "triton":
        return fused_norm.triton_ops()
    return fused_norm.REFERENCE_OPS
