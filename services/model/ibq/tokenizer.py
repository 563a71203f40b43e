"""VisionTokenizer: the public IBQ API (images <-> code grids, spec §7.4).

Encoding: RGB image -> optional :func:`smart_resize` -> ``x = pixel / 127.5 - 1`` ->
encoder -> quant_conv -> dot-product argmax over the codebook -> code grid [h, w].
Decoding: codes -> codebook rows -> post_quant_conv -> decoder ->
``clamp((x + 1) * 127.5, 0, 255)`` truncated to uint8 (bit-compatible with the reference).

Same-sized inputs are batched together; results always come back in input order on the
CPU.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_strict, read_state_dict
from .config import IBQConfig
from .model import DEFAULT_CHUNK_BYTES, IBQ
from .resize import smart_resize

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "model.ckpt"
DEFAULT_MAX_BATCH = 8


def _group_by_shape(shapes: Sequence[tuple[int, ...]], max_batch: int) -> list[list[int]]:
    """Input indices grouped by shape, each group at most ``max_batch`` long."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, shape in enumerate(shapes):
        by_shape[shape].append(i)
    return [
        idx[s : s + max_batch] for idx in by_shape.values() for s in range(0, len(idx), max_batch)
    ]


class VisionTokenizer:
    """IBQ image tokenizer: PIL images or normalised tensors -> codes, and back."""

    def __init__(self, model: IBQ, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        """Wrap an already-loaded :class:`IBQ`; prefer :meth:`from_dir`."""
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        # The codebook stays fp32 so a low-precision network's latents are scored against the
        # exact codes (the argmax is fp32 either way); it costs n_embed * D * 2 more bytes.
        self.model.quantize.float()
        if self.device.type == "cuda":  # NHWC convs; the striped forward keeps this layout
            self.model.to(memory_format=torch.channels_last)
        self.config: IBQConfig = model.config
        self.max_chunk_bytes = DEFAULT_CHUNK_BYTES

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> "VisionTokenizer":
        """Load ``config.yaml`` and ``model.ckpt`` from ``path`` (strict, weights-only)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"IBQ tokenizer directory not found: {path}")
        config = IBQConfig.from_yaml(path / CONFIG_FILE)
        state_dict = read_state_dict(path / CHECKPOINT_FILE)
        with torch.device("meta"):
            model = IBQ(config)
        load_strict(model, state_dict, source=CHECKPOINT_FILE)
        return cls(model, device=device, dtype=dtype)

    @property
    def n_embed(self) -> int:
        """Codebook size; valid codes are ``0 <= c < n_embed``."""
        return self.config.n_embed

    @property
    def factor(self) -> int:
        """Pixels per code along each side (16 for the released tokenizer)."""
        return self.config.downsample_factor

    def preprocess(self, image: Image.Image, area: int | None = None) -> torch.Tensor:
        """RGB, optional :func:`smart_resize` to ``area``, then ``pixel / 127.5 - 1``.

        Returns an fp32 tensor [3, H, W]. Without ``area`` both sides must already be
        multiples of :attr:`factor`.
        """
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL.Image, got {type(image).__name__}")
        if area is not None:
            image = smart_resize(image, area, self.factor)
        elif image.mode != "RGB":
            image = image.convert("RGB")
        if image.width % self.factor or image.height % self.factor:
            raise ValueError(
                f"image size {image.width}x{image.height} is not a multiple of {self.factor}; "
                "pass area= to resize it"
            )
        # float64 division then a cast, as the reference does, so pixels map identically.
        pixels = np.asarray(image, dtype=np.uint8) / 127.5 - 1.0  # [H, W, 3] float64
        return torch.from_numpy(pixels).to(torch.float32).permute(2, 0, 1).contiguous()

    @torch.inference_mode()
    def encode(self, images: Sequence[Image.Image] | torch.Tensor, area: int | None = None,
               max_batch: int = DEFAULT_MAX_BATCH) -> list[torch.Tensor]:
        """Encode images to code grids.

        Args:
            images: a list of PIL images, or a float tensor [B, 3, H, W] already
                normalised to [-1, 1].
            area: resize PIL images with :func:`smart_resize` to about this many pixels;
                ``None`` keeps their size (sides must be multiples of :attr:`factor`).
            max_batch: most images run through the encoder at once.

        Returns:
            One LongTensor [H/f, W/f] per image, in input order, on the CPU.
        """
        pixels = self._pixels(images, area)
        codes: list[torch.Tensor | None] = [None] * len(pixels)
        for group in _group_by_shape([tuple(p.shape) for p in pixels], max_batch):
            batch = torch.stack([pixels[i] for i in group]).to(self.device, self.dtype)
            out = self.model.encode_codes(batch, self.max_chunk_bytes).cpu()  # [b, h, w]
            for i, grid in zip(group, out):
                codes[i] = grid
        return codes  # type: ignore[return-value]

    def _pixels(self, images: Sequence[Image.Image] | torch.Tensor,
                area: int | None) -> list[torch.Tensor]:
        """Validated normalised pixel tensors [3, H, W], one per image."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
                raise ValueError(
                    "image tensor must be float [B, 3, H, W], "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            if images.shape[2] % self.factor or images.shape[3] % self.factor:
                raise ValueError(
                    f"image size {images.shape[3]}x{images.shape[2]} "
                    f"is not a multiple of {self.factor}"
                )
            return list(images)
        if isinstance(images, Image.Image):
            raise TypeError("images must be a list of PIL images (got a single image)")
        return [self.preprocess(im, area) for im in images]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor | Sequence[torch.Tensor],
               max_batch: int = DEFAULT_MAX_BATCH) -> torch.Tensor | list[torch.Tensor]:
        """Decode code grids to RGB pixels.

        Args:
            codes: an integer tensor [B, h, w], or a list of [h, w] grids.
            max_batch: most grids run through the decoder at once.

        Returns:
            uint8 [B, h*f, w*f, 3] on the CPU; for a list of grids of different sizes,
            a list of uint8 [h*f, w*f, 3] in input order.
        """
        if isinstance(codes, torch.Tensor):
            if codes.dim() != 3:
                raise ValueError(f"codes must be [B, h, w], got shape {tuple(codes.shape)}")
            grids = list(codes)
        else:
            grids = list(codes)
            if not grids or any(not isinstance(g, torch.Tensor) or g.dim() != 2 for g in grids):
                raise ValueError("codes must be a non-empty list of [h, w] integer tensors")
        for grid in grids:
            self._check_codes(grid)
        images: list[torch.Tensor | None] = [None] * len(grids)
        for group in _group_by_shape([tuple(g.shape) for g in grids], max_batch):
            batch = torch.stack([grids[i] for i in group]).to(self.device, torch.long)
            out = self._to_uint8(self.model.decode_codes(batch))
            for i, image in zip(group, out):
                images[i] = image
        if len({tuple(g.shape) for g in grids}) == 1:
            return torch.stack(images)  # type: ignore[arg-type]
        return images  # type: ignore[return-value]

    def decode_to_pil(self, codes: torch.Tensor) -> Image.Image:
        """Decode one code grid [h, w] to an RGB PIL image of ``h*f x w*f`` pixels."""
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise ValueError("codes must be one [h, w] integer tensor")
        pixels = self.decode(codes[None])[0]
        return Image.fromarray(pixels.numpy())  # uint8 [H, W, 3] -> RGB

    def _check_codes(self, grid: torch.Tensor) -> None:
        if grid.is_floating_point() or grid.is_complex() or grid.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor, got {grid.dtype}")
        if grid.numel() == 0:
            raise ValueError("codes must not be empty")
        lo, hi = int(grid.min()), int(grid.max())
        if lo < 0 or hi >= self.n_embed:
            raise ValueError(f"codes out of range [0, {self.n_embed}): min {lo}, max {hi}")

    @staticmethod
    def _to_uint8(x: torch.Tensor) -> torch.Tensor:
        """Decoder output [B, 3, H, W] -> uint8 [B, H, W, 3] on the CPU.

        Truncates (not rounds) like the reference, so pixels are bit-compatible.
        """
        pixels = ((x.float() + 1.0) * 127.5).clamp(0, 255)
        return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()
