"""Fused elementwise kernels vs the unfused torch reference ops, against the bytes roofline.

    PYTHONPATH=. python -m benchmarks.bench_fused_norm [--smoke]

For each op and T = 2, 64, 4096 rows at the real sizes (hidden 5120; QKV of 64 + 2 x 8 heads
of 128; FFN 25600; bf16) it prints the median time of the fused Triton kernel and of the
torch reference, launched eagerly and replayed from a CUDA graph (how a decode step runs, with
no host launch cost), the roofline time = bytes the op must read and write / copy bandwidth
measured in this run (DESIGN.md §6), and their ratio. Small workloads rotate through up to 32
input sets (T=2 still fits in L2; it is launch-bound). With ``$OUT`` set, also writes the rows
as JSON there. ``--smoke`` runs tiny shapes on the CPU (Triton interpreted) to check the
script, timings meaningless.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass

import torch

from benchmarks.timing import copy_bandwidth, median_us

EPS = 1e-5


@dataclass(frozen=True)
class Sizes:
    hidden: int
    hq: int
    hkv: int
    head_dim: int
    ffn: int
    rows: tuple[int, ...]


REAL = Sizes(5120, 64, 8, 128, 25600, (2, 64, 4096))
SMOKE = Sizes(256, 4, 2, 32, 384, (2, 5))


@dataclass
class Workload:
    """One op at one T: its input sets (rotated through) and the bytes it must move."""

    op: str
    rows: int
    nbytes: int
    sets: list[tuple]


@dataclass
class Row:
    op: str
    rows: int
    impl: str
    mode: str
    us: float
    floor_us: float

    @property
    def ratio(self) -> float:
        return self.us / self.floor_us


def _num_sets(nbytes: int) -> int:
    return max(1, min(32, (256 << 20) // nbytes))


def workloads(s: Sizes, device) -> list[Workload]:
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    def weight(n):
        return 1.0 + 0.1 * rand(n)

    d, heads, qkv_width = s.head_dim, s.hq + s.hkv, (s.hq + 2 * s.hkv) * s.head_dim
    cos, sin = rand(4096, d, dtype=torch.float32), rand(4096, d, dtype=torch.float32)
    out = []
    for t in s.rows:
        # bytes: every input row read once and every output written once, weights once
        norm_bytes = 2 * t * s.hidden * 2 + s.hidden * 2
        add_bytes = 4 * t * s.hidden * 2 + s.hidden * 2
        qk_bytes = 2 * t * heads * d * 2 + t * (2 * d * 4 + 8) + 2 * d * 2
        silu_bytes = 3 * t * s.ffn * 2
        out += [
            Workload("add_rms_norm", t, add_bytes, [
                (rand(t, s.hidden), rand(t, s.hidden), weight(s.hidden), EPS)
                for _ in range(_num_sets(add_bytes))]),
            Workload("rms_norm", t, norm_bytes, [
                (rand(t, s.hidden), weight(s.hidden), EPS) for _ in range(_num_sets(norm_bytes))]),
            Workload("qk_norm_rope", t, qk_bytes, [
                (rand(t, qkv_width), weight(d), weight(d), cos, sin,
                 torch.randint(0, 4096, (t,), device=device, generator=gen), s.hq, s.hkv, d, EPS)
                for _ in range(_num_sets(qk_bytes))]),
            Workload("silu_mul", t, silu_bytes, [
                (rand(t, 2 * s.ffn),) for _ in range(_num_sets(silu_bytes))]),
        ]
    return out


def _rotating(fn, sets):
    state = {"i": 0}

    def call():
        state["i"] = (state["i"] + 1) % len(sets)
        return fn(*sets[state["i"]])
    return call


def graph_us(fn, sets, device) -> float:
    """Per-call time from replaying a CUDA graph of one call per input set."""
    for args in sets:
        fn(*args)  # compile and warm the allocator outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for args in sets:
            fn(*args)
    return median_us(graph.replay, device) / len(sets)


def bench(w: Workload, impls: dict, bandwidth: float, device) -> list[Row]:
    floor = w.nbytes / bandwidth * 1e6
    rows = []
    for impl, ops in impls.items():
        fn = getattr(ops, w.op)
        rows.append(Row(w.op, w.rows, impl, "eager",
                        median_us(_rotating(fn, w.sets), device), floor))
        if device.type == "cuda":
            rows.append(Row(w.op, w.rows, impl, "graph", graph_us(fn, w.sets, device), floor))
    return rows


def print_table(rows: list[Row]) -> None:
    ref = {(r.op, r.rows, r.mode): r.us for r in rows if r.impl == "reference"}
    print(f"{'op':<14} {'T':>5} {'impl':<10} {'mode':<6} {'us':>9} {'floor us':>9} "
          f"{'x floor':>8} {'ref/fused':>9}")
    for r in rows:
        speedup = ref[(r.op, r.rows, r.mode)] / r.us if r.impl == "fused" else 1.0
        print(f"{r.op:<14} {r.rows:>5} {r.impl:<10} {r.mode:<6} {r.us:9.1f} {r.floor_us:9.2f} "
              f"{r.ratio:8.1f} {speedup:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, CPU (Triton interpreted) unless CUDA is present")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        if not args.smoke:
            parser.error("needs CUDA; use --smoke to check the script on the CPU")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
    from kernels.fused_norm import REFERENCE_OPS, triton_ops

    sizes = SMOKE if args.smoke else REAL
    bandwidth = copy_bandwidth(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"
    print(f"{name}: copy {bandwidth / 1e12:.3f} TB/s, torch {torch.__version__}")
    impls = {"fused": triton_ops(), "reference": REFERENCE_OPS}
    rows = [r for w in workloads(sizes, device) for r in bench(w, impls, bandwidth, device)]
    print_table(rows)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_fused_norm.json"), "w") as f:
            json.dump({"device": name, "copy_Bps": bandwidth,
                       "rows": [asdict(r) | {"ratio": r.ratio} for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
