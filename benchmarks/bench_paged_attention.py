"""Paged-attention micro-benchmark (CUDA): Triton kernel vs the bytes-read roofline.

    PYTHONPATH=. python -m benchmarks.bench_paged_attention [--quick]

Decode reads each row's K and V once per KV head, so its floor is
``(K + V + q + out bytes) / copy bandwidth``, the bandwidth measured here with a large
device-to-device copy (bytes read plus written, DESIGN.md §6). A mixed prefill step is
compared with ``attention FLOPs / bf16 matmul rate``, measured here too. Prints one table;
with ``$OUT`` set, also writes the rows as JSON there.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

import torch
import triton

from benchmarks.timing import Row, copy_bandwidth, matmul_rate, median_us
from kernels.paged_attention import paged_attention_reference, paged_attention_triton

HQ, HKV, D = 64, 8, 128


def paged_inputs(n_q, ctx, block_size, sets=1, seed=0):
    """``sets`` independent batches (block tables into disjoint blocks of one cache), so that
    rotating through them defeats L2 for small workloads."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    need = [-(-c // block_size) for c in ctx]
    total = sum(need) * sets
    shape = (total, block_size, HKV, D)
    k_cache = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    v_cache = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    perm = torch.randperm(total, device="cuda", generator=gen).int()
    cu_q = torch.tensor([0] + n_q, device="cuda").cumsum(0).int()
    ctx_t = torch.tensor(ctx, device="cuda", dtype=torch.int32)
    batches, used = [], 0
    for _ in range(sets):
        tables = torch.zeros(len(ctx), max(need), device="cuda", dtype=torch.int32)
        for r, n in enumerate(need):
            tables[r, :n] = perm[used:used + n]
            used += n
        q = torch.randn(sum(n_q), HQ, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        batches.append((q, k_cache, v_cache, cu_q, ctx_t, tables))
    return batches


def _rotating(fn, batches, **kw):
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(batches)
        return fn(*batches[state["i"]], **kw)
    return call


def graph_us(batches, **kw) -> float:
    """Per-call time from replaying a CUDA graph of one call per batch (no launch gaps)."""
    for b in batches:
        paged_attention_triton(*b, **kw)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for b in batches:
            paged_attention_triton(*b, **kw)
    return median_us(graph.replay) / len(batches)


# (label, tuning overrides, through a CUDA graph?) per decode workload; results so far are
# in kernels/NOTES.md.
DECODE_VARIANTS = {
    "long": [("default", {}, False), ("splits=2", dict(num_splits=2), False),
             ("unmasked_bulk", dict(unmasked_bulk=True), False), ("default", {}, True)],
    "small": [("default", {}, False), ("splits=1", dict(num_splits=1), False),
              ("default", {}, True), ("splits=1", dict(num_splits=1), True),
              ("splits=4", dict(num_splits=4), True)],
    "few": [("default", {}, False), ("splits=1", dict(num_splits=1), False),
            ("splits=4", dict(num_splits=4), False), ("splits=16", dict(num_splits=16), False)],
}


def bench_decode(rows, ctx, block_size, bandwidth, variants, reference=True) -> list[Row]:
    sets = max(1, (256 << 20) // (rows * ctx * HKV * D * 4))  # >= 256 MiB touched in rotation
    batches = paged_inputs([1] * rows, [ctx] * rows, block_size, sets=min(sets, 64))
    kv_bytes = rows * ctx * HKV * D * 2 * 2
    qo_bytes = 2 * rows * HQ * D * 2
    floor = (kv_bytes + qo_bytes) / bandwidth * 1e6
    name = f"decode {rows}x{ctx} bs{block_size}"
    out = []
    for variant, kw, graph in variants:
        us = (graph_us(batches[:16], **kw) if graph
              else median_us(_rotating(paged_attention_triton, batches, **kw)))
        out.append(Row(name, variant + (", graph" if graph else ""), us, floor))
    if reference:
        out.append(Row(name, "reference", median_us(
            _rotating(paged_attention_reference, batches), rep_ms=100), floor))
    return out


def bench_mixed(block_size, flops_rate, quick) -> list[Row]:
    """64 decode rows (ctx 2048) + one 2048-token prefill chunk at ctx 4096: one call, and the
    same rows as two calls (decode rows, then the chunk) as an engine could issue them."""
    n_q, ctx = [1] * 64 + [2048], [2048] * 64 + [4096]
    (batch,) = paged_inputs(n_q, ctx, block_size)
    q, kc, vc, cu_q, ctx_t, tables = batch
    decode = (q[:64], kc, vc, cu_q[:65], ctx_t[:64], tables[:64])
    chunk = (q[64:], kc, vc, cu_q[64:] - 64, ctx_t[64:], tables[64:])
    visible = 64 * 2048 + sum(4096 - 2048 + i + 1 for i in range(2048))
    floor = 4 * HQ * D * visible / flops_rate * 1e6
    name = f"mixed 64x2048+2048@4096 bs{block_size}"
    variants = [("default", {})] + ([] if quick else [
        ("unmasked_bulk=0", dict(unmasked_bulk=False)),
        ("block_n=64,st3", dict(block_n=64, num_stages=3)),
        ("block_n=128,st3", dict(block_n=128, num_stages=3)),
        ("block_n=128,w4", dict(block_n=128, num_warps=4, num_stages=2))])
    rows = [Row(name, v, median_us(lambda: paged_attention_triton(*batch, **kw)), floor)
            for v, kw in variants]
    chunk_floor = 4 * HQ * D * (visible - 64 * 2048) / flops_rate * 1e6
    rows.append(Row(name, "two calls", median_us(lambda: (paged_attention_triton(*decode),
                                                          paged_attention_triton(*chunk))), floor))
    rows.append(Row("prefill 2048@4096 alone", "default",
                    median_us(lambda: paged_attention_triton(*chunk)), chunk_floor))
    rows.append(Row(name, "reference", median_us(lambda: paged_attention_reference(*batch),
                                                  rep_ms=100), floor))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default variants only")
    args = parser.parse_args()
    torch.manual_seed(0)
    bw, rate = copy_bandwidth(rep_ms=200), matmul_rate(rep_ms=200)
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s, "
          f"bf16 matmul {rate / 1e12:.0f} TFLOP/s, triton {triton.__version__}")
    pick = (lambda v: v[:1]) if args.quick else (lambda v: v)
    rows = (bench_decode(64, 2048, 16, bw, pick(DECODE_VARIANTS["long"]))
            + bench_decode(2, 512, 16, bw, pick(DECODE_VARIANTS["small"]))
            + bench_decode(8, 8192, 16, bw, pick(DECODE_VARIANTS["few"]), reference=False)
            + bench_decode(64, 2048, 32, bw, DECODE_VARIANTS["long"][:1], reference=False)
            + bench_mixed(16, rate, args.quick))
    print(f"{'workload':<32} {'variant':<18} {'us':>9} {'floor us':>9} {'x floor':>8}")
    for r in rows:
        print(f"{r.workload:<32} {r.variant:<18} {r.us:9.1f} {r.floor_us:9.1f} {r.ratio:8.2f}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_paged_attention.json"), "w") as f:
            json.dump({"copy_Bps": bw, "matmul_flops": rate,
                       "rows": [asdict(r) | {"ratio": r.ratio} for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
