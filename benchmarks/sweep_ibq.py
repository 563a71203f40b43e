"""IBQ at the released shape (random bf16 weights), 1024x1024: striped-forward variants in one run.

For each variant: encode and decode ms/image and extra peak GiB (max_memory_allocated minus what
was allocated before, as bench_ibq) at batch 1, 2, 4; the max abs difference of its encoder
latents and decoder pixels from the plain (unstriped) bf16 forward at batch 2; its ratio to the
FLOP floor at the measured bf16 matmul rate (kernels/NOTES.md, IBQ). Also the two quantizers
alone (fp32 argmax vs bf16 window screen) and whether their codes agree. Table last.

    PYTHONPATH=. python -m benchmarks.sweep_ibq [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from services.model.ibq import VisionTokenizer
from services.model.ibq.model import IBQ
from services.model.ibq.quantize import quantize_argmax, quantize_screened

from .bench_ibq import measure, released_config
from .common import Ceilings, measure_ceilings
from .ibq_floor import decode_flops, encode_flops

MIB = 1 << 20
# name -> (StripPlan options, screened quantizer, cudnn.benchmark). "old-default" is the default
# before the fused conv epilogue and the explicit attention (strip16/strip64/cudnn-bench: no
# gain on 2026-11-30, dropped to fit one call).
OLD = dict(fused_epilogue=False, attention="module")
VARIANTS = {
    "pr1-layout": (dict(level_bytes=None, group_bytes=None, subpixel=False, **OLD), False, False),
    "old-default": (OLD, True, False),
    "unfused-epi": (dict(fused_epilogue=False), True, False),
    "sdpa-attn": (dict(attention="module"), True, False),
    "default": (dict(), True, False),
    "keep-all": (dict(level_bytes=None), True, False),
    "level900": (dict(level_bytes=900 * MIB), True, False),
}


def _configure(model: IBQ, options: dict, screened: bool, bench: bool) -> None:
    options = dict(options)
    model.strip_bytes = options.pop("strip_bytes", 32 * MIB)
    model.strip_options = options
    model.screened, model.striped = screened, None
    torch.backends.cudnn.benchmark = bench


def _measure(fn, iters: int) -> tuple[float, float]:
    """(median seconds, extra peak GiB) after one warm-up call."""
    t, extra = measure(fn, iters)
    return t, extra / 2**30


def _max_diff(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (got.float() - ref.float()).abs().max().item()
    return d, d / max(ref.float().abs().max().item(), 1e-30)


@torch.inference_mode()
def sweep(quick: bool = False, device: str = "cuda", cfg=None, side: int | None = None,
          iters: int | None = None) -> dict:
    """Run every variant; ``device``/``cfg``/``side``/``iters`` let the CPU tests run it on a
    tiny model, timing each call once."""
    iters = iters or (2 if quick else 3)
    side = side or (256 if quick else 1024)
    batches = (1, 2) if quick else (1, 2, 4)
    ceil = measure_ceilings() if device == "cuda" else Ceilings(4.28e12, 790e12)
    cfg = cfg or released_config()
    enc_floor = sum(v for k, v in encode_flops(cfg, side, side).items() if "quantizer" not in k)
    dec_floor = sum(decode_flops(cfg, side, side).values())
    floor_ms = {"encode": enc_floor / ceil.matmul_flops * 1e3,
                "decode": dec_floor / ceil.matmul_flops * 1e3}
    print(f"ceilings: {ceil.matmul_flops / 1e12:.0f} TFLOP/s bf16, "
          f"{ceil.copy_bytes_per_s / 1e12:.2f} TB/s; FLOP floors encode {floor_ms['encode']:.1f}"
          f" ms (+ quantizer), decode {floor_ms['decode']:.1f} ms", flush=True)
    torch.manual_seed(0)
    vision = VisionTokenizer(IBQ(cfg), device=device, dtype=torch.bfloat16)
    model = vision.model
    gen = torch.Generator(device=device).manual_seed(1)
    f = cfg.downsample_factor
    pixels = {b: torch.rand(b, 3, side, side, device=device, generator=gen) * 2 - 1
              for b in batches}
    codes = {b: torch.randint(0, cfg.n_embed, (b, side // f, side // f), device=device,
                              generator=gen) for b in batches}
    codes_cpu = {b: c.cpu() for b, c in codes.items()}
    # The plain bf16 forward at batch 2: what every variant must reproduce.
    x2 = pixels[2].bfloat16()
    model.striped = False
    ref_latents = model.encode_latents(x2)
    ref_pixels = model.decode_codes(codes[2])
    out = {"ceilings": vars(ceil), "floor_ms": floor_ms, "rows": [], "quantizer": {}}

    book = model.quantize.embedding.weight
    z = ref_latents.float()
    t_exact, _ = _measure(lambda: quantize_argmax(z[:1], book), iters)
    t_screen, mem_screen = _measure(lambda: quantize_screened(z[:1], book), iters)
    exact, screened = quantize_argmax(z, book), quantize_screened(z, book)
    out["quantizer"] = dict(fp32_ms=t_exact * 1e3, screened_ms=t_screen * 1e3,
                            screened_extra_gib=mem_screen,
                            differing_codes=int((exact != screened).sum()))
    print("quantizer:", out["quantizer"], flush=True)

    for name, (options, use_screen, bench) in VARIANTS.items():
        _configure(model, options, use_screen, bench)
        model.striped = True  # also off CUDA (the CPU test)
        lat_diff = _max_diff(model.encode_latents(x2), ref_latents)
        pix_diff = _max_diff(model.decode_codes(codes[2]), ref_pixels)
        for b in batches:
            for op, fn in (("encode", lambda: vision.encode(pixels[b])),
                           ("decode", lambda: vision.decode(codes_cpu[b]))):
                t, extra = _measure(fn, iters)
                row = dict(variant=name, op=op, batch=b, ms_per_image=t * 1e3 / b,
                           extra_gib=extra, extra_gb=extra * 2**30 / 1e9,
                           floor_ratio=floor_ms[op] / (t * 1e3 / b),
                           max_abs_diff=(lat_diff if op == "encode" else pix_diff)[0],
                           rel_diff=(lat_diff if op == "encode" else pix_diff)[1])
                out["rows"].append(row)
                print(row, flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    return out


def _table(result: dict) -> str:
    lines = ["| variant | op | batch | ms/img | extra GiB | floor/t | max|d| (rel) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['op']} | {r['batch']} | {r['ms_per_image']:.1f} | "
                     f"{r['extra_gib']:.3f} | {r['floor_ratio']:.2f} | "
                     f"{r['max_abs_diff']:.3g} ({r['rel_diff']:.2g}) |")
    q = result["quantizer"]
    lines.append(f"quantizer 1 image: fp32 {q['fp32_ms']:.2f} ms, screened {q['screened_ms']:.2f}"
                 f" ms ({q['screened_extra_gib']:.3f} GiB), differing codes at batch 2: "
                 f"{q['differing_codes']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256x256, batch 1-2 (smoke test)")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."),
                                                       "sweep_ibq.json"))
    args = parser.parse_args()
    result = sweep(args.quick)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(_table(result))


if __name__ == "__main__":
    main()
