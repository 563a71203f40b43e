"""Sampling micro-benchmark: guided scores + top-k/top-p draw at the real vocabulary, against
the bytes roofline and the sampler it replaced.

    PYTHONPATH=. python -m benchmarks.bench_sampling            # CUDA
    PYTHONPATH=. python -m benchmarks.bench_sampling --smoke    # any device: small V, reference

Workloads (V = 282,926): visual rows with CFG (s = 5, top_k 5120) and text rows without CFG
(top_k 1024, top_p 0.9), R = 2, 16, 64. Floors are bytes / copy bandwidth, the bandwidth
measured in the same run (bytes read plus written, DESIGN.md §6): the guided-scores kernel reads
each stream once and writes the scores; the draw reads the scores once; a whole step at best
reads the logits once. ``legacy`` is the previous sampler (log-softmax CFG on gathered rows, a
[R, V] mask, one topk, full sorts for top-p, softmax and a per-row torch.multinomial with the
request's generator in a Python loop). Image rows (top-k, no top-p) also time the previous
topk draw (``draw topk (previous)``) beside the default (on CUDA the sort-free Triton draw,
:mod:`kernels.triton_draw`, with its tunings as ``draw sort-free ...``); the closing lines
give both per workload. Prints one table; with ``$OUT`` set, also JSON there.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass

import torch

from benchmarks.timing import Row, copy_bandwidth, median_us
from kernels.registry import guided_scores_impl
from kernels.sampling import guided_scores_triton
from kernels.token_draw import NEEDS_EXACT, DrawPlan, draw_tokens, draw_tokens_reference

VOCAB, VISUAL_BASE = 282926, 151854
# Triton guided-scores tunings measured beside the default (CUDA only).
KERNEL_VARIANTS = {"block=1024,w4": dict(block=1024, num_warps=4),
                   "block=4096,w8": dict(block=4096), "4 programs/SM": dict(programs_per_sm=4),
                   "16 programs/SM": dict(programs_per_sm=16)}
# Sort-free Triton draw tunings (kernels.triton_draw) measured beside the default (CUDA only).
DRAW_VARIANTS = {"block=1024": dict(block=1024), "block=4096": dict(block=4096),
                 "2 programs/SM": dict(programs_per_sm=2), "8 programs/SM": dict(programs_per_sm=8)}
TEXT_ROW, VISUAL_ROW = 0, 2  # rows of mask_table


@dataclass(frozen=True)
class Workload:
    name: str
    rows: int
    guided: bool
    top_k: int
    top_p: float


def workloads(sizes=(2, 16, 64)) -> list[Workload]:
    return ([Workload(f"visual cfg R={r}", r, True, 5120, 1.0) for r in sizes]
            + [Workload(f"text R={r}", r, False, 1024, 0.9) for r in sizes])


def mask_table(vocab: int, visual_base: int, device) -> torch.Tensor:
    """uint8 [5, V] shaped like the engine's: text with/without BOI, visual, digits, nonzero."""
    ids = torch.arange(vocab, device=device)
    text = ids < visual_base
    digits = (ids >= 15) & (ids <= 24)
    return torch.stack([text, text & (ids != visual_base - 2), ~text, digits,
                        digits & (ids != 15)]).to(torch.uint8)


def make_inputs(w: Workload, vocab: int, visual_base: int, device, seed=0) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)
    r = w.rows

    def full(value, dtype=torch.float32):
        return torch.full((r,), value, dtype=dtype, device=device)
    return dict(
        cond=3 * torch.randn(r, vocab, device=device, generator=gen),
        uncond=3 * torch.randn(r, vocab, device=device, generator=gen) if w.guided else None,
        guide=full(int(w.guided), torch.int64), scale=full(5.0 if w.guided else 1.0),
        image_scale=full(1.0), allowed=mask_table(vocab, visual_base, device),
        mask_row=full(VISUAL_ROW if w.guided else TEXT_ROW, torch.int64), temperature=full(1.0),
        top_k=full(w.top_k, torch.int64), top_p=full(w.top_p, torch.float64),
        uniforms=torch.rand(r, device=device, dtype=torch.float64, generator=gen),
        plan=DrawPlan.build([w.top_k] * r, [w.top_p] * r, vocab))


def guided(x: dict, impl, **tuning) -> torch.Tensor:
    return impl(x["cond"], x["uncond"], None, x["guide"], x["scale"], x["image_scale"],
                x["allowed"], x["mask_row"], x["temperature"], **tuning)


def new_sample(x: dict, impl) -> list[int]:
    """What services.engine.sampler.sample runs: fused scores, fast draw, one sync."""
    scores = guided(x, impl)
    return draw_tokens(scores, x["top_k"], x["top_p"], x["uniforms"], x["plan"]).tolist()


def legacy_sample(x: dict, generators: list[torch.Generator]) -> list[int]:
    """The previous sampler's semantics and structure, kept as the baseline."""
    cond, uncond, visual = x["cond"], x["uncond"], x["guide"] != 0
    scores = cond
    if uncond is not None and visual.any():
        rows = visual.nonzero().squeeze(1)
        c, u = torch.log_softmax(cond[rows], -1), torch.log_softmax(uncond[rows], -1)
        scores = scores.index_copy(0, rows, x["scale"][rows][:, None] * (c - u) + u)
    scores = scores.masked_fill(x["allowed"][x["mask_row"]] == 0, float("-inf"))
    t = x["temperature"][:, None]
    scores = _legacy_filter(torch.where(t != 1.0, scores / t, scores), x["top_k"], x["top_p"])
    tokens = scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    for row in (x["top_k"] != 1).nonzero().squeeze(1).tolist():
        tokens[row] = torch.multinomial(probs[row], 1, generator=generators[row])[0]
    return tokens.tolist()


def _legacy_filter(scores, top_k, top_p):
    v = scores.shape[-1]
    k_on = (top_k > 0) & (top_k < v)
    if k_on.any():
        k = torch.where(k_on, top_k, torch.ones_like(top_k))
        kth = torch.topk(scores, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        scores = scores.masked_fill(k_on[:, None] & (scores < kth), float("-inf"))
    p_on = top_p < 1.0
    if p_on.any():
        rows = p_on.nonzero().squeeze(1)
        sub = scores[rows]
        ordered, order = torch.sort(sub, descending=True, dim=-1)
        remove = torch.softmax(ordered, dim=-1).cumsum(dim=-1) > top_p[rows][:, None]
        remove[:, 1:] = remove[:, :-1].clone()
        remove[:, 0] = False
        sub = sub.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        scores = scores.index_copy(0, rows, sub)
    return scores


def bench(w: Workload, vocab: int, visual_base: int, device, bw: float, impl, reps: int
          ) -> tuple[list[Row], bool]:
    """Rows for one workload, and whether the fast draws equal the plain path."""
    x = make_inputs(w, vocab, visual_base, device)
    row_bytes = w.rows * vocab * 4
    streams = 2 if w.guided else 1
    scores = guided(x, impl)
    draw_args = (scores, x["top_k"], x["top_p"], x["uniforms"])
    plain = draw_tokens_reference(*draw_args)
    same = all(_draws_plain(draw_tokens(*draw_args, x["plan"], select=select), plain)
               for select in ("torch", "triton" if device == "cuda" else "torch"))
    gens = [torch.Generator(device=device).manual_seed(i) for i in range(w.rows)]

    def floor(nbytes):
        return nbytes / bw * 1e6
    timed = [
        ("guided scores", lambda: guided(x, impl), floor((streams + 1) * row_bytes)),
        ("draw fast", lambda: draw_tokens(*draw_args, x["plan"]), floor(row_bytes)),
        ("draw plain (full sorts)", lambda: draw_tokens_reference(*draw_args), floor(row_bytes)),
        ("sample new (+sync)", lambda: new_sample(x, impl), floor(streams * row_bytes)),
        ("sample legacy (+sync)", lambda: legacy_sample(x, gens), floor(streams * row_bytes)),
    ]
    if x["plan"].select_rows:  # image rows: the previous (topk) draw beside the default
        timed[2:2] = [("draw topk (previous)",
                       lambda: draw_tokens(*draw_args, x["plan"], select="torch"),
                       floor(row_bytes))]
        if device == "cuda":
            timed[2:2] = _draw_variants(x, scores, floor(row_bytes))
    if impl is guided_scores_triton:
        timed[1:1] = [(f"guided scores {name}", lambda kw=kw: guided(x, impl, **kw),
                       timed[0][2]) for name, kw in KERNEL_VARIANTS.items()]
    return [Row(w.name, name, median_us(fn, device, reps, rep_ms=reps * 5, warmup=10), fl)
            for name, fn, fl in timed], same


def _draws_plain(tokens: torch.Tensor, plain: torch.Tensor) -> bool:
    """As the sampler: rows marked NEEDS_EXACT are redone on the plain path."""
    return torch.equal(torch.where(tokens == NEEDS_EXACT, plain, tokens), plain)


def _draw_variants(x: dict, scores: torch.Tensor, floor_us: float) -> list[tuple]:
    from kernels.triton_draw import draw_top_k

    out = torch.zeros(x["uniforms"].shape, dtype=torch.int64, device=scores.device)
    return [(f"draw sort-free {name}",
             lambda kw=kw: draw_top_k(scores, x["top_k"], x["uniforms"], out, **kw), floor_us)
            for name, kw in DRAW_VARIANTS.items()]


def summary(w: Workload, rows: list[Row]) -> str:
    us = {r.variant: r.us for r in rows if r.workload == w.name}
    line = (f"{w.name}: new sampler {us['sample legacy (+sync)'] / us['sample new (+sync)']:.1f}x"
            f" faster than legacy ({us['sample new (+sync)']:.1f} us)")
    if "draw topk (previous)" in us:
        line += (f"; draw {us['draw fast']:.1f} us vs {us['draw topk (previous)']:.1f} us"
                 f" before ({us['draw topk (previous)'] / us['draw fast']:.1f}x)")
    return line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="small vocabulary, few repetitions, any device (CPU: reference)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        parser.error("needs CUDA; use --smoke to check the script on a CPU")
    vocab, visual_base, sizes, reps = ((20000, 10000, (2, 4), 3) if args.smoke
                                       else (VOCAB, VISUAL_BASE, (2, 16, 64), 40))
    torch.manual_seed(0)
    impl = guided_scores_impl(device)
    bw = copy_bandwidth(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"{name}: copy {bw / 1e12:.3f} TB/s, guided scores: {impl.__name__}, V={vocab}")
    rows, all_same = [], True
    for w in workloads(sizes):
        got, same = bench(w, vocab, visual_base, device, bw, impl, reps)
        rows += got
        all_same &= same
    print(f"{'workload':<18} {'variant':<30} {'us':>10} {'floor us':>9} {'x floor':>8}")
    for r in rows:
        print(f"{r.workload:<18} {r.variant:<30} {r.us:10.1f} {r.floor_us:9.1f} {r.ratio:8.2f}")
    for w in workloads(sizes):
        print(summary(w, rows))
    print("fast draw tokens (topk and sort-free paths) equal the plain full-vocabulary path: "
          f"{all_same}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_sampling.json"), "w") as f:
            json.dump({"device": name, "copy_Bps": bw, "tokens_equal_plain": all_same,
                       "rows": [asdict(r) | {"ratio": r.ratio} for r in rows]}, f, indent=1)
    if not all_same:
        raise SystemExit("the fast draw differs from the plain path")


if __name__ == "__main__":
    main()
