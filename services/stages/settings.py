"""What every stage replica is handed (picklable): derived from the one settings model
(services/settings) by ``StageSettings.from_settings``; no default of its own."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.rpc.validation import Limits
from services.settings import DEFAULT_DEVICE, EngineSettings, StorageSettings


@dataclass(frozen=True)
class StageSettings:
    model: str                       # LLM checkpoint directory
    vision_tokenizer: str            # IBQ directory
    tokenizer: str | None = None     # default: the model directory
    device: str = DEFAULT_DEVICE
    engine: EngineSettings = field(default_factory=EngineSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_settings(cls, s, model: str, vision_tokenizer: str,
                      storage: StorageSettings | None = None) -> StageSettings:
        """From ``services.settings.model.Emu35Settings`` with the checkpoint directories
        resolved (a tiny checkpoint written)."""
        return cls(model=model, vision_tokenizer=vision_tokenizer, tokenizer=s.model.tokenizer,
                   device=s.model.device, engine=s.engine, storage=storage or s.storage,
                   limits=s.request_limits())

    # The engine's settings under the names the generator deployment reads.
    @property
    def kv_blocks(self) -> int | None:
        """None: the engine sizes the KV cache (kv_blocks auto)."""
        return self.engine.num_blocks

    @property
    def max_waiting(self) -> int:
        return self.engine.max_waiting

    @property
    def max_num_seqs(self) -> int:
        return self.engine.max_num_seqs

    @property
    def max_batched_tokens(self) -> int:
        return self.engine.max_batched_tokens

    @property
    def tensor_parallel_size(self) -> int:
        return self.engine.tensor_parallel_size


def check_tensor_parallel(size: int) -> None:
    """The engine runs world size 1: refuse a larger group instead of silently using one GPU."""
    if size != 1:
        raise ValueError(f"tensor_parallel_size: {size} GPUs per generator replica requested, "
                         "but the engine runs on one device (world size 1); set it to 1")
