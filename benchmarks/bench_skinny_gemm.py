"""Decode GEMMs at the 34B shapes: the skinny kernel (a small tile sweep) against cuBLAS,
each against the bytes roofline from a copy bandwidth measured in the same run. Timed as
CUDA-graph replays, as a decode step runs them (Triton's Python launch cost would otherwise
dominate the small shapes).

    python -m benchmarks.bench_skinny_gemm
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from benchmarks.common import measure_ceilings
from benchmarks.timing import cuda_graph_time
from kernels.skinny_gemm import default_tiles, skinny_gemm

SHAPES = {"qkv": (10240, 5120), "o": (5120, 8192), "gate_up": (51200, 5120),
          "down": (5120, 25600), "lm_head": (282944, 5120)}


def main() -> None:
    bandwidth = measure_ceilings().copy_bytes_per_s
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"copy {bandwidth / 1e12:.2f} TB/s")
    print("| weight | rows | cuBLAS us | ratio | kernel us (default) | ratio | best us | ratio | best tiles |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        for m in (2, 16, 64):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            roof = (n * k + m * (n + k)) * 2 / bandwidth
            t_cublas = cuda_graph_time(lambda: F.linear(x, w))
            t_default = cuda_graph_time(lambda: skinny_gemm(x, w))
            bn, bk, split, stages = default_tiles(m, n, k, sms)
            best = (t_default, (bn, bk, split, 4, stages))
            for bn, bk, split, warps, stages in itertools.product(
                    (32, 64, 128), (128, 256), (1, 2, 4, 8), (4,), (3, 4)):
                if k % (split * bk):
                    continue
                try:
                    t = cuda_graph_time(lambda: skinny_gemm(x, w, block_n=bn, block_k=bk,
                                                            split_k=split, num_warps=warps,
                                                            num_stages=stages), iters=10)
                except Exception:  # out of shared memory for this tile
                    continue
                if t < best[0]:
                    best = (t, (bn, bk, split, warps, stages))
            print(f"| {name} | {m} | {t_cublas * 1e6:.1f} | {roof / t_cublas:.3f} | "
                  f"{t_default * 1e6:.1f} | {roof / t_default:.3f} | {best[0] * 1e6:.1f} | "
                  f"{roof / best[0]:.3f} | {best[1]} |", flush=True)
        del w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
