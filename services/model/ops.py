"""Reference math for the Emu3.5 layers (spec §1.2). Fused kernels must equal these."""
from __future__ import annotations

import torch

from .config import Emu35Config


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama-order RMSNorm: normalise in fp32, cast back to x's dtype, then scale."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, D]; cos/sin: [T, D] fp32 rows for each token's position, cast to x's dtype
    before rotating (the reference's HF path)."""
    cos = cos.to(x.dtype).unsqueeze(1)
    sin = sin.to(x.dtype).unsqueeze(1)
    return x * cos + rotate_half(x) * sin
