"""AttnBlock.forward at the lowest level of the striped forward, as explicit matmuls.

At 1024^2 the attention runs over hw = 4096 positions with one head of C = 512..1024 channels:
too wide for the fused flash / cuDNN kernels, so SDPA falls back to the memory-efficient kernel
(~0.75 ms a call on an H200). Written out it is three GEMMs and a softmax over a 64 MiB fp32
score matrix per image (spec §7.5; the reference computes it the same way): scores from bf16 Q
and K with fp32 output (no rounding of the logits), softmax in fp32, P rounded to the network
dtype for P V. Images run one at a time so the score matrix never scales with the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.group_norm import group_stats, norm_swish_into

from .modules import AttnBlock


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q [n, C] @ k[n, C]^T as fp32 [n, n], without rounding the products' sum to q's dtype."""
    if q.is_cuda and q.dtype != torch.float32:
        try:
            return torch.mm(q, k.T, out_dtype=torch.float32)  # cuBLAS: bf16 in, fp32 out
        except (RuntimeError, TypeError):  # older torch: exact upcast, slower fp32 GEMM
            pass
    return q.float() @ k.float().T


def _conv1x1(block: AttnBlock, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1x1 convs ``names`` of ``block`` stacked as one linear layer (weight [n*C, C])."""
    convs = [getattr(block, n) for n in names]
    weight = torch.cat([c.weight.reshape(c.out_channels, c.in_channels) for c in convs])
    return weight, torch.cat([c.bias for c in convs])


def attn_block(block: AttnBlock, x: torch.Tensor, impl: str = "reference") -> torch.Tensor:
    """``block(x)`` for a channels_last x [B, C, h, w]; returns a new channels_last tensor."""
    b, c, h, w = x.shape
    norm = block.norm
    mean, rstd = group_stats(x, norm.num_groups, norm.eps, impl)
    normed = torch.empty_like(x, memory_format=torch.channels_last)
    norm_swish_into(x.contiguous(memory_format=torch.channels_last), normed, mean, rstd,
                    norm.weight, norm.bias, False, impl)
    tokens = normed.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: NHWC memory
    qkv = F.linear(tokens, *_conv1x1(block, ("q", "k", "v")))  # [B, hw, 3C]
    del normed, tokens
    out = torch.empty(b, h * w, c, dtype=x.dtype, device=x.device)
    scale = c ** -0.5
    for i in range(b):
        q, k, v = qkv[i].split(c, dim=1)  # each [hw, C], row stride 3C
        probs = _scores(q, k).mul_(scale).softmax(dim=-1).to(x.dtype)  # [hw, hw]
        torch.mm(probs, v, out=out[i])
        del probs
    proj = F.linear(out, *_conv1x1(block, ("proj_out",)))  # [B, hw, C]
    return x + proj.view(b, h, w, c).permute(0, 3, 1, 2)
