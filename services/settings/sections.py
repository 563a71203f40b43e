"""The sections of the one deploy-time settings model (everything but ``limits``, whose fields
come from services/rpc; see model.py). Importing this module stays light: the command line
reads defaults from it for ``--help``.

Every default is defined here once. A field's ``description`` is what the docs table
(docs/settings.md) and ``emu35 serve --help`` say about it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.storage.settings import StorageSettings

STAGES = ("gateway", "encoder", "generator", "decoder")
DEFAULT_DEVICE = "cpu"


class Section(BaseModel):
    """Unknown keys are errors (a typo fails loudly); values never change after start."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(Section):
    path: str | None = Field(None, description="LLM checkpoint directory (config.json, "
                                               "safetensors, tokenizer files)")
    tiny: str | None = Field(None, description="or: write (once) and serve a tiny random "
                                               "checkpoint in this directory")
    vision_tokenizer: str | None = Field(None, description="IBQ directory (config.yaml, "
                                                           "model.ckpt); required with path")
    tokenizer: str | None = Field(None, description="tokenizer files (default: path)")
    device: str = Field(DEFAULT_DEVICE, description="cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.tiny is None):
            raise ValueError("path: give exactly one of model.path (--model DIR "
                             "--vision-tokenizer DIR) or model.tiny (--tiny [DIR])")
        if self.path is not None and self.vision_tokenizer is None:
            raise ValueError("vision_tokenizer: required with model.path")
        return self


class ServerSettings(Section):
    host: str = Field("127.0.0.1", description="listen address; loopback keeps every listener "
                                               "(Ray's too) local, 0.0.0.0 serves the network")
    grpc_port: int = Field(9000, ge=1, le=65535, description="public gRPC port")
    http_port: int = Field(8000, ge=1, le=65535, description="Serve's HTTP proxy port")


class EngineSettings(Section):
    kv_blocks: int | Literal["auto"] = Field(
        "auto", description="paged-KV blocks per generator replica; auto: sized from the "
                            "device's free memory on CUDA, the engine's default on CPU")
    max_waiting: int = Field(256, ge=1, description="generator queue bound: beyond it "
                                                    "Generate answers RESOURCE_EXHAUSTED")
    max_num_seqs: int = Field(64, ge=2, description="rows per engine step (a guided "
                                                    "request takes 2)")
    max_batched_tokens: int = Field(2048, ge=1, description="tokens per engine step")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per generator replica")

    @field_validator("kv_blocks", mode="before")
    @classmethod
    def _auto_or_count(cls, v):
        text = str(v).strip().lower() if isinstance(v, (str, int)) else ""
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) > 0 and not isinstance(v, bool):
            return int(text)
        raise ValueError(f"must be auto or a positive whole number, not {str(v)[:20]!r}")

    @property
    def num_blocks(self) -> int | None:
        """The scheduler's num_blocks: None lets the engine size the cache."""
        return None if self.kv_blocks == "auto" else self.kv_blocks


class RaySettings(Section):
    num_cpus: int = Field(8, ge=1, description="CPUs the local Ray node offers (stages take "
                                                 "fractions of them)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs the local Ray node offers "
                                                          "(default: detected)")
    object_store_memory: int = Field(512 << 20, ge=75 << 20,
                                     description="bytes of Ray's object store")


class StageScalingSettings(Section):
    min_replicas: int = Field(1, ge=1, description="replicas (the floor when autoscaling)")
    max_replicas: int | None = Field(None, ge=1, description="above min_replicas: Serve "
                                     "autoscales on ongoing requests (default: min_replicas)")
    target_ongoing_requests: float = Field(8.0, gt=0, description="autoscaling target per "
                                                                  "replica")
    max_ongoing_requests: int = Field(64, ge=1, description="per replica; more wait in "
                                                            "Serve's router")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per replica (fractions are fine)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (with "
                                                   "tensor_parallel_size 1)")

    @model_validator(mode="after")
    def _replica_range(self):
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas: {self.max_replicas} is below min_replicas "
                             f"{self.min_replicas}")
        return self


# Where a stage differs from StageScalingSettings' defaults (a file or variable may set some
# fields of a stage; the others keep these).
STAGE_DEFAULTS = {
    "gateway": {"num_cpus": 0.25},
    "encoder": {"num_cpus": 0.25, "max_ongoing_requests": 8},
    "generator": {"num_cpus": 1.0, "target_ongoing_requests": 32},
    "decoder": {"num_cpus": 0.25, "max_ongoing_requests": 8},
}


def _stage(name: str):
    return Field(default_factory=lambda: StageScalingSettings(**STAGE_DEFAULTS[name]),
                 description=f"the {name} stage's replicas and resources")


class StagesSettings(Section):
    gateway: StageScalingSettings = _stage("gateway")
    encoder: StageScalingSettings = _stage("encoder")
    generator: StageScalingSettings = _stage("generator")
    decoder: StageScalingSettings = _stage("decoder")

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data):
        if not isinstance(data, dict):
            return data  # pydantic names the error
        filled = dict(data)
        for stage in STAGES:
            given = data.get(stage)
            if isinstance(given, dict):
                filled[stage] = {**STAGE_DEFAULTS[stage], **given}
        return filled


__all__ = ["DEFAULT_DEVICE", "EngineSettings", "ModelSettings", "RaySettings", "STAGES",
           "STAGE_DEFAULTS", "Section", "ServerSettings", "StageScalingSettings",
           "StagesSettings", "StorageSettings"]
