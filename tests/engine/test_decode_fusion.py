"""The fused decode path (kernels.registry.decode_fusion: K/V written by the QK-norm kernel,
SiLU * mul in gate_up's GEMM, split-K partials summed in the next add + RMSNorm) gives the
unfused path's logits and KV cache (KernelChoice.decode_fusion on vs off): bit for bit on CUDA.

CPU: a tiny random model on the fused Triton kernels under TRITON_INTERPRET=1, with the skinny
GEMM allowed off CUDA (it normally runs there only), in fp32 and fp16 (the interpreter's bf16
dot is unusable), through the runner's paged prefill and decode steps; equal within the
measured interpreter bound of tests/kernels/interpreter_tolerance.py (OpenBLAS's summation
order depends on a dot's column in the tile; measured: logits 4.8 eps fp32, 0.45 eps fp16).
``-m gpu``: a mid-size bf16 model through the engine with CUDA graphs, every step's logits
bit-identical.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # must be set before triton.jit decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kernels.linear as linear_mod  # noqa: E402
from kernels.registry import KernelChoice  # noqa: E402
import services.engine.runner as runner_mod  # noqa: E402
from services.engine.runner import ModelRunner, StepInput  # noqa: E402
from services.model.config import Emu35Config  # noqa: E402
from services.model.loader import load_model  # noqa: E402
from services.model.tiny import random_state_dict, write_hf_checkpoint  # noqa: E402
from tests.kernels.interpreter_tolerance import assert_fused_matches  # noqa: E402
from tests.kernels.test_fused_norm import needs_triton  # noqa: E402

# K of o_proj (4 x 128) and down_proj (512) are split four ways by the skinny GEMM's tiles.
FUSE_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                 rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=1024)
BLOCK = 16


def _steps(gen) -> list[StepInput]:
    """A prefill of two rows (6 and 4 tokens, blocks 0 and 1), then three decode steps."""
    lens, tables = [6, 4], [[0], [1]]
    toks = [torch.randint(0, 512, (n + 3,), generator=gen).tolist() for n in lens]
    slot = [lambda p: p, lambda p: BLOCK + p]
    steps = [StepInput(toks[0][:6] + toks[1][:4], list(range(6)) + list(range(4)),
                       [slot[0](p) for p in range(6)] + [slot[1](p) for p in range(4)],
                       [0, 6, 10], [6, 4], tables, [5, 9])]
    for i in range(3):
        pos = [n + i for n in lens]
        steps.append(StepInput([toks[r][pos[r]] for r in range(2)], pos,
                               [slot[r](pos[r]) for r in range(2)], [0, 1, 2],
                               [p + 1 for p in pos], tables, [0, 1]))
    return steps


def _run(model, steps):
    runner = ModelRunner(model, num_blocks=4, block_size=BLOCK)
    logits = [runner.execute(s).cpu() for s in steps]
    return logits, [t.cpu() for kv in runner.kv_cache for t in kv]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_fused_decode_matches_unfused_on_cpu(tmp_path, monkeypatch, dtype):
    cfg = Emu35Config(**FUSE_TINY)
    write_hf_checkpoint(tmp_path, cfg, random_state_dict(cfg, seed=7), max_shard_bytes=1 << 30)
    model = load_model(tmp_path, device="cpu", dtype=dtype)
    calls = {"silu_epilogue": 0, "deferred": 0, "write_kv": 0}
    gemm, gemm_silu = linear_mod._skinny_kernels()

    def deferring_gemm(x, w, defer_split_sum=False):
        out = gemm(x, w, defer_split_sum=defer_split_sum)
        calls["deferred"] += out.dim() == 3
        return out

    def fused_silu(x, w):
        calls["silu_epilogue"] += 1
        return gemm_silu(x, w)

    def cpu_skinny(x, w):  # the CUDA-only gate of kernels.linear, without the device check
        ok = x.dim() == 2 and 0 < x.shape[0] <= linear_mod.MAX_ROWS and x.dtype == w.dtype
        return (deferring_gemm, fused_silu) if ok else None

    real_write = runner_mod.write_kv

    def counting_write(*args, **kw):
        calls["write_kv"] += 1
        return real_write(*args, **kw)

    monkeypatch.setattr(linear_mod, "_skinny", cpu_skinny)
    monkeypatch.setattr(runner_mod, "write_kv", counting_write)
    steps = _steps(torch.Generator().manual_seed(3))
    results = {}
    for flag in ("0", "1"):
        model.use_kernels(KernelChoice(elementwise="triton", decode_fusion=flag == "1"))
        before = dict(calls)
        results[flag] = _run(model, steps)
        used = {k: calls[k] - before[k] for k in calls}
        layers_steps = cfg.num_hidden_layers * len(steps)
        if flag == "1":  # every layer of every step took each fused path
            assert used == {"silu_epilogue": layers_steps, "deferred": 2 * layers_steps,
                            "write_kv": 0}, used
        else:
            assert used == {"silu_epilogue": 0, "deferred": 0, "write_kv": layers_steps}, used
    (ref_logits, ref_cache), (logits, cache) = results["0"], results["1"]
    assert len(logits) == len(ref_logits) and len(cache) == len(ref_cache)
    for got, want in zip(logits + cache, ref_logits + ref_cache):
        assert_fused_matches(got, want, compute_dtype=dtype)  # logits are fp32 at any dtype
    assert all(torch.isfinite(x).all() for x in logits)


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_fused_decode_is_bit_identical_on_cuda(tmp_path, monkeypatch, graphs):
    """Mid-size bf16 model (o_proj and down_proj split K) through the engine."""
    from tests.engine.test_engine_gpu import MID, _checkpoint, _trace

    path = _checkpoint(tmp_path, **{**MID, "intermediate_size": 3072})
    traces = {}
    for flag in ("0", "1"):
        traces[flag] = _trace(path, "cuda", "triton", graphs=graphs,
                              kernels=KernelChoice(decode_fusion=flag == "1"))
    (ref_logits, ref_tokens), (logits, tokens) = traces["0"], traces["1"]
    assert len(logits) == len(ref_logits) > 40
    assert all(torch.equal(a, b) for a, b in zip(ref_logits, logits))
    assert all(torch.equal(a, b) for a, b in zip(ref_tokens, tokens))
