"""Codebook quantization (spec §7.3): per latent vector z, the codebook row with the largest
dot product ``<z, E[n]>``, ties to the lowest index.

The reference builds three [B, n_embed, h, w] fp32 tensors to do this (about 6 GiB for a 1024^2
image). :func:`quantize_argmax` defines the result: fp32 logits, tiled over latent positions and
codebook rows so the extra memory stays under a fixed budget. :func:`quantize_screened` gets the
same codes faster on tensor cores: bf16 products screen the codebook down to the few codes per
position within a proven error window of the best screen score, whose exact fp32 scores then
decide; positions with too many codes in the window fall back to :func:`quantize_argmax`.
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


def _flat_latents(z: torch.Tensor, codebook: torch.Tensor, caller: str) -> torch.Tensor:
    """Latents z [B, D, h, w] as fp32 rows [B*h*w, D], after checking them against codebook."""
    if z.dim() != 4 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"{caller} expects z [B, D, h, w] and codebook [N, D], "
            f"got {tuple(z.shape)} and {tuple(codebook.shape)}"
        )
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()


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
    flat = _flat_latents(z, codebook, "quantize_argmax")
    (b, d, h, w), positions, codes = z.shape, flat.shape[0], codebook.shape[0]
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


# Most candidates per position rescored exactly; a position whose window holds more goes through
# quantize_argmax instead (only near-duplicate codebook rows do that).
SCREEN_CANDIDATES = 32
# Bound on |bf16 screen score - exact score| in units of ||z|| * max_n ||E[n]||: rounding z and
# E to bf16 (2^-8 each, relative), the fp32 accumulation of 256 products and the bf16 output
# (2^-8 of a score that is itself <= sum |z_i E_i|) stay under 3 * 2^-8 + 2^-12; 2^-6 is safe.
_SCREEN_ERROR = 2.0 ** -6


def _screen_scores(low: torch.Tensor, codebook: torch.Tensor, n0: int, n1: int) -> torch.Tensor:
    """bf16 scores [p, n1-n0] of bf16 rows [p, D] against codebook rows [n0, n1)."""
    return low @ codebook[n0:n1].to(device=low.device, dtype=torch.bfloat16).T


def _window_candidates(low: torch.Tensor, codebook: torch.Tensor, thr: torch.Tensor,
                       code_tile: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, code) pairs whose screen score is >= thr[row], and a mask of the rows with more
    than k of them (whose pairs are left out: they take the exact search)."""
    count = torch.zeros(low.shape[0], dtype=torch.long, device=low.device)
    rows, cols = [], []
    for n0 in range(0, codebook.shape[0], code_tile):
        inside = _screen_scores(low, codebook, n0, n0 + code_tile) >= thr[:, None]  # [p, n]
        count += inside.sum(dim=1)
        inside &= (count <= k)[:, None]  # a row over k never needs its pairs
        r, c = inside.nonzero(as_tuple=True)
        rows.append(r)
        cols.append(c + n0)
    rows, cols = torch.cat(rows), torch.cat(cols)
    over = count > k
    keep = ~over[rows]
    return rows[keep], cols[keep], over


def _exact_best(rows_f32: torch.Tensor, codebook: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, piece: int) -> torch.Tensor:
    """Per row, the code among its (row, code) pairs with the largest fp32 dot product, ties
    to the lowest code; rows [p, D] fp32; rows without pairs get a huge index."""
    p = rows_f32.shape[0]
    scores = torch.empty(rows.shape[0], dtype=torch.float32, device=rows_f32.device)
    for i in range(0, rows.shape[0], piece):
        a = rows_f32[rows[i: i + piece]]  # [n, D]
        b = codebook[cols[i: i + piece].to(codebook.device)].to(a.device, torch.float32)
        scores[i: i + piece] = torch.bmm(a[:, None, :], b[:, :, None]).view(-1)
    best = torch.full((p,), float("-inf"), device=scores.device)
    best.scatter_reduce_(0, rows, scores, "amax")
    win = scores == best[rows]
    lowest = torch.full((p,), torch.iinfo(torch.long).max, dtype=torch.long, device=scores.device)
    return lowest.scatter_reduce_(0, rows[win], cols[win], "amin")


def quantize_screened(z: torch.Tensor, codebook: torch.Tensor,
                      max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      k: int = SCREEN_CANDIDATES) -> torch.Tensor:
    """:func:`quantize_argmax`'s codes via a bf16 screen and an exact fp32 rescoring.

    Two bf16 tensor-core passes over the codebook: the first takes each position's best screen
    score m, the second collects every code whose screen score is >= m - 2 * bound, where the
    bound on the screen's error is proven per position from ||z|| and the largest codebook row
    norm: every code whose exact score could be the maximum is in that window. Their exact fp32
    dot products decide (ties to the lowest index). A position with more than ``k`` codes in its
    window is quantized by :func:`quantize_argmax` instead. So the codes are those of an fp32
    argmax: equal to :func:`quantize_argmax` except where two exact scores differ only by fp32
    summation order. No top-k: the passes are a GEMM plus a max, and a GEMM plus a compare.
    """
    flat = _flat_latents(z, codebook, "quantize_screened")
    (b, d, h, w), positions, codes = z.shape, flat.shape[0], codebook.shape[0]
    # a bf16 score and its bool window flag per element of a tile
    pos_tile, code_tile = _tile_sizes(positions, codes, max_chunk_bytes, elem_bytes=3)
    piece = max(1, max_chunk_bytes // (2 * d * _FP32_BYTES))  # rescored pairs at a time
    book_norm = codebook.float().norm(dim=1).max().to(z.device)
    best = torch.empty(positions, dtype=torch.long, device=z.device)
    unsure = torch.zeros(positions, dtype=torch.bool, device=z.device)
    for p0 in range(0, positions, pos_tile):
        rows = flat[p0: p0 + pos_tile]
        low = rows.to(torch.bfloat16)
        top = torch.full((rows.shape[0],), float("-inf"), device=z.device)
        for n0 in range(0, codes, code_tile):
            top = torch.maximum(top, _screen_scores(low, codebook, n0, n0 + code_tile)
                                .amax(dim=1).float())
        thr = top - 2 * _SCREEN_ERROR * rows.norm(dim=1) * book_norm  # [p]
        r, c, over = _window_candidates(low, codebook, thr, code_tile, k)
        best[p0: p0 + pos_tile] = _exact_best(rows, codebook, r, c, piece)
        unsure[p0: p0 + pos_tile] = over
    if bool(unsure.any()):  # rare: more than k codes in the window
        sel = unsure.nonzero().squeeze(1)
        best[sel] = quantize_argmax(flat[sel].T.reshape(1, d, -1, 1), codebook,
                                    max_chunk_bytes).view(-1)
    return best.view(b, h, w)
