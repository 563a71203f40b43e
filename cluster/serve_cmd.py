"""``emu35 serve``: the whole cluster on one machine with one command.

Settings come from ``--config FILE`` (YAML, cluster/config.py) and flags; a flag given on the
command line overrides the file's value.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import UsageError

# flag dest -> (section, key) in the config file
FLAG_FIELDS = {
    "model": ("model", "path"), "tiny": ("model", "tiny"),
    "vision_tokenizer": ("model", "vision_tokenizer"), "tokenizer": ("model", "tokenizer"),
    "device": ("model", "device"), "host": ("server", "host"),
    "grpc_port": ("server", "grpc_port"), "http_port": ("server", "http_port"),
    "storage": ("storage", "backend"), "storage_root": ("storage", "root"),
    "s3_bucket": ("storage", "bucket"), "s3_endpoint": ("storage", "endpoint_url"),
    "s3_prefix": ("storage", "prefix"), "s3_region": ("storage", "region"),
    "kv_blocks": ("engine", "kv_blocks"), "max_waiting": ("engine", "max_waiting"),
    "tensor_parallel_size": ("engine", "tensor_parallel_size"),
}
TINY_DIR = ".emu35-tiny"


def add_arguments(p) -> None:
    # Defaults live in cluster/config.py: a flag left out must not override the file.
    def arg(*names, group=p, **kw):
        group.add_argument(*names, default=argparse.SUPPRESS, **kw)

    p.add_argument("--config", metavar="FILE", help="YAML settings (flags override them)")
    src = p.add_mutually_exclusive_group()
    arg("--model", group=src, help="LLM checkpoint directory")
    arg("--tiny", group=src, metavar="DIR", nargs="?", const=TINY_DIR,
        help="write (once) and serve a tiny random checkpoint in DIR")
    arg("--vision-tokenizer", help="IBQ directory (required with --model)")
    arg("--tokenizer", help="tokenizer directory (default: --model)")
    arg("--device", help="cpu (default), cuda, cuda:N")
    arg("--host", help="listen address (default 127.0.0.1: loopback only)")
    arg("--grpc-port", type=int, help="public gRPC port (default 9000)")
    arg("--http-port", type=int, help="Serve's HTTP proxy port (default 8000)")
    arg("--storage", choices=["local", "s3"])
    arg("--storage-root", help="local storage directory (default ./results)")
    arg("--s3-bucket")
    arg("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS)")
    arg("--s3-prefix")
    arg("--s3-region")
    arg("--generator-replicas", type=int, help="generator replicas (fixed)")
    arg("--kv-blocks", type=int, help="paged-KV blocks per generator replica")
    arg("--max-waiting", type=int, help="generator queue bound (RESOURCE_EXHAUSTED beyond it)")
    arg("--tensor-parallel-size", type=int, help="GPUs per generator replica")


def settings_from_args(args) -> dict:
    """The config file's settings with the given flags laid over them."""
    from .config import merge, read_file

    data = read_file(args.config) if getattr(args, "config", None) else {}
    given = vars(args)
    if {"model", "tiny"} & given.keys() and isinstance(data.get("model"), dict):
        data["model"] = {k: v for k, v in data["model"].items() if k not in ("path", "tiny")}
    flags: dict = {}
    for dest, (section, key) in FLAG_FIELDS.items():
        if dest in given:
            flags.setdefault(section, {})[key] = given[dest]
    if "generator_replicas" in given:
        n = given["generator_replicas"]
        flags["stages"] = {"generator": {"min_replicas": n, "max_replicas": n}}
    return merge(data, flags)


def config_from_args(args):
    """Validated settings -> ServeConfig; a tiny checkpoint is written on first use."""
    from .config import ConfigError, validate

    try:
        return serve_config(validate(settings_from_args(args)))
    except ConfigError as e:
        raise UsageError(str(e)) from None


def serve_config(f):
    """config.ServeFile -> serve.ServeConfig (checkpoint directories checked)."""
    from services.stages.settings import StageSettings, check_tensor_parallel

    from .placement import StageScaling
    from .serve import ServeConfig

    try:
        check_tensor_parallel(f.engine.tensor_parallel_size)
    except ValueError as e:
        raise UsageError(f"engine.{e}") from None
    model, vq = _checkpoint_dirs(f.model)
    e, server = f.engine, f.server
    stages = StageSettings(
        model=str(model), vision_tokenizer=str(vq), tokenizer=f.model.tokenizer,
        device=f.model.device, kv_blocks=e.kv_blocks, max_waiting=e.max_waiting,
        max_num_seqs=e.max_num_seqs, max_batched_tokens=e.max_batched_tokens,
        tensor_parallel_size=e.tensor_parallel_size,
        proxy_target=f"{_reachable(server.host)}:{server.grpc_port}", storage=_storage(f.storage))
    scaling = {}
    for name in ("gateway", "encoder", "generator", "decoder"):
        s = getattr(f.stages, name)
        scaling[name] = StageScaling(
            min_replicas=s.min_replicas, max_replicas=s.max_replicas or s.min_replicas,
            target_ongoing_requests=s.target_ongoing_requests,
            max_ongoing_requests=s.max_ongoing_requests, num_cpus=s.num_cpus, num_gpus=s.num_gpus)
    return ServeConfig(stages=stages, host=server.host, grpc_port=server.grpc_port,
                       http_port=server.http_port, scaling=scaling)


def _checkpoint_dirs(m) -> tuple[Path, Path]:
    if m.tiny is not None:
        from services.model.tiny import write_tiny_checkpoint
        root = Path(m.tiny)
        if not (root / "llm" / "config.json").is_file():
            write_tiny_checkpoint(root)
        model, vq = root / "llm", root / "vision_tokenizer"
    else:
        model, vq = Path(m.path), Path(m.vision_tokenizer)
    for field, path in (("model.path (--model)", model),
                        ("model.vision_tokenizer (--vision-tokenizer)", vq)):
        if not path.is_dir():
            raise UsageError(f"{field}: not a directory: {path}")
    return model.resolve(), vq.resolve()


def _storage(s):
    from pydantic import ValidationError

    from services.storage import StorageSettings

    from .config import describe

    try:
        if s.backend == "s3":  # credentials: boto3's chain (AWS_*) or EMU35_STORAGE_* env
            return StorageSettings(backend="s3", bucket=s.bucket, endpoint_url=s.endpoint_url,
                                   prefix=s.prefix, region=s.region)
        return StorageSettings(backend="local", root=str(Path(s.root).resolve()))
    except ValidationError as e:
        raise UsageError(describe(e, "storage")) from None


def _reachable(host: str) -> str:
    """Where stages reach Serve's gRPC proxy: the listen address, or loopback for wildcards."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def run(args) -> None:
    from .serve import serve_forever

    serve_forever(config_from_args(args))
