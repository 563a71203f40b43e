"""The engine's settings (a frozen record made once) and its fatal error."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from kernels.registry import KernelChoice

from .scheduler import SchedulerConfig


@dataclass(frozen=True)
class EngineConfig:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    attention: str | None = None  # "reference" | "triton" | "flash"; None: kernels.attention
    # Decode steps replay CUDA graphs when the device and attention allow (runner.py).
    cuda_graphs: bool = True
    # With scheduler.num_blocks None, the KV cache takes what this fraction of the device's
    # memory leaves after weights, activations and graphs (memory.py).
    gpu_memory_utilization: float = 0.90
    sampling: str | None = None   # guided scores: "reference" | "triton"; None: kernels.sampling
    # step() launches the next forward before producing the last step's events, so the
    # device does not wait for them (False: each step() runs one step start to finish).
    pipeline: bool = True
    # A step that raises fails the requests it was running and the engine goes on; this many
    # failing in a row (a broken device, say) raise EngineDead instead.
    max_failed_steps: int = 3
    # Every kernel switch, resolved once: from the EMU35_* environment when the config is
    # made (the model and runner take it from here; no forward reads the environment).
    # ``attention`` and ``sampling`` above, when set, override it.
    kernels: KernelChoice = field(default_factory=KernelChoice.from_env)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", replace(
            self.kernels, attention=self.attention or self.kernels.attention,
            sampling=self.sampling or self.kernels.sampling))
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got "
                             f"{self.gpu_memory_utilization}")
        if self.max_failed_steps < 1:
            raise ValueError(f"max_failed_steps must be >= 1, got {self.max_failed_steps}")


class EngineDead(RuntimeError):
    """The engine cannot serve any more (its steps keep failing); the message is the cause."""
