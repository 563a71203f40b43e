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

The env vars are read once, by :meth:`KernelChoice.from_env`; the choice then travels as a
frozen record (``EngineConfig.kernels``, ``Emu35ForCausalLM.use_kernels``) and every function
here takes it as ``prefer`` arguments: nothing on a forward's path reads ``os.environ``.
Names resolve to functions only when asked for, so CPU-only use never imports Triton.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
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
SKINNY_GEMM_ENV_VAR = "EMU35_SKINNY_GEMM"


@dataclass(frozen=True)
class KernelChoice:
    """The kernel switches of one model/engine, resolved once. None: the best for the device."""

    attention: str | None = None     # IMPLEMENTATIONS
    elementwise: str | None = None   # "reference" | "triton" (fused norms, QK-norm, SwiGLU)
    decode_fusion: bool = True       # with the fused elementwise ops only
    skinny_gemm: bool = True         # the skinny Triton GEMM for decode-sized batches (CUDA)
    sampling: str | None = None      # SAMPLING_IMPLEMENTATIONS
    draw: str | None = None          # DRAW_IMPLEMENTATIONS

    def __post_init__(self) -> None:
        _requested("attention", IMPLEMENTATIONS, self.attention)
        _requested("elementwise", tuple(FUSED_CHOICES.values()), self.elementwise)
        _requested("sampling", SAMPLING_IMPLEMENTATIONS, self.sampling)
        _requested("draw", DRAW_IMPLEMENTATIONS, self.draw)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "KernelChoice":
        """The choice the ``EMU35_*`` variables make (module docstring); read here only."""
        env = os.environ if environ is None else environ
        fused = env.get(FUSED_ENV_VAR) or None
        if fused is not None and fused not in FUSED_CHOICES:
            raise ValueError(f"{FUSED_ENV_VAR}={fused!r}: use 1 (fused Triton kernels) or 0 (torch)")
        return cls(attention=env.get(ENV_VAR) or None,
                   elementwise=FUSED_CHOICES[fused] if fused else None,
                   decode_fusion=_flag(env, DECODE_FUSION_ENV_VAR, "fused decode"),
                   skinny_gemm=_flag(env, SKINNY_GEMM_ENV_VAR, "skinny GEMM"),
                   sampling=env.get(SAMPLING_ENV_VAR) or None, draw=env.get(DRAW_ENV_VAR) or None)


def _flag(env: Mapping[str, str], var: str, what: str) -> bool:
    value = env.get(var, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{var}={value!r}: use 1 ({what}) or 0")
    return value == "1"


def _requested(kind: str, choices: tuple[str, ...], prefer: str | None) -> str | None:
    if prefer is not None and prefer not in choices:
        raise ValueError(f"unknown {kind} implementation {prefer!r}; "
                         f"choose one of {', '.join(choices)}")
    return prefer


def attention_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The implementation's name for ``device``: ``prefer``, else the best one available."""
    name = _requested("attention", IMPLEMENTATIONS, prefer)
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
    """``"triton"`` or ``"reference"`` for ``device``: ``prefer``, else the fused kernels on
    CUDA when Triton is installed."""
    if _requested("elementwise", tuple(FUSED_CHOICES.values()), prefer) is not None:
        return prefer
    fused = torch.device(device).type == "cuda" and triton_installed()
    return "triton" if fused else "reference"


def elementwise_ops(device: torch.device | str, prefer: str | None = None) -> "ElementwiseOps":
    """The elementwise ops bundle to use on ``device`` (see :mod:`kernels.fused_norm`)."""
    from . import fused_norm

    if elementwise_ops_name(device, prefer) == "triton":
        return fused_norm.triton_ops()
    return fused_norm.REFERENCE_OPS


def decode_fusion(ops: "ElementwiseOps", enabled: bool = True) -> bool:
    """Whether a decode-sized forward on ``ops`` takes the fused decode path: the fused
    kernels reproduce the Triton elementwise kernels, so only with those, and ``enabled``
    (``KernelChoice.decode_fusion``)."""
    return ops.name == "triton" and enabled


def sampling_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The guided-scores implementation's name for ``device``: ``prefer``, else ``triton`` on
    CUDA and ``reference`` elsewhere."""
    name = _requested("sampling", SAMPLING_IMPLEMENTATIONS, prefer)
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
    ``device``: ``prefer``, else ``triton`` on CUDA when Triton is installed and ``torch``
    elsewhere."""
    name = _requested("draw", DRAW_IMPLEMENTATIONS, prefer)
    if name is not None:
        return name
    return "triton" if torch.device(device).type == "cuda" and triton_installed() else "torch"
