"""Load a released HF checkpoint directory (config.json + sharded safetensors) into
:class:`Emu35ForCausalLM`, streaming one tensor at a time straight to the target device.

The model is built on the ``meta`` device, materialised empty on the target device, and each
checkpoint tensor is read (memory-mapped), shape-checked against config.json, cut to this
rank's shard and copied in place, so host memory never holds more than one tensor.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from .config import Emu35Config
from .parallel import ParallelGroup
from .transformer import Emu35ForCausalLM

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Checkpoint keys that are not weights of the model (non-persistent rotary buffers).
_IGNORED = re.compile(r"(.*\.)?rotary_emb\.inv_freq")
# checkpoint suffix -> (module suffix in our model, shard name inside a fused weight)
_FUSED = {
    "self_attn.q_proj.weight": ("self_attn.qkv_proj", "q"),
    "self_attn.k_proj.weight": ("self_attn.qkv_proj", "k"),
    "self_attn.v_proj.weight": ("self_attn.qkv_proj", "v"),
    "mlp.gate_proj.weight": ("mlp.gate_up_proj", "gate"),
    "mlp.up_proj.weight": ("mlp.gate_up_proj", "up"),
}


class CheckpointError(ValueError):
    """The checkpoint's tensors do not match its config (names, shapes, files)."""


def expected_shapes(cfg: Emu35Config) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of spec §1.3 with the shape config.json implies."""
    hid, q, kv, ffn, d = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size, cfg.head_dim
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, hid), "model.norm.weight": (hid,),
              "lm_head.weight": (cfg.vocab_size, hid)}
    per_layer = {
        "self_attn.q_proj.weight": (q, hid), "self_attn.k_proj.weight": (kv, hid),
        "self_attn.v_proj.weight": (kv, hid), "self_attn.o_proj.weight": (hid, q),
        "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,),
        "mlp.gate_proj.weight": (ffn, hid), "mlp.up_proj.weight": (ffn, hid),
        "mlp.down_proj.weight": (hid, ffn),
        "input_layernorm.weight": (hid,), "post_attention_layernorm.weight": (hid,),
    }
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in per_layer.items()})
    return shapes


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, validated against its index."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e})") from None
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard file(s) that do not exist: {missing}")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    raise FileNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in checkpoint directory {path}")


def iter_checkpoint(path: Path, device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, shard by shard, memory-mapped from disk."""
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt", device=device) as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, pg: ParallelGroup | None = None) -> Emu35ForCausalLM:
    """Load an Emu3.5 checkpoint directory. dtype defaults to bf16 on CUDA and fp32 on CPU."""
    path = Path(path)
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = Emu35Config.from_file(path)
    files = checkpoint_files(path)
    model = Emu35ForCausalLM(cfg, pg, dtype=dtype, device="meta")
    model.to_empty(device=device)
    model.init_rope()
    _load_weights(model, path, device, files)
    log.info("loaded %s from %d file(s) to %s/%s", path, len(files), device, dtype)
    return model.eval()


def _load_weights(model: Emu35ForCausalLM, path: Path, device: torch.device, files) -> None:
    expected = expected_shapes(model.config)
    modules = dict(model.named_modules())
    seen: set[str] = set()
    read_device = str(device) if device.type == "cuda" else "cpu"
    for key, tensor in iter_checkpoint(path, read_device):
        if _IGNORED.fullmatch(key):
            continue
        if key not in expected:
            raise CheckpointError(f"unexpected tensor {key!r} in {path} (not an Emu3.5 weight)")
        if key in seen:
            raise CheckpointError(f"tensor {key!r} appears in more than one shard of {path}")
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"tensor {key!r} has shape {list(tensor.shape)}, but config.json "
                                  f"implies {list(expected[key])}")
        if not tensor.is_floating_point():
            raise CheckpointError(f"tensor {key!r} has non-float dtype {tensor.dtype}")
        module_name, shard = _target(key)
        modules[module_name].load_shard(shard, tensor)
        seen.add(key)
    missing = [k for k in expected if k not in seen]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint {path} is missing tensor(s) {missing[:5]}{more}")


def _target(key: str) -> tuple[str, str]:
    """Checkpoint key -> (our module name, shard name within that module's weight)."""
    m = _LAYER_KEY.fullmatch(key)
    if m:
        layer, suffix = m.groups()
        if suffix in _FUSED:
            module, shard = _FUSED[suffix]
            return f"model.layers.{layer}.{module}", shard
        return f"model.layers.{layer}.{suffix.removesuffix('.weight')}", "weight"
    return key.removesuffix(".weight"), "weight"


def check_tokenizer(cfg: Emu35Config, tok) -> None:
    """The tokenizer must describe the same vocabulary as config.json (spec §1.1: vocab_size
    equals the tokenizer's vocabulary; pad/bos/eos are its <|endoftext|>, BOS and EOS)."""
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"tokenizer has {tok.vocab_size} ids but config.json vocab_size is "
                              f"{cfg.vocab_size}")
    for field, want in (("pad_token_id", tok.special.pad), ("bos_token_id", tok.special.bos),
                        ("eos_token_id", tok.special.eos)):
        got = getattr(cfg, field)
        if got is not None and got != want:
            raise CheckpointError(f"config.json {field}={got} but the tokenizer's id is {want}")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None, tokenizer_dir: str | Path | None = None,
                    pg: ParallelGroup | None = None):
    """Model and text tokenizer of a checkpoint directory, checked against each other.
    ``tokenizer_dir`` defaults to the checkpoint directory itself."""
    from .text_tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(tokenizer_dir or path)
    check_tokenizer(Emu35Config.from_file(path), tok)
    return load_model(path, device, dtype, pg), tok
