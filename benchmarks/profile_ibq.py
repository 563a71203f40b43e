"""Where IBQ's time goes at 1024x1024 bf16, batch 1: the top CUDA kernels of one encode and
one decode under the torch profiler, per striped-forward variant (benchmarks/sweep_ibq.py).

    PYTHONPATH=. python -m benchmarks.profile_ibq [--variants old-default default]
"""
from __future__ import annotations

import argparse

import torch

from services.model.ibq import VisionTokenizer
from services.model.ibq.model import IBQ

from .bench_ibq import released_config
from .profile_step import top_kernels
from .sweep_ibq import VARIANTS, _configure


@torch.inference_mode()
def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["old-default", "default"])
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    vision = VisionTokenizer(IBQ(released_config()), device="cuda", dtype=torch.bfloat16)
    pixels = torch.rand(1, 3, 1024, 1024, device="cuda") * 2 - 1
    codes = torch.randint(0, 131072, (1, 64, 64))
    for name in args.variants:
        options, screened, bench = VARIANTS[name]
        _configure(vision.model, options, screened, bench)
        vision.model.striped = True
        top_kernels(lambda: vision.encode(pixels), f"{name} encode")
        top_kernels(lambda: vision.decode(codes), f"{name} decode")


if __name__ == "__main__":
    main()
