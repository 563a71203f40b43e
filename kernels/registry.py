"""Which kernel implementations a device uses.

Paged attention: ``flash`` (flash-attn importable, CUDA) > ``triton`` (CUDA) > ``reference``
(anything else); ``EMU35_ATTENTION=reference|triton|flash`` overrides the choice.

Elementwise ops (RMSNorm with the residual add, QK-norm + RoPE, SwiGLU; :mod:`kernels.fused_norm`):
``triton`` (fused kernels) on CUDA when Triton is installed, ``reference`` (plain torch)
anywhere else; ``EMU35_FUSED=1`` / ``0`` forces one or the other.

Decode fusions (:func:`decode_fusion`; K/V written by the QK-norm kernel, SiLU * mul in the
gate_up GEMM, split-K sums inside the next add + RMSNorm): on with the fused elementwise ops,
``EMU35_DECODE_FUSION=0`` turns them off (results are bit-identical either way).

Guided sampling scores: ``triton`` on CUDA, else ``reference``;
``EMU35_SAMPLING=reference|triton`` overrides.

Token draw for top-k rows without top-p (:func:`kernels.token_draw.draw_tokens`): ``triton``
(sort-free, :mod:`kernels.triton_draw`) on CUDA when Triton is installed, else ``torch`` (one
topk); ``EMU35_DRAW=torch|triton`` overrides.

A ``prefer`` argument overrides the env vars. Names resolve to functions only when asked for,
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
DECODE_FUSION_ENV_VAR = "EMU35_DECODE_FUSION"


SAMPLING_IMPLEMENTATIONS = ("reference", "triton")
SAMPLING_ENV_VAR = "EMU35_SAMPLING"
DRAW_IMPLEMENTATIONS = ("torch", "triton")
DRAW_ENV_VAR = "EMU35_DRAW"


def _requested(kind: str, choices: tuple[str, ...], env_var: str, prefer: str | None
               ) -> str | None:
    name = prefer or os.environ.get(env_var) or None
    if name is not None and name not in choices:
        raise ValueError(f"unknown {kind} implementation {name!r}; "
                         f"choose one of {', '.join(choices)}")
    return name


def attention_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The implementation's name for ``device``: ``prefer``, else the env var, else the best
    one available."""
    name = _requested("attention", IMPLEMENTATIONS, ENV_VAR, prefer)
    if name is not None:
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


def decode_fusion(ops: "ElementwiseOps") -> bool:
    """Whether a decode-sized forward on ``ops`` takes the fused decode path: the fused
    kernels reproduce the Triton elementwise kernels, so only with those, unless
    ``EMU35_DECODE_FUSION=0``."""
    env = os.environ.get(DECODE_FUSION_ENV_VAR, "1")
    if env not in ("0", "1"):
        raise ValueError(f"{DECODE_FUSION_ENV_VAR}={env!r}: use 1 (fused decode) or 0")
    return ops.name == "triton" and env == "1"


def sampling_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The guided-scores implementation's name for ``device``: ``prefer``, else the env var,
    else ``triton`` on CUDA and ``reference`` elsewhere."""
    name = _requested("sampling", SAMPLING_IMPLEMENTATIONS, SAMPLING_ENV_VAR, prefer)
    return name or ("triton" if torch.device(device).type == "cuda" else "reference")


def guided_scores_impl(device: torch.device | str, prefer: str | None = None) -> Callable:
    """The guided-scores function to call on ``device`` (signature of
    :func:`kernels.sampling.guided_scores_reference`)."""
    from . import sampling

    name = sampling_impl_name(device, prefer)
    return {"reference": sampling.guided_scores_reference,
            "triton": sampling.guided_scores_triton}[name]


def draw_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """How :func:`kernels.token_draw.draw_tokens` draws top-k rows without top-p on
    ``device``: ``prefer``, else ``EMU35_DRAW``, else ``triton`` on CUDA when Triton is
    installed and ``torch`` elsewhere."""
    name = _requested("draw", DRAW_IMPLEMENTATIONS, DRAW_ENV_VAR, prefer)
    if name is not None:
        return name
    return "triton" if torch.device(device).type == "cuda" and triton_installed() else "torch"
