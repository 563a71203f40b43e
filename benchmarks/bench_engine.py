"""The generator on one Hopper GPU at the real 34B architecture (random bf16 weights), in one
run: measured ceilings, IBQ, the reference-style baseline, decode steps, one 1024x1024 t2i
image end to end, x2i prefill and saturation throughput; the results table last.

    python -m benchmarks.bench_engine --tokenizer DIR [--quick] [--json FILE]

Random weights never choose BOI by themselves, so the harness limits text-mode sampling to
BOI (``force_images``): the image's 4,167 tokens then run exactly as a real model's would.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from services.engine.engine import Engine, EngineConfig
from services.engine.events import Finished
from services.engine.request import StopRule, default_request
from services.engine.runner import StepInput
from services.engine.scheduler import SchedulerConfig
from services.model.image_tokens import ImageGrid, image_span_ids
from services.model.prompting import prepare_prompt
from services.model.templates import build_prompts

from . import common
from .baseline import ReferencePath
from .bench_ibq import bench_ibq

IMAGE_1024 = "64*64"  # the 1:1 preset: 4,167 tokens (spec §3)


def force_images(eng: Engine) -> None:
    table, boi = eng.masks.table, eng.tok.special.boi
    table[0].zero_()  # row 0: text where an image may start -> only BOI
    table[0, boi] = 1


class StepLog:
    """Wraps the runner: every step's shape, for the roofline model of the same schedule."""

    def __init__(self, eng: Engine, timed: bool = False):
        self.steps: list[StepInput] = []
        self.seconds: list[float] = []
        self.timed = timed
        self.execute = eng.runner.execute
        eng.runner.execute = self

    def __call__(self, step: StepInput):
        self.steps.append(step)
        if not self.timed:
            return self.execute(step)
        watch = common.Stopwatch()
        out = self.execute(step)
        self.seconds.append(watch.stop())
        return out

    def roofline_s(self, model, ceil: common.Ceilings) -> float:
        """The logged steps at the roofline: each bound by bytes or by FLOPs, whichever is more."""
        cfg, wbytes = model.config, common.streamed_weight_bytes(model)
        params = common.matmul_params(model)
        return sum(max(common.decode_roofline_s(wbytes, cfg.kv_bytes_per_token, s.ctx_lens, ceil),
                       common.step_flops(cfg, params, s) / ceil.matmul_flops)
                   for s in self.steps)


def bench_decode(eng: Engine, model, ceil, rows_list, ctx_list, iters: int) -> list[dict]:
    """Decode-only steps through the runner (graphs when captured), distinct blocks per row."""
    runner, bs = eng.runner, eng.scheduler.pool.block_size
    wbytes, kvb = common.streamed_weight_bytes(model), model.config.kv_bytes_per_token
    out = []
    for ctx in ctx_list:
        for rows in rows_list:
            per_row = -(-ctx // bs)
            if rows * per_row > eng.scheduler.pool.num_blocks:
                out.append(dict(rows=rows, ctx=ctx, skipped="KV cache too small"))
                continue
            tables = [list(range(r * per_row, (r + 1) * per_row)) for r in range(rows)]
            step = StepInput(
                token_ids=[1000 + r for r in range(rows)], positions=[ctx - 1] * rows,
                slots=[t[-1] * bs + (ctx - 1) % bs for t in tables], cu_q=list(range(rows + 1)),
                ctx_lens=[ctx] * rows, block_tables=tables, logits_rows=list(range(rows)))
            for _ in range(3):
                runner.execute(step)
            watch = common.Stopwatch()
            for _ in range(iters):
                runner.execute(step).sum().item()  # the engine reads its tokens every step
            t = watch.stop() / iters
            roof = common.decode_roofline_s(wbytes, kvb, step.ctx_lens, ceil)
            out.append(dict(rows=rows, ctx=ctx, ms=t * 1e3, roofline_ms=roof * 1e3,
                            ratio=roof / t))
    return out


def _run_until_done(eng: Engine, ids: set[str]) -> dict[str, Finished]:
    done = {}
    while eng.has_work():
        for ev in eng.step():
            if isinstance(ev, Finished) and ev.request_id in ids:
                done[ev.request_id] = ev
    return done


def t2i_request(tok, rid: str, seed: int, size: str = IMAGE_1024):
    p = prepare_prompt(tok, "t2i", f"a red fox in the snow, picture {rid}", size=size)
    return default_request(rid, "t2i", p.cond, p.uncond, output_grid=p.output_grid, seed=seed,
                           stop=StopRule.EOI)


def bench_t2i(eng: Engine, tok, size: str) -> dict:
    req = t2i_request(tok, "t2i-single", seed=1, size=size)
    watch = common.Stopwatch()
    eng.add_request(req)
    fin = _run_until_done(eng, {req.request_id})[req.request_id]
    t = watch.stop()
    return dict(seconds=t, tokens=len(fin.token_ids), tokens_per_s=len(fin.token_ids) / t,
                images=fin.usage.images)


def bench_baseline(model, tok, size: str, tokens: int, image_tokens: int) -> dict:
    p = prepare_prompt(tok, "t2i", "a red fox in the snow, picture baseline", size=size)
    ref = ReferencePath(model, tok.special)
    watch = common.Stopwatch()
    ref.prefill(p.cond, p.uncond)
    prefill = watch.stop()
    for _ in range(5):
        ref.step()
    watch = common.Stopwatch()
    for _ in range(tokens):
        ref.step()
    per_token = watch.stop() / tokens
    del ref
    torch.cuda.empty_cache()
    return dict(per_token_ms=per_token * 1e3, measured_tokens=tokens,
                image_seconds=prefill + per_token * image_tokens)


def bench_prefill_x2i(eng: Engine, model, tok, ceil, seed: int = 0) -> dict:
    """Time until the first token of an x2i request with two 1024x1024 references (fresh
    random codes per seed, so the prefix cache holds only the shared system prompt)."""
    g = torch.Generator().manual_seed(seed)
    spans = [image_span_ids(tok, torch.randint(0, tok.special.num_visual, (64, 64), generator=g))
             for _ in range(2)]
    pair = build_prompts(tok, "x2i", "put the fox from the first picture into the second", spans)
    req = default_request(f"x2i-prefill-{seed}", "x2i", pair.cond, pair.uncond,
                          output_grid=ImageGrid(64, 64))
    log = StepLog(eng, timed=True)
    pipelined, eng.config = eng.config, replace(eng.config, pipeline=False)  # the clock stops
    watch = common.Stopwatch()                    # at the first token, not one step later
    eng.add_request(req)
    while not eng.groups[req.request_id].output:
        eng.step()
    t = watch.stop()
    eng.config = pipelined
    eng.runner.execute = log.execute
    eng.abort(req.request_id)
    _run_until_done(eng, set())
    cfg, params = model.config, common.matmul_params(model)
    tokens = sum(len(s.token_ids) for s in log.steps)
    flops = sum(common.step_flops(cfg, params, s, head=False) for s in log.steps)
    steps = [dict(tokens=len(st.token_ids), ctx=st.ctx_lens, ms=round(sec * 1e3, 1))
             for st, sec in zip(log.steps, log.seconds)]
    return dict(prompt_tokens=len(pair.cond) + len(pair.uncond), computed_tokens=int(tokens),
                forward_seconds=sum(log.seconds), steps=steps,
                seconds=t, tflops=flops / t / 1e12, fraction_of_matmul=flops / t / ceil.matmul_flops)


def bench_saturation(eng: Engine, model, tok, ceil, images: int, size: str) -> dict:
    log = StepLog(eng)
    reqs = [t2i_request(tok, f"sat-{i}", seed=100 + i, size=size) for i in range(images)]
    pool, held, used = eng.scheduler.pool, 0, 0
    watch = common.Stopwatch()
    for r in reqs:
        eng.add_request(r)
    done = {}
    while eng.has_work():
        for ev in eng.step():
            if isinstance(ev, Finished):
                done[ev.request_id] = ev
        held = max(held, len(eng.scheduler.running))
        used = max(used, pool.num_used)
    t = watch.stop()
    eng.runner.execute = log.execute
    roof = log.roofline_s(model, ceil)
    return dict(images=len(done), seconds=t, images_per_hour=len(done) / t * 3600,
                roofline_images_per_hour=len(done) / roof * 3600, ratio=roof / t,
                concurrent_images=held, kv_gib_used=used * eng.kv_plan.block_bytes / 2**30,
                steps=len(log.steps), preemptions=sum(f.usage.preemptions for f in done.values()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="the Emu3.5 tokenizer directory")
    ap.add_argument("--quick", action="store_true", help="small image and few iterations")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--utilization", type=float, default=0.95)
    ap.add_argument("--sat-images", type=int, default=32)
    ap.add_argument("--baseline-tokens", type=int, default=200)
    args = ap.parse_args(argv)
    size = "16*16" if args.quick else IMAGE_1024
    res: dict = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"))
    ceil = common.measure_ceilings()
    res["ceilings"] = dict(copy_tb_s=ceil.copy_bytes_per_s / 1e12,
                           matmul_tflops=ceil.matmul_flops / 1e12)
    res["ibq"] = bench_ibq(quick=args.quick)
    tok = common.load_tokenizer(args.tokenizer)
    model = common.random_model(common.emu35_34b_config(tok.vocab_size))
    image_tokens = len(image_span_ids(tok, torch.zeros(64, 64, dtype=torch.long)))
    res["baseline"] = bench_baseline(model, tok, size, 20 if args.quick else args.baseline_tokens,
                                     image_tokens)
    sc = SchedulerConfig(num_blocks=None, max_num_seqs=64, max_batched_tokens=4096,
                         max_waiting=1024)
    eng = Engine(model, tok, EngineConfig(sc, gpu_memory_utilization=args.utilization))
    res["kv"] = dict(blocks=eng.kv_plan.num_blocks, gib=eng.kv_plan.kv_bytes / 2**30,
                     activation_gib=eng.kv_plan.activation_bytes / 2**30)
    force_images(eng)
    res["decode"] = bench_decode(eng, model, ceil, [2, 16, 64], [512, 2048, 4096],
                                 5 if args.quick else 30)
    bench_t2i(eng, tok, "4*4")  # warm-up: first-use compiles of the prefill and sampling paths
    res["t2i"] = bench_t2i(eng, tok, size)
    bench_prefill_x2i(eng, model, tok, ceil, seed=1)  # warm-up: first-use compiles
    res["prefill_x2i"] = bench_prefill_x2i(eng, model, tok, ceil, seed=2)
    res["saturation"] = bench_saturation(eng, model, tok, ceil, 4 if args.quick else args.sat_images,
                                         size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print_table(res)


def print_table(res: dict) -> None:
    c, b, t = res["ceilings"], res["baseline"], res["t2i"]
    print(f"\n== {res['device']} {res['date']}: copy {c['copy_tb_s']:.2f} TB/s, "
          f"bf16 matmul {c['matmul_tflops']:.0f} TFLOP/s; KV {res['kv']['gib']:.1f} GiB")
    print("| decode rows | ctx | ms/step | roofline ms | ratio |\n|---|---|---|---|---|")
    for d in res["decode"]:
        if "skipped" in d:
            print(f"| {d['rows']} | {d['ctx']} | skipped: {d['skipped']} | | |")
        else:
            print(f"| {d['rows']} | {d['ctx']} | {d['ms']:.2f} | {d['roofline_ms']:.2f} | "
                  f"{d['ratio']:.3f} |")
    print(f"| t2i one image | {t['tokens']} tokens | {t['seconds']:.1f} s "
          f"({t['tokens_per_s']:.1f} tok/s) | baseline {b['image_seconds']:.1f} s "
          f"({b['per_token_ms']:.1f} ms/token) | {b['image_seconds'] / t['seconds']:.2f}x |")
    p, s = res["prefill_x2i"], res["saturation"]
    print("x2i prefill steps (tokens, ctx, ms):",
          [(st["tokens"], st["ctx"][:4], st["ms"]) for st in p["steps"]])
    print(f"| x2i prefill | {p['computed_tokens']} tokens | {p['seconds']:.2f} s | "
          f"{p['tflops']:.0f} TFLOP/s | {p['fraction_of_matmul']:.3f} of matmul |")
    print(f"| saturation | {s['images']} images, {s['concurrent_images']} held, "
          f"{s['kv_gib_used']:.1f} GiB KV | {s['images_per_hour']:.0f} img/h | roofline "
          f"{s['roofline_images_per_hour']:.0f} img/h | {s['ratio']:.3f} |")
    for row in res["ibq"]:
        print(f"| IBQ {row['op']} {row['dtype']} {row['layout']} batch {row['batch']} | {row['ms']:.1f} ms "
              f"({row['ms_per_image']:.1f}/image) | extra peak {row['extra_gib']:.2f} GiB | | |")


if __name__ == "__main__":
    main()
