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


def version() -> str:
    """The installed package's version (pyproject.toml), or "unknown" from a bare tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("emu35-serve")
    except PackageNotFoundError:
        return "unknown"


EXAMPLES = """\
examples:
  emu35 checkpoint tiny ./tiny
  emu35 generate --model ./tiny/llm --vision-tokenizer ./tiny/vision_tokenizer \\
      --task t2i --prompt "a red fox in the snow" --size 8*8 --out ./out
  emu35 serve --tiny
  emu35 SUBCOMMAND --help        (each subcommand's options, defaults and examples)"""


def _sub(sub, name: str, help: str, description: str = "", examples: str = ""):
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:],
                          epilog=f"examples:\n{examples}" if examples else None,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu35", description="Emu3.5 serving tools: tiny checkpoints, offline generation, "
        "the local serving cluster, prompt and vision-tokenizer inspection.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"emu35 {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    ckpt = _sub(sub, "checkpoint", "checkpoint utilities")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", required=True, metavar="WHAT")
    tiny = _sub(ckpt_sub, "tiny", "write a tiny random checkpoint pair (LLM + vision tokenizer)",
                "Write OUT_DIR/llm (config.json, sharded safetensors + index, tokenizer files) "
                "and OUT_DIR/vision_tokenizer (IBQ config.yaml + model.ckpt): random weights in "
                "the released formats, small enough for a CPU.",
                "  emu35 checkpoint tiny ./tiny --seed 1")
    tiny.add_argument("out_dir", metavar="OUT_DIR")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    tiny.add_argument("--tokenizer", metavar="DIR",
                      help="use these tokenizer files (e.g. the real Emu3.5 ones) instead of a "
                           "small synthetic vocabulary")
    tiny.set_defaults(func=_cmd_checkpoint_tiny)

    prompt = _sub(sub, "prompt", "print the token prompts for a request",
                  "Print JSON: the conditional and unconditional token ids the model will see, "
                  "the reference images' grids and the output grid.",
                  "  emu35 prompt --model ./tiny/llm --task t2i --prompt 'a cat' --aspect 16:9 "
                  "--text")
    prompt.add_argument("--model", required=True, metavar="DIR", help="LLM checkpoint directory")
    prompt.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: --model)")
    prompt.add_argument("--vision-tokenizer", metavar="DIR",
                        help="IBQ directory (default: ../vision_tokenizer next to --model)")
    prompt.add_argument("--task", required=True, help="t2i, x2i, howto, story, explore or vla")
    prompt.add_argument("--prompt", required=True, metavar="TEXT", help="the request text")
    prompt.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="reference image (repeat for several)")
    prompt.add_argument("--aspect", help="auto, a preset (1:1, 4:3, 16:9, ...), h*w tokens or "
                                         "HxW px (default: the task's)")
    prompt.add_argument("--text", action="store_true", help="also print the decoded prompts")
    prompt.set_defaults(func=_cmd_prompt)

    gen = _sub(sub, "generate", "generate images/text offline (one batch)")
    from .generate_cmd import add_arguments
    add_arguments(gen)
    gen.set_defaults(func=_cmd_generate)

    srv = _sub(sub, "serve", "run the serving cluster locally (Ray Serve, gRPC)")
    from .serve_cmd import add_arguments as add_serve_arguments
    add_serve_arguments(srv)
    srv.set_defaults(func=_cmd_serve)

    vq = _sub(sub, "vq", "vision tokenizer: image <-> code grid")
    vq_sub = vq.add_subparsers(dest="vq_command", required=True, metavar="WAY")
    enc = _sub(vq_sub, "encode", "image file -> code grid JSON {h, w, codes}",
               examples="  emu35 vq encode photo.png --vision-tokenizer ./tiny/vision_tokenizer "
                        "--area 65536 --out codes.json")
    enc.add_argument("image", metavar="IMAGE")
    enc.add_argument("--vision-tokenizer", required=True, metavar="DIR", help="IBQ directory")
    enc.add_argument("--area", type=int, metavar="PIXELS",
                     help="smart_resize to about this many pixels (default: the image's own size)")
    enc.add_argument("--out", metavar="FILE", help="write the JSON here (default: stdout)")
    enc.add_argument("--tokenizer", metavar="DIR",
                     help="text tokenizer dir: also print the image's token span ids")
    enc.set_defaults(func=_cmd_vq_encode)
    dec = _sub(vq_sub, "decode", "code grid JSON (or a token span) -> PNG",
               examples="  emu35 vq decode codes.json --vision-tokenizer ./tiny/vision_tokenizer "
                        "--out image.png")
    dec.add_argument("codes", metavar="CODES")
    dec.add_argument("--vision-tokenizer", required=True, metavar="DIR", help="IBQ directory")
    dec.add_argument("--out", required=True, metavar="FILE", help="output image path (.png)")
    dec.add_argument("--tokenizer", metavar="DIR", help="text tokenizer dir, to decode a "
                                                        "'span_ids' JSON")
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
