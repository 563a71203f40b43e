"""Paged attention: the reference against a naive loop, Triton against the reference.

On a CPU-only machine the Triton kernel runs under TRITON_INTERPRET=1 (skipped when Triton is
not installed); ``-m gpu`` runs it compiled on CUDA at the model's real shapes.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.paged_attention import (paged_attention_flash, paged_attention_reference,  # noqa: E402
                                     paged_attention_triton, flash_attn_available)
from kernels.paged_attention import write_kv  # noqa: E402
from tests.kernels.paged_batch import make_batch, rel_err  # noqa: E402

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed")

# Decode rows (ctx 1, a full block, mid-block) and prefill chunks: from position 0, starting
# mid-block after earlier context, and one longer than a query tile (multi-tile rows).
MIXED_NQ = [1, 20, 1, 33, 1, 70, 5]
MIXED_CTX = [1, 37, 16, 33, 45, 90, 100]


def naive_attention(batch, scale=None) -> torch.Tensor:
    """Per row, per query position: explicit fp64 softmax over positions 0..p."""
    t, hq, d = batch.q.shape
    hkv = batch.keys[0].shape[1]
    scale = d ** -0.5 if scale is None else scale
    out = torch.empty(t, hq, d, dtype=torch.float64)
    cu = batch.cu_q.tolist()
    for r, (keys, values) in enumerate(zip(batch.keys, batch.values)):
        n, ctx = cu[r + 1] - cu[r], len(keys)
        for i in range(n):
            p = ctx - n + i
            for h in range(hq):
                k = keys[:p + 1, h // (hq // hkv)].double()  # [p+1, D]
                v = values[:p + 1, h // (hq // hkv)].double()
                s = k @ batch.q[cu[r] + i, h].double().cpu() * scale
                w = torch.exp(s - s.max())
                out[cu[r] + i, h] = (w / w.sum()) @ v
    return out


def test_write_kv_skips_negative_slots():
    k_cache = torch.zeros(2, 4, 1, 2)
    v_cache = torch.zeros(2, 4, 1, 2)
    k = torch.arange(6.0).view(3, 1, 2)
    write_kv(k_cache, v_cache, k, -k, torch.tensor([5, -1, 0]))
    assert torch.equal(k_cache[1, 1, 0], k[0, 0]) and torch.equal(v_cache[0, 0, 0], -k[2, 0])
    written = (k_cache != 0).any(-1).flatten().nonzero().flatten().tolist()
    assert written == [0, 5]  # slot 5 holds [0, 1] (one zero), slot 0 [4, 5]; token 1 nowhere


@pytest.mark.parametrize("hq,hkv,d,block_size", [(4, 2, 32, 16), (8, 1, 16, 4), (2, 2, 8, 8)])
def test_reference_matches_naive(hq, hkv, d, block_size):
    batch = make_batch(MIXED_NQ, MIXED_CTX, hq=hq, hkv=hkv, d=d, block_size=block_size,
                       seed=hq + d)
    assert rel_err(paged_attention_reference(*batch.args), naive_attention(batch)) < 1e-5
    scale = 0.3
    out = paged_attention_reference(*batch.args, scale=scale)
    assert rel_err(out, naive_attention(batch, scale)) < 1e-5


@needs_triton
@pytest.mark.parametrize("hq,hkv,d,block_size", [(4, 2, 32, 16), (8, 1, 64, 16), (8, 2, 32, 32)])
def test_triton_mixed_rows_match_reference(hq, hkv, d, block_size):
    batch = make_batch(MIXED_NQ, MIXED_CTX, hq=hq, hkv=hkv, d=d, block_size=block_size,
                       seed=block_size + d)
    ref = paged_attention_reference(*batch.args)
    assert rel_err(paged_attention_triton(*batch.args), ref) < 1e-5
    # a KV tile smaller than a cache block, and one spanning several blocks; every key tile
    # masked (the decode default) as well as mask-free tiles below the diagonal
    for tuning in (dict(block_n=16), dict(unmasked_bulk=False)):
        assert rel_err(paged_attention_triton(*batch.args, **tuning), ref) < 1e-5, tuning


@needs_triton
def test_triton_split_k_on_prefill_rows():
    """Split-K is a decode default, but must hold where early queries see no keys of a split."""
    batch = make_batch(MIXED_NQ, MIXED_CTX, hq=4, hkv=2, d=32, block_size=16, seed=5)
    out = paged_attention_triton(*batch.args, num_splits=4, block_n=16)
    assert rel_err(out, paged_attention_reference(*batch.args)) < 1e-5


@needs_triton
@pytest.mark.parametrize("num_splits", [None, 1, 2, 8])
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 32), (8, 1, 64)])
def test_triton_decode_rows_match_reference(hq, hkv, d, num_splits):
    ctx = [1, 16, 17, 45, 130]
    batch = make_batch([1] * len(ctx), ctx, hq=hq, hkv=hkv, d=d, block_size=16, seed=d)
    ref = paged_attention_reference(*batch.args)
    for bulk in (False, True):
        out = paged_attention_triton(*batch.args, num_splits=num_splits, block_n=16,
                                     unmasked_bulk=bulk)
        assert rel_err(out, ref) < 1e-5


@needs_triton
def test_triton_fp16_and_custom_scale():
    batch = make_batch(MIXED_NQ, MIXED_CTX, hq=4, hkv=2, d=32, block_size=16,
                       dtype=torch.float16, seed=3)
    out = paged_attention_triton(*batch.args, scale=0.1)
    assert out.dtype == torch.float16
    assert rel_err(out, paged_attention_reference(*batch.args, scale=0.1)) < 2e-3


# ---------------------------------------------------------------------------------------------
# GPU: real shapes (Hq 64, Hkv 8, D 128), bf16, compiled Triton. Run with `pytest -m gpu`.

def _real_batch(n_q, ctx, block_size, dtype=torch.bfloat16, seed=0):
    return make_batch(n_q, ctx, hq=64, hkv=8, d=128, block_size=block_size, dtype=dtype,
                      device="cuda", seed=seed)


def _decode_ctx(rows: int, seed: int) -> list[int]:
    return torch.randint(512, 4097, (rows,), generator=torch.Generator().manual_seed(seed)).tolist()


def _assert_close_per_token(out, ref, tol):
    assert not out.isnan().any()
    per_token = (out.float() - ref.float()).norm(dim=(1, 2)) / ref.float().norm(dim=(1, 2))
    assert float(per_token.max()) < tol, f"worst token {int(per_token.argmax())}"


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("block_size", [16, 32])
def test_gpu_triton_mixed_batch_bf16(block_size):
    """64 decode rows + one 2048-token prefill chunk whose context starts mid-block."""
    ctx = _decode_ctx(64, block_size) + [2048 + 1003]
    batch = _real_batch([1] * 64 + [2048], ctx, block_size, seed=block_size)
    ref = paged_attention_reference(*batch.args)
    for tuning in ({}, dict(block_n=64, num_stages=3), dict(unmasked_bulk=False)):
        out = paged_attention_triton(*batch.args, **tuning)
        assert rel_err(out, ref) < 1e-2, tuning
        _assert_close_per_token(out, ref, 2e-2)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("num_splits", [None, 1, 4, 16])
def test_gpu_triton_decode_bf16(num_splits):
    batch = _real_batch([1] * 64, _decode_ctx(64, 7), 16, seed=7)
    ref = paged_attention_reference(*batch.args)
    for bulk in (False, True):
        out = paged_attention_triton(*batch.args, num_splits=num_splits, unmasked_bulk=bulk)
        assert rel_err(out, ref) < 1e-2
        _assert_close_per_token(out, ref, 2e-2)


@pytest.mark.gpu
@needs_triton
def test_gpu_triton_fp32_is_exact_fp32():
    batch = _real_batch([1, 1, 300, 1], [700, 33, 1200, 4096], 32, dtype=torch.float32)
    out = paged_attention_triton(*batch.args)
    assert rel_err(out, paged_attention_reference(*batch.args)) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not flash_attn_available(), reason="flash_attn is not installed")
def test_gpu_flash_matches_reference():
    batch = _real_batch([1] * 8 + [700], _decode_ctx(8, 3) + [1500], 256, seed=3)
    out = paged_attention_flash(*batch.args)
    assert rel_err(out, paged_attention_reference(*batch.args)) < 1e-2
