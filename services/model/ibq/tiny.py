"""A tiny random-weight IBQ tokenizer in the released file format, for tests.

It has the released structure (five levels, 16x downsampling, attention only at the
lowest level) with small widths, so everything that loads the real ``config.yaml`` +
``model.ckpt`` can be exercised on a CPU in milliseconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from torch import nn

from .config import IBQConfig
from .model import IBQ
from .tokenizer import CHECKPOINT_FILE, CONFIG_FILE


def tiny_config(n_embed: int, embed_dim: int = 16, ch: int = 32) -> IBQConfig:
    """The released layout shrunk: ch_mult [1,1,2,2,4], one block per level, attention at 16."""
    return IBQConfig(
        n_embed=n_embed,
        embed_dim=embed_dim,
        ch=ch,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks=1,
        attn_resolutions=(16,),
        resolution=256,
        z_channels=32,
        double_z=False,
        in_channels=3,
        out_ch=3,
        dropout=0.0,
    )


@torch.no_grad()
def init_random_weights(model: IBQ, seed: int = 0) -> None:
    """Deterministic weights that keep activations O(1) and spread codes over the codebook.

    Convolutions get N(0, 1/fan_in) so each layer roughly preserves scale (every block
    input is re-normalised by GroupNorm anyway); norms start at identity; the codebook is
    N(0, 1) so the dot-product argmax lands on many different rows.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():  # registration order: deterministic
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
            module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, nn.GroupNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen))


def write_tiny_vision_tokenizer(
    out_dir: str | Path, n_embed: int, seed: int = 0, embed_dim: int = 16, ch: int = 32
) -> IBQConfig:
    """Write ``config.yaml`` and ``model.ckpt`` (``{"state_dict": ...}``) to ``out_dir``.

    Returns the config written. The same arguments always produce the same weights.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config(n_embed, embed_dim=embed_dim, ch=ch)
    model = IBQ(config)
    init_random_weights(model, seed)
    (out_dir / CONFIG_FILE).write_text(
        yaml.safe_dump(config.to_yaml_dict(), sort_keys=False), encoding="utf-8"
    )
    torch.save({"state_dict": model.state_dict()}, out_dir / CHECKPOINT_FILE)
    return config
