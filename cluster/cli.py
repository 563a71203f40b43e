"""The ``emu35`` command line.

Subcommands:
  checkpoint tiny OUT_DIR   write a tiny random LLM + vision tokenizer in the released formats
  prompt                    print the conditional/unconditional token ids the model will see
  generate                  run prompts through the engine; write PNGs, Story .pb, manifest
  vq encode / vq decode     image file <-> IBQ code grid (JSON)

Heavy imports happen inside each command so ``emu35 --help`` stays fast. User mistakes
(bad flags, missing files, invalid values) end with one ``emu35: error: ...`` line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UsageError(Exception):
    """A user mistake to report in one line."""


def _cmd_checkpoint_tiny(args) -> None:
    from services.model.tiny import write_tiny_checkpoint

    llm, vq = write_tiny_checkpoint(args.out_dir, seed=args.seed, tokenizer_dir=args.tokenizer)
    print(json.dumps({"model": str(llm), "vision_tokenizer": str(vq)}))


def _vision_dir(args) -> Path | None:
    if args.vision_tokenizer:
        return Path(args.vision_tokenizer)
    sibling = Path(args.model).parent / "vision_tokenizer"  # the tiny checkpoint layout
    return sibling if sibling.is_dir() else None


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise UsageError(f"--image: file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"--image: cannot read {path} as an image ({e})") from None


def _cmd_prompt(args) -> None:
    from services.model.prompting import prepare_prompt
    from services.model.text_tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(args.tokenizer or args.model)
    images = [_open_image(p) for p in args.image]
    vision = None
    if images:
        vq_dir = _vision_dir(args)
        if vq_dir is None:
            raise UsageError("--vision-tokenizer: needed to encode --image (no vision_tokenizer "
                             "directory next to --model)")
        from services.model.ibq import VisionTokenizer
        vision = VisionTokenizer.from_dir(vq_dir)
    p = prepare_prompt(tok, args.task, args.prompt, images, size=args.aspect, vision=vision)
    grid = p.output_grid
    out = {
        "task": p.task.value,
        "cond": list(p.cond),
        "uncond": list(p.uncond),
        "cond_len": len(p.cond),
        "uncond_len": len(p.uncond),
        "reference_grids": [[g.h, g.w] for g in p.reference_grids],
        "output_grid": [grid.h, grid.w] if grid else "auto",
    }
    if args.text:
        out["cond_text"] = tok.decode(p.cond)
        out["uncond_text"] = tok.decode(p.uncond)
    print(json.dumps(out))


def _cmd_generate(args) -> None:
    from .generate_cmd import run

    run(args)


def _cmd_serve(args) -> None:
    from .serve_cmd import run

    run(args)


def _cmd_vq_encode(args) -> None:
    from services.model.ibq import VisionTokenizer

    vq = VisionTokenizer.from_dir(args.vision_tokenizer)
    codes = vq.encode([_open_image(args.image)], area=args.area)[0]
    out = {"h": codes.shape[0], "w": codes.shape[1], "codes": codes.tolist()}
    if args.tokenizer:
        from services.model.image_tokens import image_span_ids
        from services.model.text_tokenizer import TextTokenizer

        out["span_ids"] = image_span_ids(TextTokenizer.from_dir(args.tokenizer), codes)
    text = json.dumps(out)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


def _read_codes(path: str, tokenizer_dir: str | None):
    """A code grid from JSON: "codes" ([h][w] ints), or "span_ids" (a BOI..EOI token span as
    the model writes it, parsed with the text tokenizer)."""
    import torch

    try:
        raw = json.loads(Path(path).read_text())
        if "codes" not in raw and "span_ids" in raw:
            if not tokenizer_dir:
                raise UsageError("--tokenizer: needed to parse 'span_ids'")
            from services.model.image_tokens import parse_image_span
            from services.model.text_tokenizer import TextTokenizer

            return parse_image_span(TextTokenizer.from_dir(tokenizer_dir), raw["span_ids"])
        codes = torch.tensor(raw["codes"], dtype=torch.long)
    except FileNotFoundError:
        raise UsageError(f"CODES: file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"CODES: {path} is not a code-grid JSON with a rectangular 'codes' "
                         f"list of lists or a valid 'span_ids' image span ({e})") from None
    if codes.dim() != 2 or codes.numel() == 0:
        raise UsageError(f"CODES: 'codes' in {path} must be a non-empty [h][w] grid")
    return codes


def _cmd_vq_decode(args) -> None:
    from services.model.ibq import VisionTokenizer

    vq = VisionTokenizer.from_dir(args.vision_tokenizer)
    image = vq.decode_to_pil(_read_codes(args.codes, args.tokenizer))
    image.save(args.out)
    print(json.dumps({"image": args.out, "width": image.width, "height": image.height}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emu35", description="Emu3.5 serving tools")
    sub = parser.add_subparsers(dest="command", required=True)

    ckpt = sub.add_parser("checkpoint", help="checkpoint utilities")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", required=True)
    tiny = ckpt_sub.add_parser("tiny", help="write a tiny random checkpoint pair")
    tiny.add_argument("out_dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--tokenizer", help="use these tokenizer files (e.g. the real Emu3.5 ones) "
                                          "instead of a small synthetic vocabulary")
    tiny.set_defaults(func=_cmd_checkpoint_tiny)

    prompt = sub.add_parser("prompt", help="print the token prompts for a request")
    prompt.add_argument("--model", required=True, help="LLM checkpoint directory")
    prompt.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    prompt.add_argument("--vision-tokenizer", help="IBQ directory (default: ../vision_tokenizer)")
    prompt.add_argument("--task", required=True)
    prompt.add_argument("--prompt", required=True)
    prompt.add_argument("--image", action="append", default=[], help="reference image (repeat)")
    prompt.add_argument("--aspect", help="auto, a preset (1:1, 4:3, 16:9, ...), h*w tokens or HxW px")
    prompt.add_argument("--text", action="store_true", help="also print the decoded prompts")
    prompt.set_defaults(func=_cmd_prompt)

    gen = sub.add_parser("generate", help="generate images/text offline (one batch)")
    from .generate_cmd import add_arguments
    add_arguments(gen)
    gen.set_defaults(func=_cmd_generate)

    srv = sub.add_parser("serve", help="run the serving cluster locally (Ray Serve, gRPC)")
    from .serve_cmd import add_arguments as add_serve_arguments
    add_serve_arguments(srv)
    srv.set_defaults(func=_cmd_serve)

    vq = sub.add_parser("vq", help="vision tokenizer: image <-> code grid")
    vq_sub = vq.add_subparsers(dest="vq_command", required=True)
    enc = vq_sub.add_parser("encode", help="image file -> code grid JSON")
    enc.add_argument("image")
    enc.add_argument("--vision-tokenizer", required=True)
    enc.add_argument("--area", type=int, help="smart_resize to about this many pixels")
    enc.add_argument("--out", help="write the JSON here instead of stdout")
    enc.add_argument("--tokenizer", help="text tokenizer dir: also print the image's token span ids")
    enc.set_defaults(func=_cmd_vq_encode)
    dec = vq_sub.add_parser("decode", help="code grid JSON -> PNG")
    dec.add_argument("codes")
    dec.add_argument("--vision-tokenizer", required=True)
    dec.add_argument("--out", required=True, help="output image path (.png)")
    dec.add_argument("--tokenizer", help="text tokenizer dir, to decode a 'span_ids' JSON")
    dec.set_defaults(func=_cmd_vq_decode)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        parser.exit(2, f"emu35: error: {e}\n")
    return 0


if __name__ == "__main__":
    # Run the package's copy: under `python -m` this file is also loaded as __main__, and the
    # commands raise cluster.cli.UsageError, which __main__.main would not catch.
    from cluster.cli import main as package_main

    sys.exit(package_main())
