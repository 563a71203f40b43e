"""Memory-lean inference forward for the IBQ Encoder/Decoder: same parameters, same math.

At 1024^2 one 256-channel bf16 activation is 512 MiB, and the plain forward keeps several
alive at once (block input, normalised copy, swish copy, conv output, padded or upsampled
copies). This forward instead (strip machinery in strips.py):

- runs every 3x3 conv on horizontal strips of output rows, its input written strip by strip
  (normalise + affine + swish straight into the conv's input buffer), and takes each GroupNorm's
  statistics from the previous conv's output strips while they are in L2;
- adds residuals in place; pads (downsample) per strip; upsamples as four 2x2 sub-pixel convs
  on the low-resolution input, never materialising the upsampled tensor;
- bounds a ResnetBlock's working set (``StripPlan.level_bytes``): the block input and its conv1
  output together are 1 GiB at 1024^2, so past the budget only the first rows of the conv1 output
  are kept and the others recomputed after conv2 has consumed the kept ones;
- runs the large levels a few images at a time (``StripPlan.group_bytes``) and the small ones
  on the whole batch, so the peak stays near one image's while the many small launches of the
  low-resolution levels are shared by the batch.

Activations are channels_last (NHWC). Results equal the plain ``forward`` up to float
rounding (tests/model/test_ibq_striped.py). Inference only: dropout is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from kernels.group_norm import Moments

from .attention import attn_block
from .modules import AttnBlock, Decoder, Encoder, ResnetBlock
from .strips import (CHANNELS_LAST, DEFAULT_STRIP_BYTES, StripPlan, add_to, conv3x3, conv_rows,
                     copy_fill, downsample, empty_like_rows, norm_fill, plan_for, stats_only,
                     upsample, write_to)

__all__ = ["DEFAULT_STRIP_BYTES", "StripPlan", "plan_for", "encode_striped", "decode_striped",
           "resnet_block", "kept_rows"]

Stats = list[Moments] | None  # moments of a tensor gathered by its producer, if any


def kept_rows(block: ResnetBlock, x: torch.Tensor, plan: StripPlan) -> int:
    """Rows of the conv1 output kept whole (all H, or H/2+2 .. H-1 within ``level_bytes``)."""
    b, c, height, width = x.shape
    if plan.level_bytes is None:
        return height
    el = x.element_size()
    h_row = b * block.out_channels * width * el
    fixed = x.numel() * el + 2 * b * plan.strip_bytes * max(1, block.out_channels // c)
    if block.in_channels != block.out_channels:
        fixed += height * h_row  # the shortcut's output, the residual accumulator
    avail = (plan.level_bytes - fixed) // h_row
    if avail >= height or height // 2 + 2 >= height:
        return height
    return max(height // 2 + 2, avail)  # the recomputed tail never needs more than the head


def resnet_block(block: ResnetBlock, x: torch.Tensor, plan: StripPlan,
                 stats: Stats = None) -> tuple[torch.Tensor, Stats]:
    """ResnetBlock.forward, consuming x (the residual is added into x or its shortcut).

    Returns the output and its GroupNorm moments. With K = :func:`kept_rows` < H: conv1 rows
    [0, K) are stored, rows [K, H) only counted for the norm2 statistics; conv2 then produces
    output rows [0, K-1) from the stored rows, which frees them, and rows [K-1, H) from conv1
    rows recomputed out of x rows [K-1, H) (not yet overwritten by the residual).
    """
    height, width = x.shape[2], x.shape[3]
    size, cout = (height, width), block.out_channels
    fill1 = norm_fill(block.norm1, x, plan, stats)
    keep = kept_rows(block, x, plan)
    h_stats: list[Moments] = []
    head = empty_like_rows(x, cout, keep, width)
    conv_rows(fill1, block.conv1, x, size, plan, 0, keep, write_to(head, plan, 0, h_stats))
    if keep < height:
        conv_rows(fill1, block.conv1, x, size, plan, keep, height, stats_only(h_stats, plan))
    res = x
    if block.in_channels != block.out_channels:
        res = block.nin_shortcut(x).contiguous(memory_format=CHANNELS_LAST)
    out_stats: list[Moments] = []
    fill2 = norm_fill(block.norm2, head, plan, h_stats)
    done = height if keep == height else keep - 1
    conv_rows(fill2, block.conv2, x, size, plan, 0, done, add_to(res, plan, out_stats))
    if keep < height:
        edge = head[:, :, keep - 2:].clone()  # conv1 rows K-2, K-1: conv2's upper halo
        del head, fill2  # before the tail exists: head and tail together would pass the budget
        tail = empty_like_rows(x, cout, height - keep + 2, width)  # conv1 rows K-2 .. H-1
        tail[:, :, :2].copy_(edge)
        del edge
        conv_rows(fill1, block.conv1, x, size, plan, keep, height, write_to(tail, plan, keep - 2))
        fill2 = norm_fill(block.norm2, tail, plan, h_stats, row0=keep - 2)
        conv_rows(fill2, block.conv2, x, size, plan, done, height, add_to(res, plan, out_stats))
    return res, out_stats


def attention(block: AttnBlock, h: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """AttnBlock.forward on a channels_last h, by ``plan.attention``."""
    if plan.attention == "explicit":
        return attn_block(block, h, plan.impl)
    return block(h).contiguous(memory_format=CHANNELS_LAST)


def _level(level: nn.Module, h: torch.Tensor, plan: StripPlan,
           stats: Stats) -> tuple[torch.Tensor, Stats]:
    for i, block in enumerate(level.block):
        h, stats = resnet_block(block, h, plan, stats)
        if len(level.attn) > 0:  # lowest resolution only
            h, stats = attention(level.attn[i], h, plan), None
    return h, stats


def _mid(mid: nn.Module, h: torch.Tensor, plan: StripPlan,
         stats: Stats) -> tuple[torch.Tensor, Stats]:
    h, _ = resnet_block(mid.block_1, h, plan, stats)
    h = attention(mid.attn_1, h, plan)
    return resnet_block(mid.block_2, h, plan)


@dataclass(frozen=True)
class Step:
    """One stage of a forward: ``run(h, stats) -> (h, stats)``; ``image_bytes`` sizes its
    largest activation per image; ``consumes`` when it overwrites its input."""

    run: Callable[[torch.Tensor, Stats], tuple[torch.Tensor, Stats]]
    image_bytes: int
    consumes: bool = False


def _run_grouped(steps: list[Step], x: torch.Tensor, group: int) -> torch.Tensor:
    """Run ``steps`` on ``group`` images at a time, gathering the results into one batch."""
    out = None
    for i0 in range(0, x.shape[0], group):
        h = x[i0: i0 + group]
        h, stats = (h.clone() if steps[0].consumes else h), None
        for step in steps:
            h, stats = step.run(h, stats)
        if out is None:
            out = torch.empty((x.shape[0],) + tuple(h.shape[1:]), dtype=h.dtype,
                              device=h.device, memory_format=CHANNELS_LAST)
        out[i0: i0 + group].copy_(h)
        del h, stats
    return out


def _run_steps(steps: list[Step], x: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Consecutive steps that fit the whole batch run batched; the others run in image groups
    sized by their largest step."""
    batch, i, stats = x.shape[0], 0, None
    while i < len(steps):
        group = plan.images_per_group(steps[i].image_bytes)
        j = i + 1
        if group is None or group >= batch:
            while j < len(steps) and (plan.images_per_group(steps[j].image_bytes) or batch) >= batch:
                j += 1
            for step in steps[i:j]:
                x, stats = step.run(x, stats)
        else:
            while j < len(steps) and (plan.images_per_group(steps[j].image_bytes) or batch) < batch:
                group = min(group, plan.images_per_group(steps[j].image_bytes))
                j += 1
            x, stats = _run_grouped(steps[i:j], x, group), None
        i = j
    return x


def _bytes(x: torch.Tensor, channels: int, height: int, width: int) -> int:
    return channels * height * width * x.element_size()


def encode_striped(encoder: Encoder, x: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Encoder.forward: pixels [B, 3, H, W] -> latents [B, z, H/f, W/f] (channels_last)."""
    x = x.contiguous(memory_format=CHANNELS_LAST)
    height, width = x.shape[2], x.shape[3]

    def conv_in(h, _):
        out_stats: list[Moments] = []
        return conv3x3(encoder.conv_in, copy_fill(h), h, plan, out_stats), out_stats

    steps = [Step(conv_in, _bytes(x, encoder.conv_in.out_channels, height, width))]
    for lvl, level in enumerate(encoder.down):
        size = _bytes(x, level.block[-1].out_channels, height, width)
        steps.append(Step(lambda h, s, level=level: _level(level, h, plan, s), size, True))
        if lvl != encoder.num_levels - 1:
            def down(h, _, conv=level.downsample.conv):
                out_stats: list[Moments] = []
                return downsample(conv, h, plan, out_stats), out_stats

            steps.append(Step(down, size))
            height, width = (height - 2) // 2 + 1, (width - 2) // 2 + 1
    steps.append(Step(lambda h, s: _mid(encoder.mid, h, plan, s), 0, True))
    steps.append(Step(lambda h, s: (conv3x3(encoder.conv_out, norm_fill(
        encoder.norm_out, h, plan, s), h, plan), None), 0))
    return _run_steps(steps, x, plan)


def decode_striped(decoder: Decoder, z: torch.Tensor, plan: StripPlan) -> torch.Tensor:
    """Decoder.forward: latents [B, z, h, w] -> pixels [B, 3, h*f, w*f] (channels_last)."""
    z = z.contiguous(memory_format=CHANNELS_LAST)
    height, width = z.shape[2], z.shape[3]

    def start(h, _):
        h = conv3x3(decoder.conv_in, copy_fill(h), h, plan)
        return _mid(decoder.mid, h, plan, None)

    steps = [Step(start, 0)]
    for lvl in reversed(range(decoder.num_levels)):
        level = decoder.up[lvl]
        cin = level.block[0].in_channels
        steps.append(Step(lambda h, s, level=level: _level(level, h, plan, s),
                          _bytes(z, cin, height, width), True))
        if lvl != 0:
            height, width = 2 * height, 2 * width

            def up(h, _, conv=level.upsample.conv):
                out_stats: list[Moments] = []
                return upsample(conv, h, plan, out_stats), out_stats

            steps.append(Step(up, _bytes(z, level.upsample.conv.out_channels, height, width)))
    steps.append(Step(lambda h, s: (conv3x3(decoder.conv_out, norm_fill(
        decoder.norm_out, h, plan, s), h, plan), None),
        _bytes(z, decoder.conv_out.in_channels, height, width)))
    return _run_steps(steps, z, plan)
