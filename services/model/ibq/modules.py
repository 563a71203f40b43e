"""IBQ Encoder and Decoder (spec §7.2).

Parameter names follow the released checkpoint exactly (``down.{l}.block.{b}.norm1``,
``mid.attn_1.q``, ``up.{l}.upsample.conv`` ...), so ``load_state_dict`` needs no renaming.
The math is the taming-transformers VQGAN stack without timestep embeddings: GroupNorm(32,
eps=1e-6), swish, asymmetric-pad stride-2 downsampling, nearest x2 upsampling, single-head
spatial attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NORM_GROUPS, IBQConfig


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), written out so bf16 rounding matches the reference."""
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """The GroupNorm every block uses (32 groups, eps 1e-6, affine)."""
    return nn.GroupNorm(num_groups=NORM_GROUPS, num_channels=channels, eps=1e-6, affine=True)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> dropout -> conv, plus a residual.

    The residual goes through a 1x1 ``nin_shortcut`` only when the channel count changes,
    which is why that key exists for some blocks and not others.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = conv1x1(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, scale c^-1/2, residual.

    Uses ``scaled_dot_product_attention`` so fused kernels avoid materialising the
    (h*w)^2 score matrix (1 GiB fp32 for a 2048^2 image, spec §7.5).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = group_norm(in_channels)
        self.q = conv1x1(in_channels, in_channels)
        self.k = conv1x1(in_channels, in_channels)
        self.v = conv1x1(in_channels, in_channels)
        self.proj_out = conv1x1(in_channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(proj: nn.Conv2d) -> torch.Tensor:
            # [B, C, H, W] -> [B, 1, H*W, C]: one head whose width is all channels.
            return proj(normed).reshape(b, 1, c, h * w).transpose(-1, -2)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # [B, 1, HW, C] -> [B, C, H, W]
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a 3x3 stride-2 conv (halves each side exactly)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(in_channels, in_channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(in_channels, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid_stack(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels, dropout)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _level(blocks: list[ResnetBlock], with_attn: bool) -> nn.Module:
    """One resolution level: ``block.{b}`` and, at attention resolutions, ``attn.{b}``."""
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(AttnBlock(b.out_channels) for b in blocks if with_attn)
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Pixels [B, in_channels, H, W] -> latents [B, z_channels, H/f, W/f], f = 2^(levels-1).

    Attention is placed by the nominal ``resolution`` halving per level, not by the
    actual input size.
    """

    def __init__(self, cfg: IBQConfig) -> None:
        super().__init__()
        self.num_levels = cfg.num_levels
        self.conv_in = conv3x3(cfg.in_channels, cfg.ch)
        in_mult = (1,) + cfg.ch_mult
        res = cfg.resolution
        self.down = nn.ModuleList()
        for lvl in range(cfg.num_levels):
            block_in, block_out = cfg.ch * in_mult[lvl], cfg.ch * cfg.ch_mult[lvl]
            blocks = [
                ResnetBlock(block_in if b == 0 else block_out, block_out, cfg.dropout)
                for b in range(cfg.num_res_blocks)
            ]
            level = _level(blocks, res in cfg.attn_resolutions)
            if lvl != cfg.num_levels - 1:
                level.downsample = Downsample(block_out)
                res //= 2
            self.down.append(level)
        top = cfg.ch * cfg.ch_mult[-1]
        self.mid = _mid_stack(top, cfg.dropout)
        self.norm_out = group_norm(top)
        self.conv_out = conv3x3(top, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for lvl, level in enumerate(self.down):
            h = _run_level(level, h)
            if lvl != self.num_levels - 1:
                h = level.downsample(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Latents [B, z_channels, h, w] -> pixels [B, out_ch, h*f, w*f] (no tanh).

    ``up`` is indexed by level (``up.0`` is the full-resolution level, without an
    upsample) but run from the lowest resolution upwards, as in the reference.
    """

    def __init__(self, cfg: IBQConfig) -> None:
        super().__init__()
        self.num_levels = cfg.num_levels
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = conv3x3(cfg.z_channels, block_in)
        self.mid = _mid_stack(block_in, cfg.dropout)
        levels: list[nn.Module] = []
        for lvl in reversed(range(cfg.num_levels)):
            block_out = cfg.ch * cfg.ch_mult[lvl]
            blocks = [
                ResnetBlock(block_in if b == 0 else block_out, block_out, cfg.dropout)
                for b in range(cfg.num_res_blocks + 1)
            ]
            level = _level(blocks, res in cfg.attn_resolutions)
            block_in = block_out
            if lvl != 0:
                level.upsample = Upsample(block_out)
                res *= 2
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))  # index == level, as in the checkpoint
        self.norm_out = group_norm(block_in)
        self.conv_out = conv3x3(block_in, cfg.out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for lvl in reversed(range(self.num_levels)):
            h = _run_level(self.up[lvl], h)
            if lvl != 0:
                h = self.up[lvl].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))
