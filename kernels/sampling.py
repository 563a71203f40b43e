"""Guided scores: CFG combine, grammar mask and temperature over fp32 logits [R, V] (spec §6.2).

Row r's scores, with ``g = guide[r]``:

- g == GUIDE_NONE: the raw conditional logits ``c`` (no log-softmax);
- g == GUIDE_CFG: ``s * (lc - lu) + lu`` with ``lc, lu`` the log-softmax of cond and uncond;
- g == GUIDE_THREE_WAY: ``la + a * (lu - la) + s * (lc - lu)`` with ``la`` that of full_uncond;

then ids with ``allowed[mask_row[r], id] == 0`` set to -inf, then divided by
``temperature[r]`` when it is not 1. ``s = scale[r]``, ``a = image_scale[r]``.

:func:`guided_scores_reference` defines the result (plain torch, any device);
:func:`guided_scores_triton` must equal it within fp32 rounding.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")
GUIDE_NONE, GUIDE_CFG, GUIDE_THREE_WAY = 0, 1, 2


def guided_scores_reference(cond: torch.Tensor, uncond: torch.Tensor | None,
                            full_uncond: torch.Tensor | None, guide: torch.Tensor,
                            scale: torch.Tensor, image_scale: torch.Tensor,
                            allowed: torch.Tensor, mask_row: torch.Tensor,
                            temperature: torch.Tensor) -> torch.Tensor:
    """fp32 [R, V] (module docstring). cond/uncond/full_uncond: fp32 [R, V], uncond None when
    no row is guided, full_uncond None when no row is three-way (rows that do not use them may
    hold anything); guide/mask_row: int [R]; scale/image_scale/temperature: fp32 [R];
    allowed: uint8 or bool [M, V]."""
    scores = cond
    if uncond is not None:
        c, u = torch.log_softmax(cond, -1), torch.log_softmax(uncond, -1)
        s = scale[:, None]
        guided = s * (c - u) + u  # the reference's operand order (bit-equal on CPU)
        if full_uncond is not None:
            a = torch.log_softmax(full_uncond, -1)
            three = a + image_scale[:, None] * (u - a) + s * (c - u)
            guided = torch.where((guide == GUIDE_THREE_WAY)[:, None], three, guided)
        scores = torch.where((guide != GUIDE_NONE)[:, None], guided, cond)
    scores = scores.masked_fill(allowed[mask_row] == 0, NEG_INF)
    t = temperature[:, None]
    return torch.where(t != 1.0, scores / t, scores)


def guided_scores_triton(cond: torch.Tensor, uncond: torch.Tensor | None,
                         full_uncond: torch.Tensor | None, guide: torch.Tensor,
                         scale: torch.Tensor, image_scale: torch.Tensor,
                         allowed: torch.Tensor, mask_row: torch.Tensor,
                         temperature: torch.Tensor, **tuning) -> torch.Tensor:
    """The same in two Triton launches (per-chunk log-sum-exp statistics, then one fused
    write pass); see :mod:`kernels.triton_sampling`. ``tuning``: block / chunk overrides."""
    from .triton_sampling import guided_scores as run  # lazy: imports triton

    return run(cond, uncond, full_uncond, guide, scale, image_scale, allowed, mask_row,
               temperature, **tuning)
