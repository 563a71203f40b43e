"""Fixtures and helpers shared by the IBQ test modules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image


N_EMBED = 512

def random_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth-ish content (a gradient plus noise) so codes are not all noise-driven.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1),
                     np.full_like(xx, 128)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def copy_tokenizer(src: Path, dst: Path, state_edit=None, config_edit=None) -> Path:
    """Copy a tokenizer dir, optionally editing its state dict or config mapping."""
    dst.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    if config_edit:
        config_edit(cfg)
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    sd = torch.load(src / "model.ckpt", weights_only=True)["state_dict"]
    if state_edit:
        state_edit(sd)
    torch.save({"state_dict": sd}, dst / "model.ckpt")
    return dst
