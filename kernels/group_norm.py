"""GroupNorm split in two for large NHWC activations: statistics once, then normalise per strip.

``group_stats`` reduces the whole tensor to per-(image, group) mean and 1/std in fp32;
``norm_swish_into`` then writes ``swish((x - mean) * rstd * weight + bias)`` (or without the
swish) for any row range of it into a caller's buffer. Together they equal
``swish(F.group_norm(x))`` up to float rounding (one rounding to the output dtype here, one per
op in the plain torch chain), without a full-size normalised copy or fp32 temporary.

Statistics can also be gathered piecewise: :func:`group_moments` returns per-(image, group)
partial moments (count, mean, M2) of any row range, and :func:`stats_from_moments` merges a list
of them (Chan's parallel formula) into (mean, rstd). The striped IBQ forward takes them from each
conv output strip right after writing it, while it is still in L2, instead of re-reading the
whole tensor.

The ``*_reference`` functions are plain torch and define the ops; :mod:`kernels.triton_group_norm`
implements them for channels_last CUDA tensors (tests/kernels/test_group_norm.py compares).
``impl`` is ``"triton"`` or ``"reference"``; :func:`kernels.registry.elementwise_ops_name` picks
it per device.
"""
from __future__ import annotations

import torch

# Partial group moments: (count, mean, M2), each fp32 [B, k, groups] over k pieces.
Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def group_stats_reference(x: torch.Tensor, groups: int,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, C, H, W] (any layout) -> (mean, rstd), each fp32 [B, groups]; biased variance."""
    var, mean = torch.var_mean(x.float().reshape(x.shape[0], groups, -1), dim=-1, correction=0)
    return mean, torch.rsqrt(var + eps)


def group_moments_reference(x: torch.Tensor, groups: int) -> Moments:
    """Partial moments of x [B, C, h, W]: (count, mean, M2), each fp32 [B, 1, groups]."""
    flat = x.float().reshape(x.shape[0], groups, -1)
    mean = flat.mean(dim=-1)
    m2 = ((flat - mean[:, :, None]) ** 2).sum(dim=-1)
    count = torch.full_like(mean, flat.shape[-1])
    return count[:, None], mean[:, None], m2[:, None]


def stats_from_moments(parts: list[Moments], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial moments (each three fp32 [B, k_i, G]) into (mean, rstd) fp32 [B, G]."""
    cnt, mean, m2 = (torch.cat([p[i] for p in parts], dim=1) for i in range(3))
    total = cnt.sum(dim=1)  # [B, G]
    mu = (cnt * mean).sum(dim=1) / total
    var = (m2.sum(dim=1) + (cnt * (mean - mu[:, None]) ** 2).sum(dim=1)) / total
    return mu, torch.rsqrt(var + eps)


def norm_swish_reference(src: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor, swish: bool) -> torch.Tensor:
    """``[swish]((src - mean) * rstd * weight + bias)`` in fp32, rounded once to src's dtype.

    src [B, C, h, W] (any rows of the tensor the stats came from); mean, rstd [B, G].
    """
    per_group = src.shape[1] // mean.shape[1]
    mu = mean.repeat_interleave(per_group, dim=1)[:, :, None, None]  # [B, C, 1, 1]
    scale = rstd.repeat_interleave(per_group, dim=1)[:, :, None, None] * weight.float()[:, None, None]
    y = (src.float() - mu) * scale + bias.float()[:, None, None]
    if swish:
        y = y * torch.sigmoid(y)
    return y.to(src.dtype)


def _rows_contiguous(t: torch.Tensor) -> bool:
    """True when each image's rows are one dense NHWC block (channels_last, full width)."""
    _, c, h, w = t.shape
    return t.stride(1) == 1 and t.stride(3) == c and (h == 1 or t.stride(2) == w * c)


def _triton_ok(*tensors: torch.Tensor) -> bool:
    return all(t.is_cuda or not torch.cuda.is_available() for t in tensors) and all(
        _rows_contiguous(t) for t in tensors)


def group_moments(x: torch.Tensor, groups: int, impl: str = "reference") -> Moments:
    """Partial moments of x [B, C, h, W] (any rows of a tensor); merge with
    :func:`stats_from_moments`."""
    per_group = x.shape[1] // groups
    if impl == "triton" and _triton_ok(x) and per_group & (per_group - 1) == 0 \
            and groups & (groups - 1) == 0:
        from .triton_group_norm import group_moments_triton

        return group_moments_triton(x, groups)
    return group_moments_reference(x, groups)


def group_stats(x: torch.Tensor, groups: int, eps: float,
                impl: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd) fp32 [B, groups] of x [B, C, H, W]; see :func:`group_stats_reference`."""
    if impl == "reference":
        return group_stats_reference(x, groups, eps)
    return stats_from_moments([group_moments(x, groups, impl)], eps)


def norm_swish_into(src: torch.Tensor, dst: torch.Tensor, mean: torch.Tensor,
                    rstd: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    swish: bool = True, impl: str = "reference") -> None:
    """dst[...] = :func:`norm_swish_reference` of src; src and dst [B, C, h, W], same shape."""
    if src.shape != dst.shape:
        raise ValueError(f"src {tuple(src.shape)} and dst {tuple(dst.shape)} differ")
    if impl == "triton" and _triton_ok(src, dst):
        from .triton_group_norm import norm_swish_triton

        norm_swish_triton(src, dst, mean, rstd, weight, bias, swish)
        return
    dst.copy_(norm_swish_reference(src, mean, rstd, weight, bias, swish))


def conv_epilogue_reference(y: torch.Tensor, bias: torch.Tensor, dst: torch.Tensor | None,
                            add: bool, groups: int | None) -> Moments | None:
    """Finish a bias-free conv output strip y [B, C, h, W]: ``v = y + bias`` (rounded to y's
    dtype, as the conv's own bias add), then ``dst += v`` (add) or ``dst = v``, or neither when
    dst is None; returns :func:`group_moments_reference` of the result when ``groups``."""
    v = y + bias.to(y.dtype)[:, None, None]
    if dst is not None:
        if add:
            dst.add_(v)
        else:
            dst.copy_(v)
        v = dst
    return group_moments_reference(v, groups) if groups else None


def conv_epilogue(y: torch.Tensor, bias: torch.Tensor, dst: torch.Tensor | None = None,
                  add: bool = False, groups: int | None = None,
                  impl: str = "reference") -> Moments | None:
    """:func:`conv_epilogue_reference` in one pass over y (Triton on CUDA): replaces the conv's
    broadcast bias add, the copy or residual add into dst and the moments pass with one kernel.
    y and dst may be strided views (row/column strides free, channel stride 1)."""
    c = y.shape[1]
    per_group = c // groups if groups else c
    pow2 = per_group & (per_group - 1) == 0 and (groups or 1) & ((groups or 1) - 1) == 0
    dense = y.stride(1) == 1 and (dst is None or (dst.stride(1) == 1 and dst.shape == y.shape))
    on_device = all(t.is_cuda or not torch.cuda.is_available() for t in (y, bias))
    if impl == "triton" and pow2 and dense and on_device and c >= 16:
        from .triton_group_norm import conv_epilogue_triton

        return conv_epilogue_triton(y, bias, dst, add, groups)
    return conv_epilogue_reference(y, bias, dst, add, groups)
