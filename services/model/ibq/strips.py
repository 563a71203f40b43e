"""Strip machinery of the striped IBQ forward (striped.py): 3x3 convs computed a band of output
rows at a time from an input that is never materialised whole, and the strided resamplers.

A conv's input comes from a ``Fill`` (it writes any row range of the activated input into a
buffer: normalise + swish, a plain copy, ...) and each output strip goes to a ``Sink`` (copy into
a tensor, add into the residual, or only take its GroupNorm moments). Sinks take the moments of
each strip right after the conv wrote it, while it is still in L2, so no extra pass over a full
activation is needed for the next GroupNorm.

Activations are channels_last (NHWC) throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernels.group_norm import Moments, conv_epilogue, group_moments, group_stats, \
    norm_swish_into, stats_from_moments

from .config import NORM_GROUPS

CHANNELS_LAST = torch.channels_last
# Target size of one strip's conv input per image: small next to a 512 MiB activation, large
# enough that each strip's conv is still a big GEMM (64 rows of 1024 x 256 in bf16).
DEFAULT_STRIP_BYTES = 32 * 1024 * 1024
# Working set of one ResnetBlock per image group (input, shortcut, kept conv1 rows, strips):
# 1e9 bytes less margin for cuDNN workspaces and the stats partials.
DEFAULT_LEVEL_BYTES = 840 * 1024 * 1024
# Per-image activation size above which a level runs a few images at a time.
DEFAULT_GROUP_BYTES = 256 * 1024 * 1024

# fill(dst, lo, hi): write rows [lo, hi) of a conv's (activated) input into dst [B, C, hi-lo, W].
Fill = Callable[[torch.Tensor, int, int], None]
# sink(r0, r1, y, bias): take output rows [r0, r1) of a conv, y [B, Cout, r1-r0, W], whose
# bias is still to be added (None: y already has it).
Sink = Callable[[int, int, torch.Tensor, torch.Tensor | None], None]


@dataclass(frozen=True)
class StripPlan:
    """How the striped forward cuts its work.

    strip_bytes: conv input bytes per image and strip. impl: ``"triton"`` or ``"reference"``
    (kernels.group_norm). subpixel: nearest-x2 + 3x3 conv as four 2x2 convs on the low-res input
    (4/9 of the FLOPs, no upsampled copy). level_bytes: budget of one ResnetBlock's working set
    per image group; when its input plus its whole conv1 output would not fit, only the first
    rows of the conv1 output are kept and the rest recomputed (None: keep all). group_bytes:
    levels whose per-image activation is larger run ``group_bytes // size`` images at a time
    (at least one) instead of the whole batch (None: whole batch).
    """

    strip_bytes: int = DEFAULT_STRIP_BYTES
    impl: str = "reference"
    subpixel: bool = True
    level_bytes: int | None = DEFAULT_LEVEL_BYTES
    group_bytes: int | None = DEFAULT_GROUP_BYTES
    fused_epilogue: bool = True
    attention: str = "explicit"

    def rows(self, width: int, channels: int, dtype: torch.dtype) -> int:
        """Output rows per strip for a conv whose input is [*, channels, *, width]."""
        row_bytes = width * channels * torch.empty((), dtype=dtype).element_size()
        return max(1, self.strip_bytes // row_bytes)

    def images_per_group(self, bytes_per_image: int) -> int | None:
        """Images run together at a step of this per-image size (None: the whole batch)."""
        if self.group_bytes is None:
            return None
        return max(1, self.group_bytes // max(1, bytes_per_image))


def plan_for(device: torch.device, strip_bytes: int = DEFAULT_STRIP_BYTES,
             **options) -> StripPlan:
    """The plan for ``device``: fused Triton kernels on CUDA when available."""
    from kernels.registry import elementwise_ops_name

    return StripPlan(strip_bytes, elementwise_ops_name(device), **options)


def empty_like_rows(like: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    return torch.empty(like.shape[0], channels, height, width, dtype=like.dtype,
                       device=like.device, memory_format=CHANNELS_LAST)


def conv_rows(fill: Fill, conv: nn.Conv2d, like: torch.Tensor, size: tuple[int, int],
              plan: StripPlan, lo: int, hi: int, sink: Sink) -> None:
    """Output rows [lo, hi) of a stride-1, padding-1 3x3 conv, strip by strip, into ``sink``.

    The input ([B, Cin, *size], batch/dtype/device of ``like``) exists only as ``fill``: each
    strip's rows plus a 1-row halo (zero rows at the image edge, zero columns via padding).
    """
    height, width = size
    rows = plan.rows(width, conv.in_channels, like.dtype)
    for r0 in range(lo, hi, rows):
        r1 = min(r0 + rows, hi)
        a, b = max(r0 - 1, 0), min(r1 + 1, height)
        buf = empty_like_rows(like, conv.in_channels, r1 - r0 + 2, width)  # rows r0-1 .. r1
        if a > r0 - 1:
            buf[:, :, 0].zero_()
        if b < r1 + 1:
            buf[:, :, -1].zero_()
        fill(buf[:, :, a - r0 + 1: b - r0 + 1], a, b)
        y = F.conv2d(buf, conv.weight, _conv_bias(conv, plan), padding=(0, 1))  # [B, Co, n, W]
        del buf
        sink(r0, r1, y, _sink_bias(conv, plan))
        del y  # before the next strip's buffer is allocated


def moments_of(t: torch.Tensor, plan: StripPlan) -> Moments:
    return group_moments(t, NORM_GROUPS, plan.impl)


def _conv_bias(conv: nn.Conv2d, plan: StripPlan) -> torch.Tensor | None:
    """The bias F.conv2d adds itself (None when the fused epilogue adds it)."""
    return None if plan.fused_epilogue else conv.bias


def _sink_bias(conv: nn.Conv2d, plan: StripPlan) -> torch.Tensor | None:
    return conv.bias if plan.fused_epilogue else None


def finish(y: torch.Tensor, bias: torch.Tensor | None, dst: torch.Tensor | None, add: bool,
           plan: StripPlan, stats: list[Moments] | None) -> None:
    """Bias (if still due), then copy into / add into ``dst`` (or neither), then the moments of
    the result into ``stats``: one fused pass when ``bias`` is given (plan.fused_epilogue)."""
    if bias is not None:
        moments = conv_epilogue(y, bias, dst, add, NORM_GROUPS if stats is not None else None,
                                plan.impl)
        if stats is not None:
            stats.append(moments)
        return
    if dst is not None:
        dst.add_(y) if add else dst.copy_(y)
        y = dst
    if stats is not None:
        stats.append(moments_of(y, plan))


def write_to(out: torch.Tensor, plan: StripPlan, row0: int = 0,
             stats: list[Moments] | None = None) -> Sink:
    """Copy each strip into ``out`` (whose row 0 is conv row ``row0``), taking its moments."""
    def sink(r0: int, r1: int, y: torch.Tensor, bias: torch.Tensor | None) -> None:
        finish(y, bias, out[:, :, r0 - row0: r1 - row0], False, plan, stats)
    return sink


def add_to(out: torch.Tensor, plan: StripPlan, stats: list[Moments] | None = None) -> Sink:
    """Add each strip into ``out`` (the residual), taking the moments of the sum."""
    def sink(r0: int, r1: int, y: torch.Tensor, bias: torch.Tensor | None) -> None:
        finish(y, bias, out[:, :, r0:r1], True, plan, stats)
    return sink


def stats_only(stats: list[Moments], plan: StripPlan) -> Sink:
    return lambda r0, r1, y, bias: finish(y, bias, None, False, plan, stats)


def copy_fill(x: torch.Tensor) -> Fill:
    """Rows of x as they are (a conv applied straight to x)."""
    return lambda dst, lo, hi: dst.copy_(x[:, :, lo:hi])


def norm_fill(norm: nn.GroupNorm, x: torch.Tensor, plan: StripPlan,
              stats: list[Moments] | None = None, row0: int = 0, swish: bool = True) -> Fill:
    """Rows of swish(norm(x)) (x's row 0 is row ``row0``), from moments gathered over the whole
    tensor (``stats``, or one pass over x when None)."""
    if stats:
        mean, rstd = stats_from_moments(stats, norm.eps)
    else:
        mean, rstd = group_stats(x, norm.num_groups, norm.eps, plan.impl)
    return lambda dst, lo, hi: norm_swish_into(x[:, :, lo - row0:hi - row0], dst, mean, rstd,
                                               norm.weight, norm.bias, swish, plan.impl)


def conv3x3(conv: nn.Conv2d, fill: Fill, like: torch.Tensor, plan: StripPlan,
            stats: list[Moments] | None = None) -> torch.Tensor:
    """A new [B, Cout, H, W] tensor: conv of the input ``fill`` writes (H, W from ``like``)."""
    height, width = like.shape[2], like.shape[3]
    out = empty_like_rows(like, conv.out_channels, height, width)
    conv_rows(fill, conv, like, (height, width), plan, 0, height, write_to(out, plan, 0, stats))
    return out


def downsample(conv: nn.Conv2d, x: torch.Tensor, plan: StripPlan,
               stats: list[Moments] | None = None) -> torch.Tensor:
    """Downsample.forward (pad right/bottom by one, 3x3 stride 2), padding each strip only."""
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = (height - 2) // 2 + 1, (width - 2) // 2 + 1
    out = empty_like_rows(x, conv.out_channels, out_h, out_w)
    sink = write_to(out, plan, 0, stats)
    rows = max(1, plan.rows(width, conv.in_channels, x.dtype) // 2)
    for o0 in range(0, out_h, rows):
        o1 = min(o0 + rows, out_h)
        i0, i1 = 2 * o0, 2 * o1 + 1  # input rows for output rows [o0, o1); row H is the pad
        real = min(i1, height)
        buf = empty_like_rows(x, conv.in_channels, i1 - i0, width + 1)
        buf[:, :, :, width].zero_()
        if real < i1:
            buf[:, :, real - i0:].zero_()
        buf[:, :, :real - i0, :width].copy_(x[:, :, i0:real])
        y = F.conv2d(buf, conv.weight, _conv_bias(conv, plan), stride=2)
        del buf
        sink(o0, o1, y, _sink_bias(conv, plan))
        del y
    return out


# Nearest x2 then a 3x3 conv: output row 2i+p sees input rows (i-1, i) with taps (w0, w1 + w2)
# when p = 0 and rows (i, i+1) with taps (w0 + w1, w2) when p = 1; the same along columns.
_PHASE_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))


def subpixel_weights(conv: nn.Conv2d) -> list[torch.Tensor]:
    """The four 2x2 kernels [Cout, Cin, 2, 2] (phases (0,0), (0,1), (1,0), (1,1)), summed in
    fp32 from the 3x3 weight and rounded once to its dtype."""
    w = conv.weight.float()
    taps = torch.tensor(_PHASE_TAPS, dtype=torch.float32, device=w.device)  # [phase, 2, 3]
    return [torch.einsum("ak,bl,oikl->oiab", taps[py], taps[px], w).to(conv.weight.dtype)
            .contiguous(memory_format=CHANNELS_LAST) for py in (0, 1) for px in (0, 1)]


def upsample(conv: nn.Conv2d, x: torch.Tensor, plan: StripPlan,
             stats: list[Moments] | None = None) -> torch.Tensor:
    """Upsample.forward (nearest x2, then a 3x3 conv) without an upsampled copy of x."""
    height, width = x.shape[2], x.shape[3]
    out = empty_like_rows(x, conv.out_channels, 2 * height, 2 * width)
    if not plan.subpixel:
        def fill(dst: torch.Tensor, lo: int, hi: int) -> None:
            src = x[:, :, lo // 2: (hi - 1) // 2 + 1]  # low-res rows covering [lo, hi)
            up = F.interpolate(src, scale_factor=2.0, mode="nearest")
            off = lo - 2 * (lo // 2)
            dst.copy_(up[:, :, off: off + hi - lo])

        conv_rows(fill, conv, out, (2 * height, 2 * width), plan, 0, 2 * height,
                  write_to(out, plan, 0, stats))
        return out
    kernels = subpixel_weights(conv)
    rows = plan.rows(width, conv.in_channels, x.dtype)
    for a in range(0, height, rows):
        b = min(a + rows, height)
        lo, hi = max(a - 1, 0), min(b + 1, height)
        pad = empty_like_rows(x, conv.in_channels, b - a + 2, width + 2)  # rows a-1 .. b
        pad[:, :, :, 0].zero_()
        pad[:, :, :, -1].zero_()
        if lo > a - 1:
            pad[:, :, 0].zero_()
        if hi < b + 1:
            pad[:, :, -1].zero_()
        pad[:, :, lo - a + 1: hi - a + 1, 1: width + 1].copy_(x[:, :, lo:hi])
        for phase, kernel in enumerate(kernels):
            py, px = divmod(phase, 2)
            y = F.conv2d(pad, kernel, _conv_bias(conv, plan))  # [B, Cout, b-a+1, W+1]
            # each phase uses b-a rows x W columns of y, interleaved into out
            finish(y[:, :, py: py + b - a, px: px + width], _sink_bias(conv, plan),
                   out[:, :, 2 * a + py: 2 * b: 2, px::2], False, plan,
                   stats if plan.fused_epilogue else None)
            del y
        del pad
        if stats is not None and not plan.fused_epilogue:
            stats.append(moments_of(out[:, :, 2 * a: 2 * b], plan))
    return out
