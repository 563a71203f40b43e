"""Where a step's time goes, at the real 34B shape (random weights): the skinny GEMMs of a
decode step at each weight shape against the bytes roofline, and the top kernels of one eager
decode step and one prefill chunk under the torch profiler.

    python -m benchmarks.profile_step [--rows 2] [--prefill 4096] [--ctx 8192]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import mean_s_back_to_back
from services.engine.runner import ModelRunner, StepInput

from . import common


def gemm_table(cfg, ceil: common.Ceilings, rows_list) -> None:
    shapes = {"qkv": (cfg.q_size + 2 * cfg.kv_size, cfg.hidden_size),
              "o": (cfg.hidden_size, cfg.q_size),
              "gate_up": (2 * cfg.intermediate_size, cfg.hidden_size),
              "down": (cfg.hidden_size, cfg.intermediate_size),
              "lm_head": (cfg.vocab_size, cfg.hidden_size)}
    print("| weight | rows | us | roofline us | ratio |\n|---|---|---|---|---|")
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        for m in rows_list:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            t = mean_s_back_to_back(lambda: F.linear(x, w), iters=50)
            roof = (n * k + m * (n + k)) * 2 / ceil.copy_bytes_per_s
            print(f"| {name} | {m} | {t * 1e6:.1f} | {roof * 1e6:.1f} | {roof / t:.3f} |")
        del w
    torch.cuda.empty_cache()


def top_kernels(fn, title: str, n: int = 18) -> None:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(f"\n## {title}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=70))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=4096)
    ap.add_argument("--ctx", type=int, default=8192)
    args = ap.parse_args(argv)
    ceil = common.measure_ceilings()
    tok = common.load_tokenizer(args.tokenizer)
    cfg = common.emu35_34b_config(tok.vocab_size)
    gemm_table(cfg, ceil, [2, 16, 64, 4096])
    model = common.random_model(cfg)
    bs, ctx, t = 16, args.ctx, args.prefill
    runner = ModelRunner(model, ctx // bs * max(args.rows, 1) + 8, bs)
    rows = args.rows
    tables = [list(range(r * (ctx // bs), (r + 1) * (ctx // bs))) for r in range(rows)]
    decode = StepInput([5] * rows, [511] * rows, [tb[31] * bs + 15 for tb in tables],
                       list(range(rows + 1)), [512] * rows, tables, list(range(rows)))
    top_kernels(lambda: runner.execute(decode), f"eager decode, {rows} rows at ctx 512")
    table = tables[0]
    prefill = StepInput([7] * t, list(range(ctx - t, ctx)),
                        [table[p // bs] * bs + p % bs for p in range(ctx - t, ctx)],
                        [0, t], [ctx], [table], [t - 1])
    watch = common.Stopwatch()
    runner.execute(prefill)
    sec = watch.stop()
    flops = 2.0 * common.matmul_params(model) * t + common.attention_flops(cfg, t, ctx)
    print(f"\nprefill chunk {t} tokens ending at ctx {ctx}: {sec * 1e3:.1f} ms, "
          f"{flops / sec / 1e12:.0f} TFLOP/s = {flops / sec / ceil.matmul_flops:.3f} of matmul "
          f"(attention {common.attention_flops(cfg, t, ctx) / flops:.2%} of FLOPs)")
    top_kernels(lambda: runner.execute(prefill), f"prefill chunk {t} at ctx {ctx}")


if __name__ == "__main__":
    main()
