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
    kv_blocks: int = 4096
    max_waiting: int = 256
    proxy_target: str = "127.0.0.1:9000"  # Serve's gRPC proxy, for stage-to-stage calls
    app_names: dict = field(default_factory=lambda: dict(APP_NAMES))
    storage: StorageSettings = field(default_factory=StorageSettings)
