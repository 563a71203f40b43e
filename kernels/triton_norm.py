"""Triton kernels for :mod:`kernels.fused_norm`: one launch per op, each row read once.

Exactness: every value the torch reference rounds to the tensor dtype (bf16 in the model) is
rounded here too, with ``.to(DTYPE)`` right after the op, and the kernels are compiled without
FMA contraction (``enable_fp_fusion=False``) so that a product and a sum the reference rounds
separately stay separate. Where torch's kernels differ by device the kernels follow the device
of the tensors (``CUDA_ROUNDING``): torch's CUDA ``mean`` multiplies the sum by fp32(1/N) and
its SiLU uses ``expf`` with an IEEE division (libdevice here); its CPU ``mean`` divides by N
(CPU tensors only run under TRITON_INTERPRET=1, with numpy's exp). What stays inexact is the
order in which the fp32 sum of squares is added up; see tests/kernels/test_fused_norm.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .linear import SplitKPartials

# Pinned so that a Triton default can never start fusing a*b + c into one rounding.
LAUNCH = dict(enable_fp_fusion=False)


@triton.jit
def _round(x, dtype: tl.constexpr):
    """fp32 x rounded to dtype (round to nearest even, as torch), kept in fp32. bf16 is
    rounded on the bits: the interpreter's fp32 -> bf16 cast truncates, and this is exactly
    what both torch and the compiled cast (cvt.rn) do for finite values."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    elif dtype == tl.float16:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _inv_rms(sum_sq, inv_n, eps, N: tl.constexpr, CUDA_ROUNDING: tl.constexpr):
    """rsqrt(mean(x^2) + eps) from the fp32 sum of squares, the mean rounded like torch's."""
    if CUDA_ROUNDING:
        mean = sum_sq * inv_n
    else:
        mean = tl.div_rn(sum_sq, N * 1.0)
    return tl.rsqrt(mean + eps)


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, s_x, s_res, s_out, s_res_out,
                     s_split, inv_n, eps, N: tl.constexpr, BLOCK: tl.constexpr,
                     ADD_RESIDUAL: tl.constexpr, SPLITS: tl.constexpr,
                     CUDA_ROUNDING: tl.constexpr):
    """One row per program: [res_out = res + x], out = w * bf16(x * inv_rms(x)). With SPLITS,
    x is a split-K GEMM's fp32 partials [SPLITS, R, N], summed as its _sum_splits_kernel."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    dtype: tl.constexpr = out_ptr.dtype.element_ty
    if SPLITS > 0:
        x = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLITS):
            x += tl.load(x_ptr + s * s_split + row * s_x + cols, mask=ok, other=0.0)
        x = x.to(dtype).to(tl.float32)  # the GEMM's rounding (its store), read back
    else:
        x = tl.load(x_ptr + row * s_x + cols, mask=ok, other=0.0).to(tl.float32)
    if ADD_RESIDUAL:
        x = _round(tl.load(res_ptr + row * s_res + cols, mask=ok, other=0.0).to(tl.float32) + x,
                   dtype)
        tl.store(res_out_ptr + row * s_res_out + cols, x.to(dtype), mask=ok)
    inv = _inv_rms(tl.sum(x * x, 0), inv_n, eps, N, CUDA_ROUNDING)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_out + cols, _round(w * _round(x * inv, dtype), dtype).to(dtype),
             mask=ok)


@triton.jit
def _table(row_ptr, d, d_ok, dtype: tl.constexpr):
    """Half a RoPE table row [1, D/2], fp32 in memory, cast to dtype (``cos.to(x.dtype)``)."""
    return _round(tl.load(row_ptr + d, mask=d_ok).to(tl.float32), dtype)[None, :]


@triton.jit
def _rope_half(a, b, cos, sin, dtype: tl.constexpr):
    """One half of x * cos + rotate_half(x) * sin, each product and the sum rounded to dtype
    (a: this half of x, b: the other half with rotate_half's sign, cos/sin: this half)."""
    return _round(_round(a * cos, dtype) + _round(b * sin, dtype), dtype)


@triton.jit
def _head_weight(qw_ptr, kw_ptr, is_q, d, d_ok):
    """[BLOCK_H, D/2] fp32: q_norm's weight on q heads' rows, k_norm's on k heads' rows."""
    qw = tl.load(qw_ptr + d, mask=d_ok).to(tl.float32)[None, :]
    kw = tl.load(kw_ptr + d, mask=d_ok).to(tl.float32)[None, :]
    return tl.where(is_q, qw, kw)


@triton.jit
def _qk_norm_rope_kernel(qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr,
                         v_ptr, slot_ptr, s_qkv, s_cos, s_sin, s_k, s_v, inv_n, eps,
                         HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                         HALF_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                         TO_CACHE: tl.constexpr, CUDA_ROUNDING: tl.constexpr):
    """Program (token, head block): BLOCK_H heads of q then k (the first HQ + HKV heads of the
    qkv row), each held as its two RoPE halves [BLOCK_H, D/2]. k goes to row ``tok`` of k_ptr
    (row stride s_k); with TO_CACHE to row ``slots[tok]`` of the cache k_ptr, and the v heads
    (the last HKV, programs past q and k) are copied to that row of the cache v_ptr."""
    HALF: tl.constexpr = D // 2
    tok = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF_BLOCK)
    d_ok = d < HALF
    is_q = (head < HQ)[:, None]
    is_k = ((head >= HQ) & (head < HQ + HKV))[:, None]
    ok = (head < HQ + HKV + TO_CACHE * HKV)[:, None] & d_ok[None, :]
    src = qkv_ptr + tok * s_qkv + head[:, None] * D + d[None, :]
    x1 = tl.load(src, mask=ok, other=0.0)
    x2 = tl.load(src + HALF, mask=ok, other=0.0)
    dtype: tl.constexpr = x1.dtype
    x1, x2 = x1.to(tl.float32), x2.to(tl.float32)

    # Per-head RMSNorm, q_norm's weight for q heads and k_norm's for k heads.
    inv = _inv_rms(tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1), inv_n, eps, D, CUDA_ROUNDING)
    y1 = _round(_head_weight(qw_ptr, kw_ptr, is_q, d, d_ok) * _round(x1 * inv[:, None], dtype),
                dtype)
    y2 = _round(_head_weight(qw_ptr + HALF, kw_ptr + HALF, is_q, d, d_ok)
                * _round(x2 * inv[:, None], dtype), dtype)

    # RoPE with the fp32 table rows cast to dtype first, as the reference does.
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    cos_row, sin_row = cos_ptr + pos * s_cos, sin_ptr + pos * s_sin
    o1 = _rope_half(y1, -y2, _table(cos_row, d, d_ok, dtype), _table(sin_row, d, d_ok, dtype),
                    dtype)
    o2 = _rope_half(y2, y1, _table(cos_row + HALF, d, d_ok, dtype),
                    _table(sin_row + HALF, d, d_ok, dtype), dtype)

    q_dst = q_ptr + tok * (HQ * D) + head[:, None] * D + d[None, :]
    tl.store(q_dst, o1.to(dtype), mask=ok & is_q)
    tl.store(q_dst + HALF, o2.to(dtype), mask=ok & is_q)
    if TO_CACHE:  # [BLOCK_H] copies of the token's slot (a vector keeps the masks 2-D)
        row = tl.load(slot_ptr + tok + 0 * head).to(tl.int64)
        is_k = is_k & (row >= 0)[:, None]  # negative: padding, not stored
    else:
        row = tok + 0 * head.to(tl.int64)
    k_dst = k_ptr + row[:, None] * s_k + (head - HQ)[:, None] * D + d[None, :]
    tl.store(k_dst, o1.to(dtype), mask=ok & is_k)
    tl.store(k_dst + HALF, o2.to(dtype), mask=ok & is_k)
    if TO_CACHE:  # v unchanged, straight from the qkv row
        is_v = ((head >= HQ + HKV) & (row >= 0))[:, None]
        v_dst = v_ptr + row[:, None] * s_v + (head - HQ - HKV)[:, None] * D + d[None, :]
        tl.store(v_dst, x1.to(dtype), mask=ok & is_v)
        tl.store(v_dst + HALF, x2.to(dtype), mask=ok & is_v)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, s_gu, s_out, F, BLOCK: tl.constexpr,
                     CUDA_ROUNDING: tl.constexpr):
    """Program (row, column block): out = bf16(bf16(silu(gate)) * up)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < F
    gate = tl.load(gu_ptr + row * s_gu + cols, mask=ok, other=0.0)
    up = tl.load(gu_ptr + row * s_gu + F + cols, mask=ok, other=0.0)
    dtype: tl.constexpr = gate.dtype
    g = gate.to(tl.float32)
    if CUDA_ROUNDING:
        e = libdevice.exp(-g)  # expf, not tl.exp's ex2.approx
    else:
        e = tl.exp(-g)
    silu = _round(tl.div_rn(g, 1.0 + e), dtype)
    tl.store(out_ptr + row * s_out + cols, _round(silu * up.to(tl.float32), dtype).to(dtype),
             mask=ok)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with unit column stride (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _inv_n(n: int) -> float:
    """fp32(1/n), the factor torch's CUDA mean multiplies by."""
    return (torch.ones((), dtype=torch.float32) / n).item()


def _check_dtypes(dtype: torch.dtype, *others: torch.Tensor) -> None:
    for o in others:
        if o.dtype != dtype:
            raise ValueError(f"fused kernels need one dtype; got {dtype} and {o.dtype}")


def _norm(x, residual, weight, eps):
    if isinstance(x, SplitKPartials):  # [S, R, N] fp32 partials of a 2-D GEMM output
        assert residual is not None and residual.dim() == 2 and x.parts.stride(2) == 1
        x2, splits, dtype, shape = x.parts, x.parts.shape[0], x.dtype, residual.shape
        s_x, s_split = x2.stride(1), x2.stride(0)
    else:
        x2, splits, dtype, shape = _rows(x), 0, x.dtype, x.shape  # [R, N]
        s_x, s_split = x2.stride(0), 0
    n = shape[-1]
    _check_dtypes(dtype, weight, *([] if residual is None else [residual]))
    assert weight.shape == (n,)
    assert residual is None or residual.shape == shape
    rows = x2.shape[-2]
    out = torch.empty(rows, n, dtype=dtype, device=weight.device)
    res2 = out if residual is None else _rows(residual)
    res_out = out if residual is None else torch.empty_like(out)
    if rows:
        block = triton.next_power_of_2(n)
        _rms_norm_kernel[(rows,)](
            x2, res2, weight, out, res_out, s_x, res2.stride(0), out.stride(0),
            res_out.stride(0), s_split, _inv_n(n), eps, N=n, BLOCK=block,
            ADD_RESIDUAL=residual is not None, SPLITS=splits, CUDA_ROUNDING=weight.is_cuda,
            num_warps=min(16, max(1, block // 512)), **LAUNCH)
    return out.view(shape), res_out.view(shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused :func:`kernels.fused_norm.rms_norm_reference` (x: [..., N], weight [N])."""
    return _norm(x, None, weight, eps)[0]


def add_rms_norm(x: torch.Tensor | SplitKPartials, residual: torch.Tensor,
                 weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused :func:`kernels.fused_norm.add_rms_norm_reference`: reads x and residual once,
    writes (normed, residual + x) as new tensors. x may be a skinny GEMM's unsummed split-K
    partials: summed here exactly as the GEMM's own second kernel would."""
    return _norm(x, residual, weight, eps)


def _qk_launch(qkv, q_weight, k_weight, cos, sin, positions, num_heads, num_kv_heads,
               head_dim, eps, k_dst, v_dst, slots):
    t, width = qkv.shape
    assert width == (num_heads + 2 * num_kv_heads) * head_dim and head_dim % 2 == 0
    assert qkv.stride(1) == 1 and cos.stride(1) == 1 and sin.stride(1) == 1
    _check_dtypes(qkv.dtype, q_weight, k_weight, k_dst, v_dst)
    q = torch.empty(t, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    heads = num_heads + num_kv_heads  # the norm's tile shape does not depend on TO_CACHE
    block_h = min(8, triton.next_power_of_2(heads))
    if slots is not None:
        heads += num_kv_heads  # programs for the v heads too
    if t:
        _qk_norm_rope_kernel[(t, triton.cdiv(heads, block_h))](
            qkv, q_weight, k_weight, cos, sin, positions, q, k_dst, v_dst,
            positions if slots is None else slots, qkv.stride(0), cos.stride(0),
            sin.stride(0), k_dst.stride(0), v_dst.stride(0), _inv_n(head_dim), eps,
            HQ=num_heads, HKV=num_kv_heads, D=head_dim,
            HALF_BLOCK=triton.next_power_of_2(head_dim // 2), BLOCK_H=block_h,
            TO_CACHE=slots is not None, CUDA_ROUNDING=qkv.is_cuda, num_warps=4, **LAUNCH)
    return q


def qk_norm_rope(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 num_heads: int, num_kv_heads: int, head_dim: int, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused :func:`kernels.fused_norm.qk_norm_rope_reference`: one launch normalises and
    rotates q [T, Hq, D] and k [T, Hkv, D]; v is a view of qkv."""
    t = qkv.shape[0]
    k = torch.empty(t, num_kv_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    v = qkv[:, (num_heads + num_kv_heads) * head_dim:].view(t, num_kv_heads, head_dim)
    q = _qk_launch(qkv, q_weight, k_weight, cos, sin, positions, num_heads, num_kv_heads,
                   head_dim, eps, k.view(t, -1), k.view(t, -1), None)
    return q, k, v


def qk_norm_rope_to_cache(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                          cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                          num_heads: int, num_kv_heads: int, head_dim: int, eps: float,
                          k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
                          ) -> torch.Tensor:
    """Fused :func:`kernels.fused_norm.qk_norm_rope_to_cache_reference`: the same launch
    also stores k and v of token t at cache slot ``slots[t]`` (negative: skipped) instead of
    returning them. Caches: [blocks, block_size, Hkv, D], contiguous, qkv's dtype."""
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.shape[2:] == (num_kv_heads, head_dim) == v_cache.shape[2:]
    return _qk_launch(qkv, q_weight, k_weight, cos, sin, positions, num_heads, num_kv_heads,
                      head_dim, eps, k_cache.view(-1, num_kv_heads * head_dim),
                      v_cache.view(-1, num_kv_heads * head_dim), slots)


def silu_mul(gate_up: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Fused :func:`kernels.fused_norm.silu_mul_reference`: gate_up [..., 2F] -> [..., F]."""
    gu = _rows(gate_up)  # [R, 2F]
    f = gu.shape[1] // 2
    out = torch.empty(gu.shape[0], f, dtype=gu.dtype, device=gu.device)
    if gu.shape[0]:
        _silu_mul_kernel[(gu.shape[0], triton.cdiv(f, block))](
            gu, out, gu.stride(0), out.stride(0), f, BLOCK=block,
            CUDA_ROUNDING=gu.is_cuda, num_warps=4, **LAUNCH)
    return out.view(*gate_up.shape[:-1], f)
