"""The IBQ tokenizer network (spec §7.2); quantization (§7.3) lives in :mod:`.quantize`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import IBQConfig
from .modules import Decoder, Encoder
from .quantize import DEFAULT_CHUNK_BYTES, quantize_argmax, quantize_screened
from .striped import DEFAULT_STRIP_BYTES, StripPlan, decode_striped, encode_striped, plan_for

__all__ = ["DEFAULT_CHUNK_BYTES", "IBQ", "CodebookQuantizer", "quantize_argmax"]


# Whole-level blocks, nearest upsample and separate bias/residual passes: the lowest and
# steadiest encode on an H200 at every batch size (2026-11-30, four runs: 60-66 ms per image,
# 1.09 GiB extra per image) and the decode of one image (76-94 ms). Batched decodes take the
# default plan: 63-80 ms per image, ~1.14 GiB extra at batch 4 (4.4 GiB with this layout).
SINGLE_IMAGE_LAYOUT = dict(level_bytes=None, group_bytes=None, subpixel=False,
                           fused_epilogue=False, attention="module")


class CodebookQuantizer(nn.Module):
    """Holds the codebook as ``embedding`` (checkpoint key ``quantize.embedding.weight``)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def codes(self, z: torch.Tensor, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
              screened: bool = False) -> torch.Tensor:
        """Latents [B, D, h, w] -> codes [B, h, w] (dot-product argmax; ``screened``: the same
        codes through a bf16 screen and exact fp32 rescoring, see :mod:`.quantize`)."""
        if screened:
            return quantize_screened(z, self.embedding.weight, max_chunk_bytes)
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
        # Other StripPlan fields (benchmarks/sweep_ibq.py); None picks by batch size (below).
        self.strip_options: dict | None = None
        # The plain fp32 argmax unless set: the bf16 screen (quantize.py) measured slower on an
        # H200 (17.3 vs 8.5 ms per 1024^2 image, 2026-11-30: its candidate gathers dominate).
        self.screened: bool = False

    def strip_plan(self, x: torch.Tensor, bounded_batches: bool = True) -> StripPlan | None:
        """The strip plan for an input on ``x.device``, or None for the plain forward.
        ``bounded_batches``: batches of several images take the memory-bounded default plan
        (decode); otherwise the single-image layout serves every batch size (encode)."""
        use = self.striped if self.striped is not None else x.is_cuda
        if not use or self.training:
            return None
        options = self.strip_options
        if options is None:
            options = {} if bounded_batches and x.shape[0] > 1 else SINGLE_IMAGE_LAYOUT
        return plan_for(x.device, self.strip_bytes, **options)

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] in [-1, 1] -> pre-quantization latents [B, D, h, w]."""
        plan = self.strip_plan(x, bounded_batches=False)
        h = self.encoder(x) if plan is None else encode_striped(self.encoder, x, plan)
        return self.quant_conv(h)

    def encode_codes(
        self, x: torch.Tensor, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W] -> codes [B, H/f, W/f]."""
        return self.quantize.codes(self.encode_latents(x), max_chunk_bytes, self.screened)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> decoder output [B, 3, h*f, w*f], nominally in [-1, 1]."""
        plan = self.strip_plan(codes)
        # The codebook may be kept in fp32 under a bf16 network (VisionTokenizer does).
        rows = self.quantize.lookup(codes, channels_last=plan is not None)
        z = self.post_quant_conv(rows.to(self.post_quant_conv.weight.dtype))
        return self.decoder(z) if plan is None else decode_striped(self.decoder, z, plan)
