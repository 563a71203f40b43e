"""IBQ vision tokenizer at the released shape (random weights): encode and decode time and
extra peak memory at 1024x1024, batch 1 and 4, fp32 (the reference's dtype) and bf16, with the
tokenizer's defaults (``auto``: the single-image layout at batch 1, the memory-bounded plan for
batches; fp32 argmax quantizer); in bf16 also each layout forced at the other batch sizes, in
the same run. More variants: benchmarks/sweep_ibq.py."""
from __future__ import annotations

import statistics
import time

import torch

from services.model.ibq import VisionTokenizer
from services.model.ibq.config import IBQConfig
from services.model.ibq.model import IBQ, SINGLE_IMAGE_LAYOUT



def released_config() -> IBQConfig:
    """Spec §8 (inferred from the report's 455M parameters): ch 256, ch_mult [1,1,2,2,4],
    4 blocks per level, attention only at the lowest level, 131,072 codes of 256."""
    return IBQConfig(n_embed=131072, embed_dim=256, ch=256, ch_mult=(1, 1, 2, 2, 4),
                     num_res_blocks=4, attn_resolutions=(64,), resolution=1024, z_channels=256)


def measure(fn, iters: int) -> tuple[float, int]:
    """(median seconds, extra peak bytes over what was allocated before; 0 off CUDA) of
    ``fn`` after one warm-up call (cuDNN algorithm choice, Triton compilation)."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) if cuda else 0


# layout name -> StripPlan options (services/model/ibq/strips.py)
LAYOUTS = {"auto": None, "bounded": {}, "single": SINGLE_IMAGE_LAYOUT}


def bench_ibq(quick: bool = False) -> list[dict]:
    side = 256 if quick else 1024
    rows = []
    runs = [(torch.float32, "auto", (1,)), (torch.bfloat16, "auto", (1, 2, 4)),
            (torch.bfloat16, "bounded", (1,)), (torch.bfloat16, "single", (4,))]
    for dtype, layout, batches in runs:
        torch.manual_seed(0)
        vision = VisionTokenizer(IBQ(released_config()), device="cuda", dtype=dtype)
        vision.model.strip_options = LAYOUTS[layout]
        for batch in batches:
            pixels = torch.rand(batch, 3, side, side, device="cuda") * 2 - 1
            codes = torch.randint(0, 131072, (batch, side // 16, side // 16))
            for op, fn in (("encode", lambda: vision.encode(pixels)),
                           ("decode", lambda: vision.decode(codes))):
                t, extra = measure(fn, iters=2 if quick else 5)
                rows.append(dict(op=op, dtype=str(dtype).removeprefix("torch."), batch=batch,
                                 layout=layout,
                                 side=side, ms=t * 1e3, ms_per_image=t * 1e3 / batch,
                                 extra_gib=extra / 2**30))
        del vision
        torch.cuda.empty_cache()
    return rows
