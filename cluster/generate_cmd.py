"""``emu35 generate``: prepare every prompt, run them as one batch, write the results."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .cli import UsageError
from .offline import Progress, PromptItem, load_prompt_file, png_bytes, write_manifest, write_result


DESCRIPTION = """\
Generate offline: every prompt runs through the engine as one continuous batch (paged KV,
CFG, grammar); writes OUT/images/NAME_NN.png, OUT/proto/NAME.pb (Story) and OUT/manifest.json
(last). Every argument is checked before the checkpoint loads; progress goes to stderr."""

EXAMPLES = """\
examples:
  emu35 generate --model tiny/llm --vision-tokenizer tiny/vision_tokenizer \\
      --task t2i --prompt "a red fox in the snow" --size 8*8 --out fox
  emu35 generate --model /ckpt/Emu3.5 --vision-tokenizer /ckpt/Emu3.5-VisionTokenizer \\
      --device cuda --task x2i --prompt "make it night" --image photo.png
  emu35 generate ... --prompts prompts.jsonl   # {"name","task","prompt","images","aspect",
                                               #  "size","seed","cfg","max_new_tokens"} per line"""


def add_arguments(p) -> None:
    import argparse

    p.description, p.epilog = DESCRIPTION, EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, metavar="DIR", help="LLM checkpoint directory")
    p.add_argument("--vision-tokenizer", required=True, metavar="DIR", help="IBQ directory")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: --model)")
    p.add_argument("--task", help="t2i, x2i, howto, story, explore or vla")
    p.add_argument("--prompt", metavar="TEXT", help="the request text")
    p.add_argument("--prompts", metavar="FILE",
                   help="JSON list / JSON Lines file of prompts, run as one batch")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="reference image (repeat for several)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--aspect", help="auto or a preset: 1:1, 4:3, 16:9, 21:9, 3:2, 3:4, 9:16, "
                                       "2:3 (default: the task's, 4:3 for t2i)")
    size.add_argument("--size", help="HxW pixels (multiples of 16) or h*w tokens")
    p.add_argument("--cfg", type=float, metavar="SCALE", help="guidance scale (default: the task's)")
    p.add_argument("--seed", type=int, help="sampling seed (default 6666)")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="token budget (default: the task's)")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory (default: out)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--num-blocks", type=int, default=None, metavar="N",
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
    names = [i.name for i in items]
    if len(set(names)) != len(names):
        raise UsageError("--prompts: names must be unique")
    for item in items:
        _check_item(item, args)
    return items


def _check_item(item: PromptItem, args) -> None:
    """Everything about one prompt that can be checked before the checkpoint loads, with
    the functions the engine uses; errors name the flag, or the prompts file's entry."""
    import math

    from services.model.image_tokens import parse_image_size
    from services.model.templates import parse_task

    def fail(flag: str, field: str, given, message: str):
        # a value from the flag is the very object argparse made (PromptItem's defaults)
        from_flag = given is getattr(args, flag.removeprefix("--").replace("-", "_"))
        where = flag if from_flag else f"--prompts: prompt {item.name}: {field}"
        raise UsageError(f"{where}: {message}")

    def whole(field: str, flag: str, low: int, high: int) -> None:
        value = getattr(item, field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not low <= value < high):
            fail(flag, field, value, f"must be a whole number in [{low}, {high}), "
                                     f"not {str(value)[:20]!r}")

    if not item.task:
        raise UsageError(f"--task: required (prompt {item.name} names none)")
    try:
        parse_task(item.task)
    except ValueError as e:
        fail("--task", "task", item.task, str(e).removeprefix("task: "))
    if item.size is not None:
        try:
            parse_image_size(item.size)
        except ValueError as e:
            if item.size == (args.size or args.aspect):
                raise UsageError(f"{'--size' if args.size else '--aspect'}: {e}") from None
            raise UsageError(f"--prompts: prompt {item.name}: size: {e}") from None
    if not isinstance(item.images, list) or not all(isinstance(p, str) for p in item.images):
        fail("--image", "images", item.images, "must be a list of file paths")
    for path in item.images:
        if not Path(path).is_file():
            raise UsageError(f"--image: file not found: {path}")
    whole("max_new_tokens", "--max-new-tokens", 1, 2 ** 31)
    whole("seed", "--seed", 0, 2 ** 63)
    cfg = item.cfg
    if cfg is not None and (not isinstance(cfg, (int, float)) or isinstance(cfg, bool)
                            or not math.isfinite(cfg) or cfg < 0):
        fail("--cfg", "cfg", cfg, f"must be a finite number >= 0, not {str(cfg)[:20]!r}")


def check_arguments(args) -> list[PromptItem]:
    """Every argument, before anything loads: the prompts, the device, the checkpoint's
    files, --out and --num-blocks. Returns the prompts."""
    from .preflight import PreflightError, check_checkpoint, check_device

    items = _items(args)
    try:
        check_device(args.device, "--device")
        check_checkpoint(Path(args.model), Path(args.vision_tokenizer), args.tokenizer)
    except PreflightError as e:
        raise UsageError(str(e)) from None
    _check_out(Path(args.out))
    if args.num_blocks is not None and args.num_blocks < 1:
        raise UsageError(f"--num-blocks: must be positive, not {args.num_blocks}")
    return items


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out: cannot write in {parent}")


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

    items = check_arguments(args)
    names = [i.name for i in items]
    device = torch.device(args.device)
    model, tok = load_checkpoint(args.model, device=device, tokenizer_dir=args.tokenizer)
    vision = VisionTokenizer.from_dir(args.vision_tokenizer, device=device)
    # num_blocks None: auto (services/engine/memory.py); the whole batch queues at once.
    sched = SchedulerConfig(num_blocks=args.num_blocks, max_waiting=max(len(items), 1),
                            max_queue_delay_s=None)
    engine = Engine(model, tok, EngineConfig(sched))
    refs, requests = {}, {}
    for item in items:
        try:
            req, ref_pngs = _request(item, tok, vision, _open_image,
                                     model.config.max_position_embeddings)
            engine.add_request(req)
        except RequestError as e:
            raise UsageError(f"prompt {item.name}: {e}") from None
        refs[item.name], requests[item.name] = [PngImage(b) for b in ref_pngs], req
    from services.storage import LocalResultStore
    store = LocalResultStore(args.out)
    results, progress, start = {}, Progress(len(items)), time.monotonic()
    accepted = time.time()
    by_name = {i.name: i for i in items}
    from services.engine.events import Finished
    while engine.has_work():
        for event in engine.step():
            progress.update(event)
            if isinstance(event, Finished):
                item = by_name[event.request_id]
                results[item.name] = write_result(store, item, event, requests[item.name], tok,
                                                  vision, refs[item.name], accepted)
        progress.draw(live_tokens=sum(len(g.output) for g in engine.groups.values()))
    path = write_manifest(store, [results[n] for n in names],
                          {"model": str(args.model), "vision_tokenizer": str(args.vision_tokenizer),
                           "device": str(device), "seconds": time.monotonic() - start})
    print(path)
