"""The decode fusions against the unfused kernels they replace, bit for bit, on fresh random
inputs (kernels/skinny_swiglu.py, kernels/triton_norm.py, kernels/linear.py):

- gate_up's skinny GEMM with SiLU * mul in its epilogue == skinny_gemm, then silu_mul (under
  the Triton interpreter within the measured bound of tests/kernels/interpreter_tolerance.py:
  there OpenBLAS sums a dot in an order that depends on its column in the tile);
- add + RMSNorm summing a split-K GEMM's fp32 partials == the GEMM's own _sum_splits_kernel,
  then add + RMSNorm;
- QK-norm + RoPE storing k and v in the paged cache == qk_norm_rope, then write_kv.

Also each against its torch reference (within the tolerance of tests/kernels/test_fused_norm.py
where the reference rounds differently). On the CPU the kernels run under TRITON_INTERPRET=1,
whose bf16 dot is unusable (the skinny GEMM tests run in fp16 and fp32 there) and whose
fp32 -> bf16 cast truncates (so bf16 comparisons are against the unfused kernels only);
``-m gpu`` reruns them compiled, with bf16 GEMMs and the 34B widths, bit for bit.
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.fused_norm import (add_rms_norm_reference,  # noqa: E402
                                qk_norm_rope_to_cache_reference)
from kernels.linear import SplitKPartials, linear_silu_mul_reference  # noqa: E402
from kernels.paged_attention import write_kv  # noqa: E402
from tests.kernels.interpreter_tolerance import assert_fused_matches  # noqa: E402
from tests.kernels.test_fused_norm import (assert_matches, needs_triton,  # noqa: E402
                                           norm_weight, rope_inputs)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
GEMM_DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if DEV == "cuda" else [])
ROWS = [1, 2, 5, 16]
EPS = 1e-6


def _gen(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _gemm_pair(m, n, k, dtype, gen):
    x = torch.randn(m, k, generator=gen).to(DEV, dtype)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(DEV, dtype)
    return x, w


def _unfused_split_sum(parts, dtype):
    """The skinny GEMM's own second kernel on given partials [S, M, N]."""
    from kernels.skinny_gemm import _sum_splits_kernel

    s, m, n = parts.shape
    out = torch.empty(m, n, dtype=dtype, device=parts.device)
    _sum_splits_kernel[(m, -(-n // 1024))](parts, out, n, parts.stride(0), parts.stride(1),
                                          out.stride(0), SPLIT_K=s, BLOCK=1024, num_warps=4)
    return out


def _near_reference(out, ref):
    """Against a torch reference whose fp32 sums of squares add up in another order: 16-bit
    within test_fused_norm.py's ulp bound (a few hundred elements make one flipped ulp more
    than its 0.1%), fp32 by relative norm."""
    if ref.dtype == torch.float32:
        rel = ((out - ref).norm() / ref.norm()).item()
        assert rel < 1e-6, rel
    else:
        assert_matches(out, ref, ulps=2, max_mismatch=0.01)


# -- gate_up GEMM + SiLU * mul ---------------------------------------------------------------

@needs_triton
@pytest.mark.parametrize("dtype", GEMM_DTYPES, ids=str)
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("f,k", [(96, 256), (200, 384), (160, 200), (1000, 512)])
def test_gemm_silu_mul_is_the_unfused_pair(dtype, m, f, k):
    from kernels.skinny_gemm import skinny_gemm
    from kernels.skinny_swiglu import skinny_gemm_silu_mul
    from kernels.triton_norm import silu_mul

    x, w = _gemm_pair(m, 2 * f, k, dtype, _gen(m, f, k, str(dtype)))
    fused = skinny_gemm_silu_mul(x, w)
    assert fused is not None and fused.shape == (m, f) and fused.dtype == dtype
    assert_fused_matches(fused, silu_mul(skinny_gemm(x, w)))  # torch.equal on CUDA
    if dtype != torch.bfloat16 or DEV == "cuda":
        ref = linear_silu_mul_reference(x, w).float()  # another fp32 summation order
        rel = ((fused.float() - ref).norm() / ref.norm()).item()
        assert rel < (1e-5 if dtype == torch.float32 else 2e-3), rel


@needs_triton
def test_gemm_silu_mul_declines_split_k():
    """Where the plain kernel would split K the fused one returns None (no exact epilogue)."""
    from kernels.skinny_swiglu import skinny_gemm_silu_mul

    x, w = _gemm_pair(2, 64, 1024, torch.float32, _gen("split"))
    assert skinny_gemm_silu_mul(x, w) is None


def test_linear_silu_mul_falls_back_off_cuda():
    from kernels.fused_norm import silu_mul_reference
    from kernels.linear import linear_silu_mul

    x, w = _gemm_pair(3, 64, 32, torch.float32, _gen("cpu"))
    x, w = x.cpu(), w.cpu()
    out = linear_silu_mul(x, w, silu_mul_reference)
    assert torch.equal(out, silu_mul_reference(torch.nn.functional.linear(x, w)))


# -- split-K partials summed in add + RMSNorm ------------------------------------------------

@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("n,splits", [(64, 2), (200, 4), (5120, 4)])
def test_add_rms_norm_of_partials_is_sum_then_norm(dtype, rows, n, splits):
    from kernels.triton_norm import add_rms_norm

    gen = _gen(rows, n, splits, str(dtype))
    parts = torch.randn(splits, rows, n, generator=gen).to(DEV)
    parts[0, 0, :3] = -0.0  # signed zeros go through the same adds
    residual = torch.randn(rows, n, generator=gen).to(DEV, dtype)
    weight = norm_weight(n, dtype, gen, DEV)
    got = add_rms_norm(SplitKPartials(parts, dtype), residual, weight, EPS)
    want = add_rms_norm(_unfused_split_sum(parts, dtype), residual, weight, EPS)
    for g, w in zip(got, want):
        assert g.dtype == dtype and torch.equal(g, w)
    if dtype != torch.bfloat16 or DEV == "cuda":
        ref = add_rms_norm_reference(SplitKPartials(parts, dtype), residual, weight, EPS)
        assert torch.equal(got[1], ref[1])
        _near_reference(got[0], ref[0])


@needs_triton
@pytest.mark.parametrize("dtype", GEMM_DTYPES, ids=str)
@pytest.mark.parametrize("m", ROWS)
def test_deferred_split_gemm_into_norm(dtype, m):
    """skinny_gemm(defer_split_sum) -> add_rms_norm == skinny_gemm -> add_rms_norm."""
    from kernels.skinny_gemm import skinny_gemm
    from kernels.triton_norm import add_rms_norm

    n, k = 96, 1024  # default tiles split this K four ways
    gen = _gen("defer", m, str(dtype))
    x, w = _gemm_pair(m, n, k, dtype, gen)
    residual = torch.randn(m, n, generator=gen).to(DEV, dtype)
    weight = norm_weight(n, dtype, gen, DEV)
    parts = skinny_gemm(x, w, defer_split_sum=True)
    assert parts.shape == (4, m, n) and parts.dtype == torch.float32
    got = add_rms_norm(SplitKPartials(parts, dtype), residual, weight, EPS)
    want = add_rms_norm(skinny_gemm(x, w), residual, weight, EPS)
    for g, w_ in zip(got, want):
        assert torch.equal(g, w_)


# -- QK-norm + RoPE writing the paged KV cache -----------------------------------------------

# The 34B head layout (64 / 8 / 128) at 1 and 5 rows: under the interpreter its 16-row case
# took 40 s of the CPU suite and covers nothing the small layouts at 16 rows do not.
QK_CASES = [(t, *heads) for heads in [(4, 2, 32), (6, 3, 16)] for t in ROWS] + \
    [(t, 64, 8, 128) for t in (1, 5)]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("t,hq,hkv,d", QK_CASES)
def test_qk_norm_rope_to_cache_is_norm_then_write(dtype, t, hq, hkv, d):
    from kernels.triton_norm import qk_norm_rope, qk_norm_rope_to_cache

    gen = _gen(t, hq, d, str(dtype))
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=gen).to(DEV, dtype)
    qw, kw = norm_weight(d, dtype, gen, DEV), norm_weight(d, dtype, gen, DEV)
    cos, sin, pos = rope_inputs(t, 64, d, gen, DEV)
    blocks, block_size = 6, 4
    slots = torch.randperm(blocks * block_size, generator=gen)[:t].to(DEV)
    poison = torch.randn(blocks, block_size, hkv, d, generator=gen).to(DEV, dtype)
    caches = [poison.clone() for _ in range(4)]  # fused k, v; unfused k, v
    args = (qkv, qw, kw, cos, sin, pos, hq, hkv, d, EPS)
    q_fused = qk_norm_rope_to_cache(*args, caches[0], caches[1], slots)
    q, k, v = qk_norm_rope(*args)
    write_kv(caches[2], caches[3], k, v, slots, skip_negative=False)
    assert torch.equal(q_fused, q)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    ref_k, ref_v = poison.clone(), poison.clone()
    q_ref = qk_norm_rope_to_cache_reference(*args, ref_k, ref_v, slots)
    assert torch.equal(caches[1], ref_v)  # v is copied, never rounded
    _near_reference(q_fused, q_ref)
    _near_reference(caches[0], ref_k)


@needs_triton
def test_qk_norm_rope_to_cache_skips_negative_slots():
    from kernels.triton_norm import qk_norm_rope_to_cache

    gen = _gen("neg")
    hq, hkv, d, t = 4, 2, 32, 3
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=gen).to(DEV)
    w = norm_weight(d, torch.float32, gen, DEV)
    cos, sin, pos = rope_inputs(t, 16, d, gen, DEV)
    k_cache = torch.full((2, 4, hkv, d), 7.0, device=DEV)
    v_cache = k_cache.clone()
    slots = torch.tensor([5, -1, 0], device=DEV)
    qk_norm_rope_to_cache(qkv, w, w, cos, sin, pos, hq, hkv, d, EPS, k_cache, v_cache, slots)
    touched = torch.zeros(8, dtype=torch.bool)
    touched[[5, 0]] = True
    for cache in (k_cache, v_cache):
        rows = cache.view(8, -1).cpu()
        assert (rows[~touched] == 7.0).all() and (rows[touched] != 7.0).all()
    v = qkv[:, (hq + hkv) * d:].view(t, hkv, d)
    assert torch.equal(v_cache.view(8, hkv, d)[5], v[0])


@pytest.mark.gpu
@pytest.mark.parametrize("m", ROWS)
def test_fusions_at_34b_widths_on_cuda(m):
    """Compiled, bf16, the real gate_up / down_proj / o_proj shapes: bit-identical."""
    from kernels.skinny_gemm import skinny_gemm
    from kernels.skinny_swiglu import skinny_gemm_silu_mul
    from kernels.triton_norm import add_rms_norm, silu_mul

    dtype, gen = torch.bfloat16, _gen("34b", m)
    x, w = _gemm_pair(m, 2 * 25600, 5120, dtype, gen)
    assert torch.equal(skinny_gemm_silu_mul(x, w), silu_mul(skinny_gemm(x, w)))
    for n, k in [(5120, 25600), (5120, 8192)]:
        x, w = _gemm_pair(m, n, k, dtype, gen)
        residual = torch.randn(m, n, generator=gen).to(DEV, dtype)
        weight = norm_weight(n, dtype, gen, DEV)
        parts = skinny_gemm(x, w, defer_split_sum=True)
        y = SplitKPartials(parts, dtype) if parts.dim() == 3 else parts
        got = add_rms_norm(y, residual, weight, EPS)
        want = add_rms_norm(skinny_gemm(x, w), residual, weight, EPS)
        assert all(torch.equal(g, w_) for g, w_ in zip(got, want))


def test_decode_fusion_switch(monkeypatch):
    from kernels.fused_norm import REFERENCE_OPS, ElementwiseOps
    from kernels.registry import decode_fusion

    from kernels.registry import KernelChoice

    fused = ElementwiseOps("triton", *[None] * 5)
    assert decode_fusion(fused) and not decode_fusion(REFERENCE_OPS)
    assert not decode_fusion(fused, enabled=False)
    monkeypatch.delenv("EMU35_DECODE_FUSION", raising=False)
    assert KernelChoice.from_env().decode_fusion
    monkeypatch.setenv("EMU35_DECODE_FUSION", "0")
    assert not KernelChoice.from_env().decode_fusion
    monkeypatch.setenv("EMU35_DECODE_FUSION", "yes")
    with pytest.raises(ValueError, match="EMU35_DECODE_FUSION"):
        KernelChoice.from_env()
