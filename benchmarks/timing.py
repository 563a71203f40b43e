"""Timing shared by the benchmarks: the median time of a call, the device's measured copy
bandwidth and bf16 matmul rate (the ceilings every roofline figure is judged against, taken in
the same run), and the time of a call replayed from a CUDA graph. Triton is imported only for
CUDA timings, so CPU smoke runs never import it."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Row:
    """One timed variant of a workload against its floor."""

    workload: str
    variant: str
    us: float
    floor_us: float

    @property
    def ratio(self) -> float:
        return self.us / self.floor_us


def median_us(fn, device="cuda", reps: int = 5, rep_ms: float = 100, warmup: int = 25) -> float:
    """Median microseconds of one call: triton.testing.do_bench (L2 flushed per call) on CUDA,
    else wall-clock time over ``reps`` calls."""
    if torch.device(device).type == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=warmup, rep=rep_ms, return_mode="median") * 1e3
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def mean_s_back_to_back(fn, iters: int, warmup: int = 3) -> float:
    """Mean seconds per call over ``iters`` calls launched back to back between two CUDA
    events (no L2 flush): the higher, stricter ceiling the engine benchmark is judged by."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def copy_bandwidth(device="cuda", numel: int | None = None, rep_ms: float = 100) -> float:
    """Bytes per second of a large bf16 copy (2 GiB on CUDA), counting read plus written."""
    if numel is None:
        numel = (1 << 30) if torch.device(device).type == "cuda" else (1 << 24)
    src = torch.randn(numel, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), device, rep_ms=rep_ms)
    return 2 * src.numel() * src.element_size() / (us * 1e-6)


def matmul_rate(device="cuda", rep_ms: float = 100) -> float:
    """FLOP/s of a bf16 8192^3 matrix product on random data."""
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * 8192 ** 3 / (median_us(lambda: a @ b, device, rep_ms=rep_ms) * 1e-6)


def cuda_graph_time(fn, iters: int = 20) -> float:
    """Seconds per call of ``fn`` replayed from a CUDA graph of ``iters`` calls, as a decode
    step's kernels run (no CPU launch cost)."""
    fn()  # compile / choose algorithms outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    return mean_s_back_to_back(graph.replay, iters=5, warmup=1) / iters
