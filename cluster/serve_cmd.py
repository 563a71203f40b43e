"""``emu35 serve``: the whole cluster on one machine with one command.

Settings come from the one settings model (services/settings): ``--config FILE`` (YAML), the
environment (``EMU35_SECTION__FIELD``) and flags, a flag winning over a variable winning over
the file (cluster/config.py). Everything that can be checked before Ray starts is: the
checkpoint files, the device, and that the ports are free (cluster/preflight.py).
"""
from __future__ import annotations

import argparse

from .cli import UsageError

# flag dest -> (section, key) in the settings model
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

DESCRIPTION = """\
Run the whole serving cluster on this machine: local Ray, four Ray Serve applications
(gateway, encoder, generator, decoder) and the public gRPC API. Ctrl-C stops it.

Settings: flags > environment (EMU35_SECTION__FIELD, e.g. EMU35_ENGINE__KV_BLOCKS=512) >
--config FILE (YAML) > defaults; docs/settings.md lists every setting."""

EXAMPLES = """\
examples:
  emu35 serve --tiny
  emu35 serve --model /ckpt/Emu3.5 --vision-tokenizer /ckpt/Emu3.5-VisionTokenizer --device cuda
  emu35 serve --config emu35.yaml --grpc-port 9100
  EMU35_STORAGE__BUCKET=emu35 emu35 serve --tiny --storage s3 --s3-endpoint http://127.0.0.1:8333"""


def _default(section: str, key: str) -> str:
    from services.settings import sections

    model = {"model": sections.ModelSettings, "server": sections.ServerSettings,
             "storage": sections.StorageSettings, "engine": sections.EngineSettings}[section]
    value = model.model_fields[key].default
    return f" (default: {value})" if value not in (None, "") else ""


def add_arguments(p) -> None:
    p.description, p.epilog = DESCRIPTION, EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter

    # A flag left out must not override the file or the environment: no argparse defaults.
    def arg(*names, group=p, field=None, **kw):
        kw["help"] = kw.get("help", "") + (_default(*field) if field else "")
        group.add_argument(*names, default=argparse.SUPPRESS, **kw)

    p.add_argument("--config", metavar="FILE", help="YAML settings (flags and EMU35_* "
                                                    "variables override them)")
    src = p.add_mutually_exclusive_group()
    arg("--model", group=src, metavar="DIR", help="LLM checkpoint directory")
    arg("--tiny", group=src, metavar="DIR", nargs="?", const=TINY_DIR,
        help=f"write (once) and serve a tiny random checkpoint in DIR (default: {TINY_DIR})")
    arg("--vision-tokenizer", metavar="DIR", help="IBQ directory (required with --model)")
    arg("--tokenizer", metavar="DIR", help="tokenizer directory (default: --model)")
    arg("--device", field=("model", "device"), help="cpu, cuda or cuda:N")
    arg("--host", field=("server", "host"), help="listen address; loopback keeps everything "
                                                 "local, 0.0.0.0 serves the network")
    arg("--grpc-port", type=int, metavar="PORT", field=("server", "grpc_port"),
        help="public gRPC port")
    arg("--http-port", type=int, metavar="PORT", field=("server", "http_port"),
        help="Serve's HTTP proxy port")
    arg("--storage", choices=["local", "s3"], field=("storage", "backend"),
        help="where results go")
    arg("--storage-root", metavar="DIR", field=("storage", "root"),
        help="local results directory")
    arg("--s3-bucket", metavar="NAME", help="S3 bucket (with --storage s3)")
    arg("--s3-endpoint", metavar="URL", help="S3-compatible endpoint URL (default: AWS)")
    arg("--s3-prefix", metavar="PREFIX", help="key prefix in the bucket")
    arg("--s3-region", metavar="REGION", help="S3 region")
    arg("--generator-replicas", type=int, metavar="N", help="generator replicas (fixed; "
                                                             "default: 1)")
    arg("--kv-blocks", metavar="N|auto", field=("engine", "kv_blocks"),
        help="paged-KV blocks per generator replica")
    arg("--max-waiting", type=int, metavar="N", field=("engine", "max_waiting"),
        help="generator queue bound (RESOURCE_EXHAUSTED beyond it)")
    arg("--tensor-parallel-size", type=int, metavar="N", field=("engine", "tensor_parallel_size"),
        help="GPUs per generator replica")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def flags_layer(args):
    """The flags given on the command line as a settings layer, each named by its flag."""
    from services.settings.sources import Layer

    given = vars(args)
    data: dict = {}
    labels = {}
    for dest, (section, key) in FLAG_FIELDS.items():
        if dest in given:
            data.setdefault(section, {})[key] = given[dest]
            labels[(section, key)] = _flag(dest)
    if "generator_replicas" in given:
        n = given["generator_replicas"]
        data["stages"] = {"generator": {"min_replicas": n, "max_replicas": n}}
        for key in ("min_replicas", "max_replicas"):
            labels[("stages", "generator", key)] = "--generator-replicas"
    return Layer(data, labels)


def settings_from_args(args, environ=None):
    """The validated settings (services.settings.model.Emu35Settings) for these arguments."""
    from .config import ConfigError, load

    try:
        return load(getattr(args, "config", None), flags_layer(args), environ)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def config_from_args(args, environ=None):
    """Validated settings -> ServeConfig; checkpoint files and the device checked, a tiny
    checkpoint written on first use."""
    return serve_config(settings_from_args(args, environ))


def serve_config(s):
    """Emu35Settings -> serve.ServeConfig (checkpoint files and device checked)."""
    from pathlib import Path

    from services.stages.settings import StageSettings, check_tensor_parallel

    from .preflight import PreflightError, check_checkpoint, check_device
    from .serve import ServeConfig

    try:
        check_tensor_parallel(s.engine.tensor_parallel_size)
    except ValueError as e:
        raise UsageError(f"engine.{e}") from None
    try:
        check_device(s.model.device, "model.device (--device)")
        model, vq = _checkpoint_dirs(s.model)
        source = ("model.tiny (--tiny)",) * 2 if s.model.tiny is not None else (
            "model.path (--model)", "model.vision_tokenizer (--vision-tokenizer)")
        check_checkpoint(model, vq, s.model.tokenizer, (*source, "model.tokenizer (--tokenizer)"))
    except PreflightError as e:
        raise UsageError(str(e)) from None
    server = s.server
    storage = s.storage
    if storage.backend == "local":
        storage = storage.model_copy(update={"root": Path(storage.root).resolve()})
    stages = StageSettings.from_settings(s, model=str(model), vision_tokenizer=str(vq),
                                         storage=storage)
    return ServeConfig(stages=stages, host=server.host, grpc_port=server.grpc_port,
                       http_port=server.http_port, scaling=stage_scaling(s.stages), ray=s.ray)


def stage_scaling(stages) -> dict:
    """Each stage's replicas and resources (placement.StageScaling) from the settings'
    ``stages`` section."""
    from .placement import StageScaling

    return {name: StageScaling(
        min_replicas=sc.min_replicas, max_replicas=sc.max_replicas or sc.min_replicas,
        target_ongoing_requests=sc.target_ongoing_requests,
        max_ongoing_requests=sc.max_ongoing_requests, num_cpus=sc.num_cpus,
        num_gpus=sc.num_gpus) for name, sc in stages}


def _checkpoint_dirs(m):
    from pathlib import Path

    if m.tiny is not None:
        from services.model.tiny import write_tiny_checkpoint
        root = Path(m.tiny)
        if not (root / "llm" / "config.json").is_file():
            write_tiny_checkpoint(root)
        return (root / "llm").resolve(), (root / "vision_tokenizer").resolve()
    return Path(m.path).resolve(), Path(m.vision_tokenizer).resolve()


def run(args) -> None:
    from .lifecycle import serve_forever
    from .preflight import PreflightError, check_ports

    cfg = config_from_args(args)
    try:
        check_ports(cfg.host, {"--grpc-port": cfg.grpc_port, "--http-port": cfg.http_port})
    except PreflightError as e:
        raise UsageError(str(e)) from None
    serve_forever(cfg)
