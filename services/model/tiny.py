"""Tiny random checkpoints in exactly the released formats (nothing downloads weights).

``write_tiny_checkpoint(out)`` writes ``out/llm`` (config.json, sharded safetensors with
``model.safetensors.index.json``, the tokenizer files of a small synthetic BPE vocabulary with
Emu3.5's special-token structure) and ``out/vision_tokenizer`` (IBQ config.yaml + model.ckpt)
whose codebook size equals the vocabulary's number of visual tokens.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from .config import Emu35Config
from .loader import INDEX_FILE, expected_shapes

if TYPE_CHECKING:
    from .text_tokenizer import TextTokenizer


@dataclass(frozen=True)
class TinySpec:
    """Small dims that keep the real model's peculiarities: query width (heads x head_dim)
    differs from the hidden size, GQA, eps and theta that differ from the code defaults.

    The context is the reference code's default (9216): every task runs on its defaults.
    The tiny IBQ downsamples 16x like the released one, so a reference image becomes the same
    grid as on the real model: a 128x96 x2i reference at x2i's area (1,048,576 px) is 55*74,
    4,132 tokens; its prompt is 4,160 tokens, and its output image (the reference's grid)
    another 4,132: 8,292 tokens. t2i's default output (the 4:3 preset, 55*73) is 4,077. The
    interleaved tasks' 32,768-token default is clamped to the context left
    (services.engine.request.token_budget). The context costs nothing per step; only the
    RoPE tables grow with it."""

    hidden_size: int = 64
    intermediate_size: int = 160
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 9216
    num_visual_tokens: int = 512
    num_merges: int = 256


def tiny_config(vocab: "TextTokenizer", spec: TinySpec = TinySpec()) -> Emu35Config:
    s = vocab.special
    return Emu35Config(
        vocab_size=vocab.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim, rope_theta=spec.rope_theta, rms_norm_eps=spec.rms_norm_eps,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=s.pad, bos_token_id=s.bos, eos_token_id=s.eos)


def random_state_dict(cfg: Emu35Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bf16 weights under the spec §1.3 names. Scales keep activations O(1) and logits
    spread out, so greedy decoding is not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in expected_shapes(cfg).items():
        if len(shape) == 1:  # norms: around 1 so the weight's effect shows
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("embed_tokens.weight"):
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) * (1.5 / shape[1] ** 0.5)
        out[key] = t.to(torch.bfloat16)
    return out


def write_hf_checkpoint(out_dir: Path, cfg: Emu35Config, state: dict[str, torch.Tensor],
                        max_shard_bytes: int) -> list[str]:
    """Write config.json and ``model-0000i-of-0000n.safetensors`` shards plus their index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.contiguous()
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out_dir / INDEX_FILE).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return names


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, spec: TinySpec = TinySpec(),
                          tokenizer_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write a tiny LLM and a matching IBQ vision tokenizer; returns (llm_dir, vq_dir).

    tokenizer_dir: use these tokenizer files (e.g. the real Emu3.5 ones, so every special id is
    the released one) instead of a synthetic vocabulary; the IBQ codebook then keeps
    spec.num_visual_tokens entries, a prefix of the vocabulary's visual tokens."""
    from .ibq import write_tiny_vision_tokenizer
    from .synthetic_vocab import write_synthetic_tokenizer
    from .text_tokenizer import TextTokenizer

    out_dir = Path(out_dir)
    llm_dir, vq_dir = out_dir / "llm", out_dir / "vision_tokenizer"
    llm_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        write_synthetic_tokenizer(llm_dir, spec.num_visual_tokens, num_merges=spec.num_merges)
    else:
        for name in ("emu3.tiktoken", "emu3_vision_tokens.txt", "tokenizer_config.json"):
            src = Path(tokenizer_dir) / name
            if src.is_file() or name != "tokenizer_config.json":
                shutil.copyfile(src, llm_dir / name)
    cfg = tiny_config(TextTokenizer.from_dir(llm_dir), spec)
    state = random_state_dict(cfg, seed)
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_hf_checkpoint(llm_dir, cfg, state, max_shard_bytes=total // 3 + 1)
    write_tiny_vision_tokenizer(vq_dir, n_embed=spec.num_visual_tokens, seed=seed)
    return llm_dir, vq_dir
