"""Memory-lean inference forward for the IBQ Encoder/Decoder: same parameters, same math.

At 1024^2 one 256-channel bf16 activation is 512 MiB, and the plain forward keeps several
alive at once (block input, normalised copy, swish copy, conv output, padded or upsampled
copies). This forward instead:

- computes each GroupNorm's statistics once over the whole tensor (:mod:`kernels.group_norm`),
  then writes normalise + affine + swish strip by strip straight into the next conv's input;
- runs every 3x3 conv on horizontal strips of output rows with a 1-row halo above and below
  (zero rows at the image edge, zero columns through ``padding=(0, 1)``), so at most two full
  activations (a ResnetBlock's input and its conv1 output) plus strip buffers are alive;
- adds residuals in place and pads (downsample) or upsamples per strip.

Activations are channels_last (NHWC). Results equal the plain ``forward`` up to float
rounding (tests/model/test_ibq_striped.py). Inference only: dropout is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernels.group_norm import group_stats, norm_swish_into
from kernels.registry import elementwise_ops_name

from .modules import Decoder, Encoder, ResnetBlock

CHANNELS_LAST = torch.channels_last
# Target size of one strip's conv input per image: small next to a 512 MiB activation, large
# enough that each strip's conv is still a big GEMM (64 rows of 1024 x 256 in bf16).
DEFAULT_STRIP_BYTES = 32 * 1024 * 1024

# fill(dst, lo, hi): write rows [lo, hi) of a conv's (activated) input into dst [B, C, hi-lo, W].
Fill = Callable[[torch.Tensor, int, int], None]


@dataclass(frozen=True)
class StripPlan:
    """How to cut a level into strips: bytes of conv input per image and the kernel choice."""

    strip_bytes: int = DEFAULT_STRIP_BYTES
    impl: str = "reference"  # "triton" or "reference" (kernels.group_norm)

    def rows(self, width: int, channels: int, dtype: torch.dtype) -> int:
        """Output rows per strip for a conv whose input is [*, channels, *, width]."""
        row_bytes = width * channels * torch.empty((), dtype=dtype).element_size()
        return max(1, self.strip_bytes // row_bytes)


def plan_for(device: torch.device, strip_bytes: int = DEFAULT_STRIP_BYTES) -> StripPlan:
    """The plan for ``device``: fused Triton kernels on CUDA when available."""
    return StripPlan(strip_bytes, elementwise_ops_name(device))


def _empty(like: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    return torch.empty(like.shape[0], channels, height, width, dtype=like.dtype,
                       device=like.device, memory_format=CHANNELS_LAST)


def conv3x3_strips(fill: Fill, conv: nn.Conv2d, out: torch.Tensor, plan: StripPlan,
                   accumulate: bool = False) -> None:
    """``out (+)= conv(input)`` for a stride-1, padding-1 3x3 conv, strip by strip.

    The input is never materialised whole: ``fill`` writes each strip's rows plus its halo.
    out: [B, Cout, H, W]; accumulate adds into it (the residual), else overwrites.
    """
    height, width = out.shape[2], out.shape[3]
    rows = plan.rows(width, conv.in_channels, out.dtype)
    for r0 in range(0, height, rows):
        r1 = min(r0 + rows, height)
        lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
        buf = _empty(out, conv.in_channels, r1 - r0 + 2, width)  # rows r0-1 .. r1
        if lo > r0 - 1:
            buf[:, :, 0].zero_()
        if hi < r1 + 1:
            buf[:, :, -1].zero_()
        fill(buf[:, :, lo - r0 + 1: hi - r0 + 1], lo, hi)
        y = F.conv2d(buf, conv.weight, conv.bias, padding=(0, 1))  # [B, Cout, r1-r0, W]
        del buf
        if accumulate:
            out[:, :, r0:r1].add_(y)
        else:
            out[:, :, r0:r1].copy_(y)
        del y  # before the next strip's buffer is allocated


def copy_fill(x: torch.Tensor) -> Fill:
    """Rows of x as they are (a conv applied straight to x)."""
    return lambda dst, lo, hi: dst.copy_(x[:, :, lo:hi])


def norm_fill(norm: nn.GroupNorm, x: torch.Tensor, plan: StripPlan, swish: bool = True) -> Fill:
    """Rows of swish(norm(x)), from statistics taken once over all of x."""
    mean, rstd = group_stats(x, norm.num_groups, norm.eps, plan.impl)
    return lambda dst, lo, hi: norm_swish_into(x[:, :, lo:hi], dst, mean, rstd, norm.weight,
                                               norm.bias, swish, plan.impl)


def resnet_block(block: ResnetBlock, x: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """ResnetBlock.forward, consuming x: the residual is added into x (or its shortcut)."""
    h = _empty(x, block.out_channels, x.shape[2], x.shape[3])
    conv3x3_strips(norm_fill(block.norm1, x, plan), block.conv1, h, plan)
    if block.in_channels != block.out_channels:
        x = block.nin_shortcut(x).contiguous(memory_format=CHANNELS_LAST)
    conv3x3_strips(norm_fill(block.norm2, h, plan), block.conv2, x, plan, accumulate=True)
    return x


def downsample(conv: nn.Conv2d, x: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Downsample.forward (pad right/bottom by one, 3x3 stride 2), padding each strip only."""
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = (height - 2) // 2 + 1, (width - 2) // 2 + 1
    out = _empty(x, conv.out_channels, out_h, out_w)
    rows = max(1, plan.rows(width, conv.in_channels, x.dtype) // 2)
    for o0 in range(0, out_h, rows):
        o1 = min(o0 + rows, out_h)
        i0, i1 = 2 * o0, 2 * o1 + 1  # input rows for output rows [o0, o1); row H is the pad
        piece = F.pad(x[:, :, i0:min(i1, height)], (0, 1, 0, i1 - min(i1, height)))
        piece = piece.contiguous(memory_format=CHANNELS_LAST)
        out[:, :, o0:o1].copy_(F.conv2d(piece, conv.weight, conv.bias, stride=2))
    return out


def upsample(conv: nn.Conv2d, x: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Upsample.forward (nearest x2, then a 3x3 conv), upsampling only each strip's rows."""
    out = _empty(x, conv.out_channels, 2 * x.shape[2], 2 * x.shape[3])

    def fill(dst: torch.Tensor, lo: int, hi: int) -> None:
        src = x[:, :, lo // 2: (hi - 1) // 2 + 1]  # low-res rows covering [lo, hi)
        up = F.interpolate(src, scale_factor=2.0, mode="nearest")
        off = lo - 2 * (lo // 2)
        dst.copy_(up[:, :, off: off + hi - lo])

    conv3x3_strips(fill, conv, out, plan)
    return out


def conv3x3(conv: nn.Conv2d, fill: Fill, like: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """A new [B, Cout, H, W] tensor: conv of the input ``fill`` writes (H, W from ``like``)."""
    out = _empty(like, conv.out_channels, like.shape[2], like.shape[3])
    conv3x3_strips(fill, conv, out, plan)
    return out


def _level(level: nn.Module, h: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = resnet_block(block, h, plan)
        if len(level.attn) > 0:  # lowest resolution only: small, the plain block is fine
            h = level.attn[i](h).contiguous(memory_format=CHANNELS_LAST)
    return h


def _mid(mid: nn.Module, h: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    h = resnet_block(mid.block_1, h, plan)
    h = mid.attn_1(h).contiguous(memory_format=CHANNELS_LAST)
    return resnet_block(mid.block_2, h, plan)


def encode_striped(encoder: Encoder, x: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Encoder.forward: pixels [B, 3, H, W] -> latents [B, z, H/f, W/f] (channels_last)."""
    x = x.contiguous(memory_format=CHANNELS_LAST)
    h = conv3x3(encoder.conv_in, copy_fill(x), x, plan)
    for lvl, level in enumerate(encoder.down):
        h = _level(level, h, plan)
        if lvl != encoder.num_levels - 1:
            h = downsample(level.downsample.conv, h, plan)
    h = _mid(encoder.mid, h, plan)
    return conv3x3(encoder.conv_out, norm_fill(encoder.norm_out, h, plan), h, plan)


def decode_striped(decoder: Decoder, z: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Decoder.forward: latents [B, z, h, w] -> pixels [B, 3, h*f, w*f] (channels_last)."""
    z = z.contiguous(memory_format=CHANNELS_LAST)
    h = _mid(decoder.mid, conv3x3(decoder.conv_in, copy_fill(z), z, plan), plan)
    for lvl in reversed(range(decoder.num_levels)):
        h = _level(decoder.up[lvl], h, plan)
        if lvl != 0:
            h = upsample(decoder.up[lvl].upsample.conv, h, plan)
    return conv3x3(decoder.conv_out, norm_fill(decoder.norm_out, h, plan), h, plan)
