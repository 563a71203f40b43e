"""Codebook quantization (spec §7.3): per latent vector z, the codebook row with the largest
dot product ``<z, E[n]>``, ties to the lowest index.

The reference builds three [B, n_embed, h, w] fp32 tensors to do this (about 6 GiB for a 1024^2
image). :func:`quantize_argmax` defines the result: fp32 logits, tiled over latent positions and
codebook rows so the extra memory stays under a fixed budget. :func:`quantize_screened` gets the
same codes faster on tensor cores: a bf16 product screens the codebook down to a few
candidates per position whose exact fp32 scores then decide; positions where the screen cannot
prove the winner is among its candidates fall back to :func:`quantize_argmax`.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
_FP32_BYTES = 4
# Positions per tile when the whole problem does not fit the budget: large enough that
# each codebook tile is a healthy matmul, small enough to leave room for many code rows.
_MAX_POSITIONS_PER_TILE = 4096


def _tile_sizes(positions: int, codes: int, max_chunk_bytes: int,
                elem_bytes: int = _FP32_BYTES) -> tuple[int, int]:
    """(positions per tile, codebook rows per tile) so one logits tile fits the budget."""
    budget = max(1, max_chunk_bytes // elem_bytes)  # logits elements per tile
    if positions * codes <= budget:
        return positions, codes
    pos_tile = max(1, min(positions, _MAX_POSITIONS_PER_TILE, budget))
    code_tile = max(1, min(codes, budget // pos_tile))
    return pos_tile, code_tile


def quantize_argmax(
    z: torch.Tensor, codebook: torch.Tensor, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """Index of the codebook row with the largest dot product, per latent position.

    Args:
        z: latents [B, D, h, w], any float dtype.
        codebook: [N, D], any float dtype.
        max_chunk_bytes: budget for one fp32 logits tile (the dominant extra memory).

    Returns:
        LongTensor [B, h, w] on ``z.device``. Ties go to the lowest index, like
        ``argmax`` over the full logits. Logits are computed in fp32 whatever the input
        dtype, so a bf16 model picks the codes an fp32 product of its values would.
    """
    if z.dim() != 4 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"quantize_argmax expects z [B, D, h, w] and codebook [N, D], "
            f"got {tuple(z.shape)} and {tuple(codebook.shape)}"
        )
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # [P, D], P = B*h*w
    positions, codes = flat.shape[0], codebook.shape[0]
    pos_tile, code_tile = _tile_sizes(positions, codes, max_chunk_bytes)
    best_idx = torch.empty(positions, dtype=torch.long, device=z.device)
    for p0 in range(0, positions, pos_tile):
        rows = flat[p0 : p0 + pos_tile]  # [p, D]
        best_val = torch.full((rows.shape[0],), float("-inf"), device=z.device)
        best = torch.zeros(rows.shape[0], dtype=torch.long, device=z.device)
        for n0 in range(0, codes, code_tile):
            book = codebook[n0 : n0 + code_tile].to(device=z.device, dtype=torch.float32)
            val, idx = (rows @ book.T).max(dim=1)  # max returns the first of equal values
            # Strict ">" keeps the earlier (lower-index) tile on ties across tiles.
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best = torch.where(better, idx + n0, best)
        best_idx[p0 : p0 + pos_tile] = best
    return best_idx.view(b, h, w)


# Candidates kept per position by the bf16 screen; exact fp32 scores decide among them.
SCREEN_CANDIDATES = 16
# Bound on |bf16 screen score - exact score| in units of ||z|| * max_n ||E[n]||: rounding z and
# E to bf16 (2^-8 each, relative), the fp32 accumulation of 256 products and the bf16 output
# (2^-8 of a score that is itself <= sum |z_i E_i|) stay under 3 * 2^-8 + 2^-12; 2^-6 is safe.
_SCREEN_ERROR = 2.0 ** -6


def _merge_topk(vals: torch.Tensor | None, idx: torch.Tensor | None, new_vals: torch.Tensor,
                new_idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if vals is not None:
        new_vals, new_idx = torch.cat([vals, new_vals], 1), torch.cat([idx, new_idx], 1)
    top, pos = new_vals.topk(min(k, new_vals.shape[1]), dim=1)  # sorted, largest first
    return top, new_idx.gather(1, pos)


def _screen(rows: torch.Tensor, codebook: torch.Tensor, code_tile: int,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k bf16 scores [p, k], their codebook rows [p, k]) of rows [p, D] over the codebook."""
    low = rows.to(torch.bfloat16)
    vals = idx = None
    for n0 in range(0, codebook.shape[0], code_tile):
        book = codebook[n0: n0 + code_tile].to(device=rows.device, dtype=torch.bfloat16)
        tile_vals, tile_idx = (low @ book.T).topk(min(k, book.shape[0]), dim=1)
        vals, idx = _merge_topk(vals, idx, tile_vals, tile_idx + n0, k)
    return vals, idx


def _rescore(rows: torch.Tensor, codebook: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Exact fp32 argmax among candidates [p, k] (ties to the lowest codebook row)."""
    book = codebook.to(rows.device)[cand].float()  # [p, k, D]
    scores = (book @ rows[:, :, None]).squeeze(2)  # [p, k] fp32
    best = scores.max(dim=1, keepdim=True).values
    lowest = torch.where(scores == best, cand, torch.iinfo(cand.dtype).max)
    return lowest.min(dim=1).values


def quantize_screened(z: torch.Tensor, codebook: torch.Tensor,
                      max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      k: int = SCREEN_CANDIDATES) -> torch.Tensor:
    """:func:`quantize_argmax`'s codes via a bf16 screen and an exact fp32 rescoring.

    Every code whose exact score could be the maximum has a screen score within twice the
    screen's error bound of the best screen score (the bound is proven per position from
    ||z|| and the largest codebook row norm). When the k-th best screen score is still inside
    that window, the window may hold more than k codes, and that position is quantized by
    :func:`quantize_argmax` instead. So the codes are those of an fp32 argmax: equal to
    :func:`quantize_argmax` except where two exact scores differ only by fp32 summation order.
    """
    if z.dim() != 4 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"quantize_screened expects z [B, D, h, w] and codebook [N, D], "
            f"got {tuple(z.shape)} and {tuple(codebook.shape)}"
        )
    b, d, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # [P, D]
    positions, codes = flat.shape[0], codebook.shape[0]
    pos_tile, code_tile = _tile_sizes(positions, codes, max_chunk_bytes, elem_bytes=2)
    book_norm = codebook.float().norm(dim=1).max().to(z.device)
    best = torch.empty(positions, dtype=torch.long, device=z.device)
    unsure = torch.zeros(positions, dtype=torch.bool, device=z.device)
    for p0 in range(0, positions, pos_tile):
        rows = flat[p0: p0 + pos_tile]
        vals, cand = _screen(rows, codebook, code_tile, k)
        margin = 2 * _SCREEN_ERROR * rows.norm(dim=1) * book_norm  # [p]
        best[p0: p0 + pos_tile] = _rescore(rows, codebook, cand)
        if cand.shape[1] < codes:  # a full candidate list is always sure
            unsure[p0: p0 + pos_tile] = vals[:, -1].float() >= vals[:, 0].float() - margin
    if bool(unsure.any()):  # rare: more than k codes in the window
        sel = unsure.nonzero().squeeze(1)
        best[sel] = quantize_argmax(flat[sel].T.reshape(1, d, -1, 1), codebook,
                                    max_chunk_bytes).view(-1)
    return best.view(b, h, w)
