"""The fused elementwise kernels (kernels/triton_norm.py) against the torch references that
define them (kernels/fused_norm.py).

On a CPU-only machine the kernels run under TRITON_INTERPRET=1 (skipped when Triton is not
installed); ``-m gpu`` runs them compiled at the model's real sizes against torch on CUDA.

Exactness the asserts hold:

- The new residual (``residual + x``) is always bit-identical.
- Inputs whose fp32 sums of squares are exact in any order (multiples of 1/16): rms_norm,
  add_rms_norm and qk_norm_rope bit-identical in bf16 and fp32, so every rounding step of the
  reference is reproduced; on CUDA silu_mul is bit-identical on any input.
- Any input: what remains is the order of the fp32 sum of squares (and on the CPU numpy's exp
  against torch's in SiLU). bf16 outputs differ in at most 0.1% of elements, each by at most
  one bf16 ulp of its row's largest value (two for RoPE, whose two products may cancel); fp32
  outputs stay within 4 fp32 ulps of the row's largest value.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.fused_norm import (add_rms_norm_reference, qk_norm_rope_reference,  # noqa: E402
                                rms_norm_reference, silu_mul_reference)

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")
EPS = 1e-6
MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}


def tn():
    from kernels import triton_norm  # lazy: imports triton

    return triton_norm


def make(shape, dtype, gen, exact=False, scale=1.0, device="cpu"):
    """Random values; ``exact``: multiples of 1/16 in [-1, 1], whose squares add up exactly."""
    if exact:
        t = torch.randint(-16, 17, shape, generator=gen) / 16
    else:
        t = torch.randn(shape, generator=gen) * scale
    return t.to(dtype).to(device)


def norm_weight(n, dtype, gen, device="cpu"):
    return (1.0 + 0.1 * torch.randn(n, generator=gen)).to(dtype).to(device)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, ulps: float = 1.0,
                   max_mismatch: float = 1e-3) -> None:
    """The tolerance above: within ``ulps`` ulps (4 for fp32) of each last-dim row's largest
    reference value; for 16-bit dtypes also at most ``max_mismatch`` of elements differing."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if ref.dtype == torch.float32:
        ulps = 4.0
    row_max = ref.float().abs().amax(-1, keepdim=True).clamp_min(1e-30)
    ulp = torch.ldexp(torch.ones_like(row_max), torch.frexp(row_max).exponent - 1
                      - MANTISSA_BITS[ref.dtype])
    err = ((out.float() - ref.float()).abs() / ulp).max().item()
    assert err <= ulps, f"{err:.2f} ulps of the row maximum"
    if ref.dtype != torch.float32:
        frac = (out != ref).float().mean().item()
        assert frac <= max_mismatch, f"{frac:.2e} of elements differ"


def rope_inputs(t, positions, d, gen, device="cpu"):
    """Random fp32 tables (halves differ, so a kernel reading the wrong half fails) and
    random positions, repeats included."""
    cos = torch.randn(positions, d, generator=gen).to(device)
    sin = torch.randn(positions, d, generator=gen).to(device)
    pos = torch.randint(0, positions, (t,), generator=gen).to(device)
    return cos, sin, pos


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 3, 17])
@pytest.mark.parametrize("n", [64, 96, 5120])
@pytest.mark.parametrize("exact", [False, True], ids=["random", "exact_sums"])
def test_add_rms_norm_matches_reference(dtype, t, n, exact):
    gen = torch.Generator().manual_seed(n + t)
    x, res = make((t, n), dtype, gen, exact), make((t, n), dtype, gen, exact)
    w = norm_weight(n, dtype, gen)
    out, new_res = tn().add_rms_norm(x, res, w, EPS)
    ref, ref_res = add_rms_norm_reference(x, res, w, EPS)
    assert torch.equal(new_res, ref_res)
    plain, plain_ref = tn().rms_norm(x, w, EPS), rms_norm_reference(x, w, EPS)
    if exact:
        assert torch.equal(out, ref) and torch.equal(plain, plain_ref)
    else:
        assert_matches(out, ref)
        assert_matches(plain, plain_ref)


@needs_triton
def test_rms_norm_of_heads_and_strided_rows():
    gen = torch.Generator().manual_seed(1)
    x = make((5, 3, 16), torch.bfloat16, gen, exact=True)  # per-head norm on [T, H, D]
    w = norm_weight(16, torch.bfloat16, gen)
    assert torch.equal(tn().rms_norm(x, w, EPS), rms_norm_reference(x, w, EPS))
    wide = make((4, 100), torch.bfloat16, gen, exact=True)
    x, res = wide[:, :40], wide[:, 50:90]  # rows with stride 100
    w = norm_weight(40, torch.bfloat16, gen)
    for got, want in zip(tn().add_rms_norm(x, res, w, EPS), add_rms_norm_reference(x, res, w, EPS)):
        assert got.is_contiguous() and torch.equal(got, want)


@needs_triton
def test_empty_batch_and_dtype_mismatch():
    w = torch.ones(8)
    out, res = tn().add_rms_norm(torch.empty(0, 8), torch.empty(0, 8), w, EPS)
    assert out.shape == res.shape == (0, 8)
    assert tn().silu_mul(torch.empty(0, 6)).shape == (0, 3)
    with pytest.raises(ValueError, match="one dtype"):
        tn().rms_norm(torch.ones(2, 8, dtype=torch.bfloat16), w, EPS)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 5, 33])
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 16), (8, 1, 128), (2, 2, 24)])
@pytest.mark.parametrize("exact", [False, True], ids=["random", "exact_sums"])
def test_qk_norm_rope_matches_reference(dtype, t, hq, hkv, d, exact):
    gen = torch.Generator().manual_seed(t * d + hq)
    qkv = make((t, (hq + 2 * hkv) * d), dtype, gen, exact, scale=3.0)
    qw, kw = norm_weight(d, dtype, gen), norm_weight(d, dtype, gen)
    cos, sin, pos = rope_inputs(t, 40, d, gen)
    args = (qkv, qw, kw, cos, sin, pos, hq, hkv, d, EPS)
    q, k, v = tn().qk_norm_rope(*args)
    ref_q, ref_k, ref_v = qk_norm_rope_reference(*args)
    assert torch.equal(v, ref_v) and v.data_ptr() == ref_v.data_ptr()  # a view, not a copy
    if exact:
        assert torch.equal(q, ref_q) and torch.equal(k, ref_k)
    else:
        assert_matches(q, ref_q, ulps=2)
        assert_matches(k, ref_k, ulps=2)


@needs_triton
def test_qk_norm_rope_int32_positions():
    gen = torch.Generator().manual_seed(7)
    qkv = make((6, 4 * 32), torch.bfloat16, gen, exact=True)
    qw, kw = norm_weight(32, torch.bfloat16, gen), norm_weight(32, torch.bfloat16, gen)
    cos, sin, pos = rope_inputs(6, 16, 32, gen)
    got = tn().qk_norm_rope(qkv, qw, kw, cos, sin, pos.int(), 2, 1, 32, EPS)
    want = qk_norm_rope_reference(qkv, qw, kw, cos, sin, pos, 2, 1, 32, EPS)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 7])
@pytest.mark.parametrize("f", [64, 300, 1500])
def test_silu_mul_matches_reference(dtype, t, f):
    gen = torch.Generator().manual_seed(f + t)
    gate_up = make((t, 2 * f), dtype, gen, scale=4.0)
    assert_matches(tn().silu_mul(gate_up), silu_mul_reference(gate_up))
    three_d = gate_up.view(t, 1, 2 * f)
    assert tn().silu_mul(three_d).shape == (t, 1, f)


# --- compiled on CUDA at the model's sizes (pytest -m gpu) ----------------------------------

HIDDEN, FFN, HQ, HKV, D = 5120, 25600, 64, 8, 128
GPU_ROWS = [2, 64, 4096]


@pytest.mark.gpu
@pytest.mark.parametrize("t", GPU_ROWS)
@pytest.mark.parametrize("exact", [False, True], ids=["random", "exact_sums"])
def test_gpu_add_rms_norm_real_size(t, exact):
    gen = torch.Generator().manual_seed(t)
    x, res = (make((t, HIDDEN), torch.bfloat16, gen, exact, device="cuda") for _ in range(2))
    w = norm_weight(HIDDEN, torch.bfloat16, gen, device="cuda")
    out, new_res = tn().add_rms_norm(x, res, w, EPS)
    ref, ref_res = add_rms_norm_reference(x, res, w, EPS)
    assert torch.equal(new_res, ref_res)
    print(f"T={t} {'exact' if exact else 'random'}: {(out != ref).float().mean().item():.2e} "
          f"of elements differ")
    if exact:
        assert torch.equal(out, ref)
    assert_matches(out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("t", GPU_ROWS)
@pytest.mark.parametrize("exact", [False, True], ids=["random", "exact_sums"])
def test_gpu_qk_norm_rope_real_size(t, exact):
    from services.model.config import Emu35Config
    from services.model.ops import rope_tables

    gen = torch.Generator().manual_seed(t)
    qkv = make((t, (HQ + 2 * HKV) * D), torch.bfloat16, gen, exact, scale=3.0, device="cuda")
    qw, kw = (norm_weight(D, torch.bfloat16, gen, device="cuda") for _ in range(2))
    cfg = Emu35Config(vocab_size=1, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=1,
                      num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D)
    cos, sin = rope_tables(cfg, device="cuda")  # theta 1e6, 9216 positions: the code defaults
    pos = torch.randint(0, cfg.max_position_embeddings, (t,), generator=gen).cuda()
    args = (qkv, qw, kw, cos, sin, pos, HQ, HKV, D, EPS)
    (q, k, v), (ref_q, ref_k, ref_v) = tn().qk_norm_rope(*args), qk_norm_rope_reference(*args)
    assert torch.equal(v, ref_v)
    print(f"T={t} {'exact' if exact else 'random'}: q {(q != ref_q).float().mean().item():.2e}, "
          f"k {(k != ref_k).float().mean().item():.2e} of elements differ")
    if exact:
        assert torch.equal(q, ref_q) and torch.equal(k, ref_k)
    assert_matches(q, ref_q, ulps=2)
    assert_matches(k, ref_k, ulps=2)


@pytest.mark.gpu
@pytest.mark.parametrize("t", GPU_ROWS)
def test_gpu_silu_mul_bit_identical(t):
    gen = torch.Generator().manual_seed(t)
    gate_up = make((t, 2 * FFN), torch.bfloat16, gen, scale=4.0, device="cuda")
    assert torch.equal(tn().silu_mul(gate_up), silu_mul_reference(gate_up))
