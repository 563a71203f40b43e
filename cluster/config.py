"""``emu35 serve --config FILE``: one YAML file sets everything the flags set; a flag given on
the command line overrides the file. Validated with pydantic: unknown keys and bad values are
errors naming the field (``stages.generator.max_replicas: ...``).

Relative paths in the file are relative to the file's directory. Storage credentials never go
in the file: boto3 reads them from the environment (AWS_*), or EMU35_STORAGE_ACCESS_KEY /
EMU35_STORAGE_SECRET_KEY.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STAGES = ("gateway", "encoder", "generator", "decoder")
_PATH_KEYS = {"model": ("path", "tiny", "vision_tokenizer", "tokenizer"), "storage": ("root",)}
_CREDENTIALS = ("access_key", "secret_key", "session_token")


class ConfigError(ValueError):
    """The file or the flags describe an invalid deployment (one line per problem)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    path: str | None = None              # LLM checkpoint directory
    tiny: str | None = None              # or: write (once) and serve a tiny random checkpoint
    vision_tokenizer: str | None = None  # IBQ directory (required with path)
    tokenizer: str | None = None         # tokenizer files (default: path)
    device: str = "cpu"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.tiny is None):
            raise ValueError("path: give exactly one of model.path (--model DIR "
                             "--vision-tokenizer DIR) or model.tiny (--tiny [DIR])")
        if self.path is not None and self.vision_tokenizer is None:
            raise ValueError("vision_tokenizer: required with model.path")
        return self


class ServerSection(_Section):
    host: str = "127.0.0.1"  # listen address; loopback keeps every listener (Ray's too) local
    grpc_port: int = Field(9000, ge=1, le=65535)
    http_port: int = Field(8000, ge=1, le=65535)


class StorageSection(_Section):
    backend: Literal["local", "s3"] = "local"
    root: str = "results"              # local directory
    bucket: str | None = None          # s3
    endpoint_url: str | None = None    # S3-compatible server; default AWS
    region: str | None = None
    prefix: str = ""

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data):
        if isinstance(data, dict):
            for key in _CREDENTIALS:
                if key in data:
                    raise ValueError(f"{key}: credentials are read from the environment "
                                     "(AWS_* or EMU35_STORAGE_*), never from the config file")
        return data

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self):
        if self.backend == "s3" and not self.bucket:
            raise ValueError("bucket: required with backend s3")
        return self


class EngineSection(_Section):
    kv_blocks: int = Field(4096, ge=1)           # paged-KV blocks per generator replica
    max_waiting: int = Field(256, ge=1)          # queue bound: beyond it RESOURCE_EXHAUSTED
    max_num_seqs: int = Field(64, ge=2)          # rows per engine step (a guided request: 2)
    max_batched_tokens: int = Field(2048, ge=1)  # tokens per engine step
    tensor_parallel_size: int = Field(1, ge=1)   # GPUs per generator replica (placement group)


class StageSection(_Section):
    min_replicas: int = Field(1, ge=1)
    max_replicas: int | None = None  # above min_replicas: autoscaling; default min_replicas
    target_ongoing_requests: float = Field(8.0, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _replica_range(self):
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas: {self.max_replicas} is below min_replicas "
                             f"{self.min_replicas}")
        return self


class StagesSection(_Section):
    gateway: StageSection = StageSection()
    encoder: StageSection = StageSection()
    generator: StageSection = StageSection()
    decoder: StageSection = StageSection()


class ServeFile(_Section):
    model: ModelSection
    server: ServerSection = ServerSection()
    storage: StorageSection = StorageSection()
    engine: EngineSection = EngineSection()
    stages: StagesSection = StagesSection()

    @model_validator(mode="after")
    def _tensor_parallel_owns_the_gpus(self):
        if self.engine.tensor_parallel_size > 1 and self.stages.generator.num_gpus:
            raise ValueError("stages.generator.num_gpus: leave unset with "
                             "engine.tensor_parallel_size > 1 (one GPU bundle per rank)")
        return self


# Per-stage defaults (a file may set some fields of a stage; the others keep these).
STAGE_DEFAULTS = {
    "gateway": {"num_cpus": 0.25},
    "encoder": {"num_cpus": 0.25, "max_ongoing_requests": 8},
    "generator": {"num_cpus": 1.0, "target_ongoing_requests": 32},
    "decoder": {"num_cpus": 0.25, "max_ongoing_requests": 8},
}


def read_file(path: str | Path) -> dict:
    """The YAML file as nested dicts, relative paths made relative to its directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML ({_one_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of sections "
                          "(model, server, storage, engine, stages)")
    for section, keys in _PATH_KEYS.items():
        values = data.get(section)
        if isinstance(values, dict):
            for key in keys:
                if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
                    values[key] = str(path.parent / values[key])
    return data


def validate(data: dict) -> ServeFile:
    """Validate merged settings (file + flags). Raises ConfigError naming every bad field."""
    try:
        return ServeFile.model_validate(_with_stage_defaults({"model": {}, **data}))
    except ValidationError as e:
        raise ConfigError(describe(e)) from None


def describe(error: ValidationError, section: str = "") -> str:
    """One line: every problem as ``section.field: message``."""
    return "; ".join(_describe(err, section) for err in error.errors())


def _with_stage_defaults(data: dict) -> dict:
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        return data  # pydantic names the error
    filled = dict(stages)
    for stage in STAGES:
        given = stages.get(stage) or {}
        if isinstance(given, dict):
            filled[stage] = {**STAGE_DEFAULTS[stage], **given}
    return {**data, "stages": filled}


def merge(base: dict, override: dict) -> dict:
    """``override`` wins, section by section and key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(err: dict, section: str = "") -> str:
    """``section.field: message``; a message from a validator that names a field ("bucket:
    ...") is attached under its section."""
    loc = ".".join(str(part) for part in (section, *err["loc"]) if part != "")
    msg = err["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if sep and head.replace("_", "").replace(".", "").isalnum() and " " not in head:
        return f"{loc}.{head}: {rest}" if loc else f"{head}: {rest}"
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{loc}: {msg}" if loc else msg


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
