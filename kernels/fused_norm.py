"""The decoder's elementwise work: RMSNorm (with the residual add), QK-norm + RoPE, SwiGLU.

The ``*_reference`` functions here are plain torch and *define* each op, down to the rounding
order of the bf16 model (spec §1.2): every torch op rounds its result to the tensor dtype, so
"``h + y`` in bf16" means fp32 add, one round to bf16. :mod:`kernels.triton_norm` emulates that
order op by op, so on the same device it matches these bit for bit except where a fp32
reduction (the sum of squares) is added up in a different order (tests/kernels/test_fused_norm.py
states the tolerance). :class:`ElementwiseOps` bundles one implementation of each;
:mod:`kernels.registry` picks which bundle a device uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

import torch
import torch.nn.functional as F

from .linear import SplitKPartials
from .paged_attention import write_kv


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama-order RMSNorm over the last dim: normalise in fp32, cast back to x's dtype,
    then scale (``weight * normed`` rounds once more in that dtype)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def add_rms_norm_reference(x: torch.Tensor | SplitKPartials, residual: torch.Tensor,
                           weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm residual step: ``residual + x`` (rounded to the dtype), then its RMSNorm.
    x, residual: [T, N] -> (normed [T, N], new residual [T, N]). x may be a split-K GEMM's
    partials, summed first (:func:`kernels.linear.split_sum_reference`)."""
    if isinstance(x, SplitKPartials):
        x = x.summed()
    residual = residual + x
    return rms_norm_reference(residual, weight, eps), residual


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX RoPE. x: [T, H, D]; cos/sin: [T, D] fp32 rows for each token's position, cast to
    x's dtype before rotating (the reference's HF path)."""
    cos = cos.to(x.dtype).unsqueeze(1)
    sin = sin.to(x.dtype).unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def qk_norm_rope_reference(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                           cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                           num_heads: int, num_kv_heads: int, head_dim: int, eps: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the fused QKV projection, per-head RMSNorm q and k, then RoPE them (spec §1.2
    item 2). qkv: [T, (Hq + 2 Hkv) * D]; cos/sin: fp32 tables [max_positions, D];
    positions: int [T]. Returns q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D] (a view of qkv)."""
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
    cos, sin = cos[positions], sin[positions]  # [T, D] fp32
    q = apply_rope_reference(rms_norm_reference(q.view(-1, num_heads, head_dim), q_weight, eps),
                             cos, sin)
    k = apply_rope_reference(rms_norm_reference(k.view(-1, num_kv_heads, head_dim), k_weight, eps),
                             cos, sin)
    return q, k, v.view(-1, num_kv_heads, head_dim)


def qk_norm_rope_to_cache_reference(qkv: torch.Tensor, q_weight: torch.Tensor,
                                    k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                    positions: torch.Tensor, num_heads: int, num_kv_heads: int,
                                    head_dim: int, eps: float, k_cache: torch.Tensor,
                                    v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """:func:`qk_norm_rope_reference`, then k and v stored in the paged caches at ``slots``
    (:func:`kernels.paged_attention.write_kv`; every slot valid). Returns q [T, Hq, D]."""
    q, k, v = qk_norm_rope_reference(qkv, q_weight, k_weight, cos, sin, positions, num_heads,
                                     num_kv_heads, head_dim, eps)
    write_kv(k_cache, v_cache, k, v, slots, skip_negative=False)
    return q


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's elementwise half: gate_up [T, 2F] (gate, then up) -> silu(gate) * up [T, F],
    each op rounded to the dtype."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass(frozen=True)
class ElementwiseOps:
    """One implementation of each elementwise op, with the signatures of the references."""

    name: str
    rms_norm: Callable[..., torch.Tensor]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    silu_mul: Callable[..., torch.Tensor]
    qk_norm_rope_to_cache: Callable[..., torch.Tensor]


REFERENCE_OPS = ElementwiseOps("reference", rms_norm_reference, add_rms_norm_reference,
                               qk_norm_rope_reference, silu_mul_reference,
                               qk_norm_rope_to_cache_reference)


@cache
def triton_ops() -> ElementwiseOps:
    """The fused Triton kernels (imports Triton on first call)."""
    from . import triton_norm as tn

    return ElementwiseOps("triton", tn.rms_norm, tn.add_rms_norm, tn.qk_norm_rope, tn.silu_mul,
                          tn.qk_norm_rope_to_cache)
