"""``emu35 generate``: prepare every prompt, run them as one batch, write the results."""
from __future__ import annotations

import time
from pathlib import Path

from .cli import UsageError
from .offline import Progress, PromptItem, load_prompt_file, png_bytes, write_manifest, write_result


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="LLM checkpoint directory")
    p.add_argument("--vision-tokenizer", required=True, help="IBQ directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--task", help="t2i, x2i, howto, story, explore or vla")
    p.add_argument("--prompt", help="the request text")
    p.add_argument("--prompts", help="JSON list / JSON Lines file of prompts, run as one batch")
    p.add_argument("--image", action="append", default=[], help="reference image (repeat)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--aspect", help="auto or a preset: 1:1, 4:3 (default), 16:9, 21:9, 3:2, ...")
    size.add_argument("--size", help="HxW pixels (multiples of 16) or h*w tokens")
    p.add_argument("--cfg", type=float, help="guidance scale (default: the task's)")
    p.add_argument("--seed", type=int, help="sampling seed (default 6666)")
    p.add_argument("--max-new-tokens", type=int, help="token budget (default: the task's)")
    p.add_argument("--out", default="out", help="output directory")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--num-blocks", type=int, default=None,
                   help="KV cache blocks (default: auto, as serve: measured on CUDA, 4096 on CPU)")


def _items(args) -> list[PromptItem]:
    defaults = {"task": args.task, "images": args.image, "size": args.size or args.aspect,
                "seed": args.seed, "cfg": args.cfg, "max_new_tokens": args.max_new_tokens}
    if args.prompts:
        if args.prompt:
            raise UsageError("--prompt and --prompts are exclusive")
        items = load_prompt_file(args.prompts, defaults)
    elif args.prompt is not None:
        items = [PromptItem(name="000", prompt=args.prompt, **defaults)]
    else:
        raise UsageError("--prompt or --prompts is required")
    for item in items:
        if not item.task:
            raise UsageError(f"--task: required (prompt {item.name} names none)")
        for path in item.images:
            if not Path(path).is_file():
                raise UsageError(f"--image: file not found: {path}")
    return items


def _request(item, tok, vision, open_image, max_context: int):
    from services.engine.request import Guidance, default_request, with_budget
    from services.model.prompting import prepare_prompt

    images = [open_image(p) for p in item.images]
    p = prepare_prompt(tok, item.task, item.prompt, images, size=item.size, vision=vision)
    overrides = {"output_grid": p.output_grid}
    if item.seed is not None:
        overrides["seed"] = item.seed
    if item.cfg is not None:
        overrides["guidance"] = Guidance(scale=item.cfg)
    req = default_request(item.name, p.task, p.cond, p.uncond, **overrides)
    req = with_budget(req, item.max_new_tokens, max_context, tok.vocab_size,
                      sum(g.span_length for g in p.reference_grids), item.size is not None)
    return req, [png_bytes(im) for im in images]


def run(args) -> None:
    import torch

    from services.engine.engine import Engine, EngineConfig
    from services.engine.request import RequestError
    from services.engine.scheduler import SchedulerConfig
    from services.model.ibq import VisionTokenizer
    from services.model.loader import load_checkpoint
    from services.model.response import PngImage

    from .cli import _open_image

    items = _items(args)
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise UsageError("--prompts: names must be unique")
    device = torch.device(args.device)
    model, tok = load_checkpoint(args.model, device=device, tokenizer_dir=args.tokenizer)
    vision = VisionTokenizer.from_dir(args.vision_tokenizer, device=device)
    # num_blocks None: auto (services/engine/memory.py); the whole batch queues at once.
    sched = SchedulerConfig(num_blocks=args.num_blocks, max_waiting=max(len(items), 1),
                            max_queue_delay_s=None)
    engine = Engine(model, tok, EngineConfig(sched))
    refs = {}
    for item in items:
        try:
            req, ref_pngs = _request(item, tok, vision, _open_image,
                                     model.config.max_position_embeddings)
            engine.add_request(req)
        except RequestError as e:
            raise UsageError(f"prompt {item.name}: {e}") from None
        refs[item.name] = [PngImage(b) for b in ref_pngs]
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "proto").mkdir(parents=True, exist_ok=True)
    results, progress, start = {}, Progress(len(items)), time.monotonic()
    by_name = {i.name: i for i in items}
    from services.engine.events import Finished
    while engine.has_work():
        for event in engine.step():
            progress.update(event)
            if isinstance(event, Finished):
                item = by_name[event.request_id]
                results[item.name] = write_result(out, item, event, tok, vision, refs[item.name])
        progress.draw()
    path = write_manifest(out, [results[n] for n in names],
                          {"model": str(args.model), "vision_tokenizer": str(args.vision_tokenizer),
                           "device": str(device), "seconds": time.monotonic() - start})
    print(path)
