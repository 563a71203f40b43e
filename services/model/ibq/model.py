"""The IBQ tokenizer network and its memory-bounded quantizer (spec §7.2-7.3).

Quantization picks, for every latent vector z, the codebook row with the largest dot
product ``<z, E[n]>``. The reference builds three [B, n_embed, h, w] fp32 tensors to do
this (about 6 GiB for a 1024^2 image); :func:`quantize_argmax` tiles the logits over
latent positions and codebook rows so the extra memory stays under a fixed budget.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import IBQConfig
from .modules import Decoder, Encoder
from .striped import DEFAULT_STRIP_BYTES, StripPlan, decode_striped, encode_striped, plan_for

DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024
_FP32_BYTES = 4
# Positions per tile when the whole problem does not fit the budget: large enough that
# each codebook tile is a healthy matmul, small enough to leave room for many code rows.
_MAX_POSITIONS_PER_TILE = 4096


def _tile_sizes(positions: int, codes: int, max_chunk_bytes: int) -> tuple[int, int]:
    """(positions per tile, codebook rows per tile) so one fp32 logits tile fits the budget."""
    budget = max(1, max_chunk_bytes // _FP32_BYTES)  # logits elements per tile
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


class CodebookQuantizer(nn.Module):
    """Holds the codebook as ``embedding`` (checkpoint key ``quantize.embedding.weight``)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
        """Latents [B, D, h, w] -> codes [B, h, w] (dot-product argmax)."""
        return quantize_argmax(z, self.embedding.weight, max_chunk_bytes)

    def lookup(self, codes: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Codes [B, h, w] -> codebook vectors [B, D, h, w] (NCHW, or NHWC in memory)."""
        rows = F.embedding(codes, self.embedding.weight).permute(0, 3, 1, 2)  # NHWC memory
        return rows if channels_last else rows.contiguous()


class IBQ(nn.Module):
    """Index Backpropagation Quantization tokenizer: pixels <-> code grids (16x16 px per code).

    Submodule names match the released ``model.ckpt``: ``encoder``, ``decoder``,
    ``quantize.embedding``, ``quant_conv``, ``post_quant_conv``.
    """

    def __init__(self, config: IBQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = CodebookQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)
        # None: the striped channels_last forward (striped.py) on CUDA in eval mode, the plain
        # forward elsewhere; True/False force it (tests compare the two on the CPU).
        self.striped: bool | None = None
        self.strip_bytes = DEFAULT_STRIP_BYTES

    def strip_plan(self, x: torch.Tensor) -> StripPlan | None:
        """The strip plan for an input on ``x.device``, or None for the plain forward."""
        use = self.striped if self.striped is not None else x.is_cuda
        if not use or self.training:
            return None
        return plan_for(x.device, self.strip_bytes)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] in [-1, 1] -> pre-quantization latents [B, D, h, w]."""
        plan = self.strip_plan(x)
        h = self.encoder(x) if plan is None else encode_striped(self.encoder, x, plan)
        return self.quant_conv(h)

    def encode_codes(
        self, x: torch.Tensor, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] -> codes [B, H/f, W/f]."""
        return self.quantize.codes(self.encode_latents(x), max_chunk_bytes)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> decoder output [B, 3, h*f, w*f], nominally in [-1, 1]."""
        plan = self.strip_plan(codes)
        # The codebook may be kept in fp32 under a bf16 network (VisionTokenizer does).
        rows = self.quantize.lookup(codes, channels_last=plan is not None)
        z = self.post_quant_conv(rows.to(self.post_quant_conv.weight.dtype))
        return self.decoder(z) if plan is None else decode_striped(self.decoder, z, plan)
