"""Decode layers with and without the decode fusions (kernels.registry.decode_fusion), at the
real 34B widths with random weights: a CUDA graph of N decoder layers' decode forward (paged
attention at context ``--ctx``) at each row count, replayed back to back; ms per layer, the
kernels one layer launches (torch profiler, eager run), and whether both paths give the same
bits (hidden state, residual and KV cache).

    PYTHONPATH=. python -m benchmarks.bench_decode_layers [--layers 8] [--rows 2 16] [--ctx 512]

Without the full model: N layers (~1 GB of bf16 weights each, 8 by default, more than the
L2 holds many times over), a tiny vocabulary. ``--smoke`` runs tiny widths on the CPU (Triton
interpreted, eager, no timing) to check the script.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import cuda_graph_time
from kernels.fused_norm import triton_ops
from services.engine.runner import ModelRunner
from services.model.transformer import ForwardContext

from . import common


def build(layers: int, smoke: bool):
    cfg = common.emu35_34b_config(vocab_size=1024, max_positions=8192)
    if smoke:
        cfg = dataclasses.replace(cfg, hidden_size=64, intermediate_size=512,
                                  num_attention_heads=4, num_key_value_heads=2)
    cfg = dataclasses.replace(cfg, num_hidden_layers=layers)
    return common.random_model(cfg, device="cpu" if smoke else "cuda")


class Decode:
    """One decode step of ``rows`` rows at context ``ctx`` through the model's layers."""

    def __init__(self, model, rows: int, ctx: int, block: int = 16):
        dev, cfg = model.device, model.config
        self.model, self.rows = model, rows
        per_row = -(-ctx // block)
        self.runner = ModelRunner(model, num_blocks=rows * per_row, block_size=block,
                                  attention="triton" if dev.type == "cuda" else "reference")
        gen = torch.Generator(device=dev).manual_seed(rows)
        for kv in self.runner.kv_cache:  # never attend over zeros
            for t in kv:
                t.normal_(0, 1, generator=gen)
        tables = torch.arange(rows * per_row, device=dev, dtype=torch.int32).view(rows, per_row)
        pos = torch.full((rows,), ctx - 1, device=dev)
        slots = tables[:, (ctx - 1) // block].long() * block + (ctx - 1) % block
        self.attn = self.runner.attention_for(
            slots, torch.arange(rows + 1, device=dev, dtype=torch.int32),
            torch.full((rows,), ctx, device=dev, dtype=torch.int32), tables)
        self.pos = pos
        self.h = torch.randn(rows, cfg.hidden_size, device=dev, generator=gen).to(model.dtype)
        self.residual = torch.randn_like(self.h)

    def forward(self, fuse: bool):
        m = self.model
        ctx = ForwardContext(self.pos, m.rope_cos, m.rope_sin, self.attn, triton_ops(), fuse)
        h, residual = self.h, self.residual
        for layer in m.model.layers:
            h, residual = layer(h, residual, ctx)
        return m.model.norm.add_norm(h, residual, ctx.ops)  # sums the last partials

    def cache(self):
        return [t.clone() for kv in self.runner.kv_cache for t in kv]


def kernels_per_layer(fn, layers: int) -> tuple[float, collections.Counter]:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = collections.Counter(e.name for e in prof.events()
                                if e.device_type == torch.autograd.DeviceType.CUDA)
    return (sum(names.values()) - 1) / layers, names  # less the final norm


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rows", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    model = build(args.layers, args.smoke)
    n = args.layers
    table = []
    for rows in args.rows:
        step = Decode(model, rows, args.ctx)
        outs, caches = {}, {}
        for fuse in (False, True):
            outs[fuse] = [t.clone() for t in step.forward(fuse)]
            caches[fuse] = step.cache()
        same = all(torch.equal(a, b) for a, b in zip(outs[False], outs[True])) and all(
            torch.equal(a, b) for a, b in zip(caches[False], caches[True]))
        print(f"rows {rows}: fused == unfused bit for bit: {same}")
        if args.smoke:
            continue
        counts = {}
        for fuse in (False, True):
            counts[fuse], names = kernels_per_layer(lambda: step.forward(fuse), n)
            print(f"  {'fused' if fuse else 'unfused'} kernels per layer {counts[fuse]:.2f}:")
            for name, c in names.most_common():
                print(f"    {c / n:5.2f}  {name[:100]}")
        times = {False: [], True: []}
        for _ in range(3):  # alternate, to see the spread
            for fuse in (False, True):
                times[fuse].append(cuda_graph_time(lambda: step.forward(fuse), args.reps) * 1e3 / n)
        table.append((rows, counts, times, same))
    if args.smoke:
        return
    print(f"\n{n} layers, ctx {args.ctx}, CUDA graph replay, ms per layer (3 alternating runs)")
    print("| rows | kernels/layer unfused -> fused | unfused ms | fused ms | saved/layer us "
          "| x64 layers ms | identical |\n|---|---|---|---|---|---|---|")
    for rows, counts, times, same in table:
        u, f = min(times[False]), min(times[True])
        print(f"| {rows} | {counts[False]:.2f} -> {counts[True]:.2f} | "
              f"{' '.join(f'{t:.4f}' for t in times[False])} | "
              f"{' '.join(f'{t:.4f}' for t in times[True])} | {(u - f) * 1e3:.1f} | "
              f"{(u - f) * 64:.3f} | {same} |")


if __name__ == "__main__":
    main()
