"""``emu35 serve``: the whole cluster on one machine with one command."""
from __future__ import annotations

from pathlib import Path

from .cli import UsageError


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="LLM checkpoint directory")
    src.add_argument("--tiny", metavar="DIR", nargs="?", const=".emu35-tiny",
                     help="write (once) and serve a tiny random checkpoint in DIR")
    p.add_argument("--vision-tokenizer", help="IBQ directory (required with --model)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")
    p.add_argument("--grpc-port", type=int, default=9000)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--storage", choices=["local", "s3"], default="local")
    p.add_argument("--storage-root", default="results", help="local storage directory")
    p.add_argument("--s3-bucket")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS)")
    p.add_argument("--s3-prefix", default="")
    p.add_argument("--s3-region")
    p.add_argument("--generator-replicas", type=int, default=1, help="generator replicas")
    p.add_argument("--kv-blocks", type=int, default=4096)


def config_from_args(args):
    from services.stages.settings import StageSettings
    from services.storage import StorageSettings

    from .serve import ServeConfig

    if args.tiny:
        from services.model.tiny import write_tiny_checkpoint
        root = Path(args.tiny)
        if not (root / "llm" / "config.json").is_file():
            write_tiny_checkpoint(root)
        model, vq = root / "llm", root / "vision_tokenizer"
    else:
        if not args.vision_tokenizer:
            raise UsageError("--vision-tokenizer: required with --model")
        model, vq = Path(args.model), Path(args.vision_tokenizer)
    for flag, path in (("--model", model), ("--vision-tokenizer", vq)):
        if not path.is_dir():
            raise UsageError(f"{flag}: not a directory: {path}")
    if args.storage == "s3":
        if not args.s3_bucket:
            raise UsageError("--s3-bucket: required with --storage s3")
        storage = StorageSettings(backend="s3", bucket=args.s3_bucket, endpoint_url=args.s3_endpoint,
                                  prefix=args.s3_prefix, region=args.s3_region)
    else:
        storage = StorageSettings(backend="local", root=str(Path(args.storage_root).resolve()))
    stages = StageSettings(model=str(model.resolve()), vision_tokenizer=str(vq.resolve()),
                           tokenizer=args.tokenizer, device=args.device, kv_blocks=args.kv_blocks,
                           proxy_target=f"127.0.0.1:{args.grpc_port}", storage=storage)
    cfg = ServeConfig(stages=stages, host=args.host, grpc_port=args.grpc_port,
                      http_port=args.http_port)
    if args.generator_replicas != 1:
        import dataclasses
        gen = dataclasses.replace(cfg.scaling["generator"], min_replicas=args.generator_replicas,
                                  max_replicas=args.generator_replicas)
        cfg = dataclasses.replace(cfg, scaling={**cfg.scaling, "generator": gen})
    return cfg


def run(args) -> None:
    from .serve import serve_forever

    serve_forever(config_from_args(args))
