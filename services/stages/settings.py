"""Deploy-time settings handed to every stage replica (picklable)."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.storage import StorageSettings

APP_NAMES = {"gateway": "emu35-gateway", "encoder": "emu35-encoder",
             "generator": "emu35-generator", "decoder": "emu35-decoder"}


@dataclass(frozen=True)
class StageSettings:
    model: str                       # LLM checkpoint directory
    vision_tokenizer: str            # IBQ directory
    tokenizer: str | None = None     # default: the model directory
    device: str = "cpu"
    kv_blocks: int = 4096            # paged-KV blocks per generator replica
    max_waiting: int = 256           # generator queue bound: beyond it RESOURCE_EXHAUSTED
    max_num_seqs: int = 64           # rows (streams) per engine step
    max_batched_tokens: int = 2048   # tokens per engine step
    tensor_parallel_size: int = 1    # GPUs per generator replica (the engine runs 1 today)
    proxy_target: str = "127.0.0.1:9000"  # Serve's gRPC proxy, for stage-to-stage calls
    app_names: dict = field(default_factory=lambda: dict(APP_NAMES))
    storage: StorageSettings = field(default_factory=StorageSettings)


def check_tensor_parallel(size: int) -> None:
    """The engine runs world size 1: refuse a larger group instead of silently using one GPU."""
    if size != 1:
        raise ValueError(f"tensor_parallel_size: {size} GPUs per generator replica requested, "
                         "but the engine runs on one device (world size 1); set it to 1")
