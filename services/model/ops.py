"""Reference math for the Emu3.5 layers (spec §1.2): the RoPE tables here; the elementwise ops
(RMSNorm, RoPE, SwiGLU) are defined in :mod:`kernels.fused_norm` beside their fused kernels
and re-exported under their model names."""
from __future__ import annotations

import torch

from kernels.fused_norm import apply_rope_reference as apply_rope  # noqa: F401
from kernels.fused_norm import rms_norm_reference as rms_norm  # noqa: F401
from kernels.fused_norm import rotate_half  # noqa: F401

from .config import Emu35Config


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # Same expression (and so the same fp32 rounding) as the reference rotary module.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_tables(config: Emu35Config, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin tables [max_position_embeddings, head_dim] in NeoX layout.

    Dynamic NTK scaling only changes positions past max_position_embeddings, which the
    engine never admits, so inside the table it equals plain RoPE, as in the reference.
    """
    inv_freq = rope_inv_freq(config.head_dim, config.rope_theta).to(device)
    t = torch.arange(config.max_position_embeddings, device=device, dtype=torch.int64).float()
    scaling = config.rope_scaling
    if scaling is not None and scaling.type == "linear":
        t = t / scaling.factor
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()
