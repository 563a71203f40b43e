"""Our transformer against an independent plain-torch computation of spec §1.2, written here
from the raw checkpoint tensors (unfused names, explicit masks, no packing)."""
from __future__ import annotations

import math

import pytest
import torch

from services.model.config import Emu35Config, RopeScaling
from services.model.loader import load_model
from services.model.tiny import random_state_dict, write_hf_checkpoint

CFG = Emu35Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                  rms_norm_eps=1e-6, max_position_embeddings=512)


def plain_forward(sd: dict, cfg: Emu35Config, ids: list[int]) -> torch.Tensor:
    """One sequence, fp32, eager attention with an explicit causal mask -> logits [T, V]."""
    sd = {k: v.float() for k, v in sd.items()}
    T, H, KV, D = len(ids), cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    pos = torch.arange(T, dtype=torch.float32)
    if cfg.rope_scaling is not None and cfg.rope_scaling.type == "linear":
        pos = pos / cfg.rope_scaling.factor
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2).float() / D))
    ang = pos[:, None] * inv[None, :]  # [T, D/2]
    cos, sin = ang.cos(), ang.sin()

    def rope(x):  # x: [heads, T, D], NeoX halves
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    h = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        x = norm(h, sd[p + "input_layernorm.weight"])
        q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(T, H, D).transpose(0, 1)
        k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(T, KV, D).transpose(0, 1)
        v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(T, KV, D).transpose(0, 1)
        q = rope(norm(q, sd[p + "self_attn.q_norm.weight"]))
        k = rope(norm(k, sd[p + "self_attn.k_norm.weight"]))
        k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D) + mask, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(T, H * D)
        h = h + o @ sd[p + "self_attn.o_proj.weight"].T
        x = norm(h, sd[p + "post_attention_layernorm.weight"])
        gate = x @ sd[p + "mlp.gate_proj.weight"].T
        up = x @ sd[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    h = norm(h, sd["model.norm.weight"])
    return h @ sd["lm_head.weight"].T


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    state = random_state_dict(CFG, seed=3)
    path = tmp_path_factory.mktemp("ckpt")
    write_hf_checkpoint(path, CFG, state, max_shard_bytes=60_000)
    return path, state


def _sequences():
    gen = torch.Generator().manual_seed(0)
    # Text-like ids and "visual" ids from the top of the vocabulary, of different lengths.
    return [torch.randint(0, 300, (n,), generator=gen).tolist() for n in (1, 7, 33, 64)]


def test_logits_match_plain_computation(checkpoint):
    path, state = checkpoint
    model = load_model(path)
    assert model.dtype == torch.float32
    seqs = _sequences()
    ours = model.logits(seqs)  # all four packed in one forward
    for seq, got in zip(seqs, ours):
        want = plain_forward(state, CFG, seq)
        assert got.dtype == torch.float32 and got.shape == (len(seq), CFG.vocab_size)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # Packing must not leak attention across sequences: alone == packed.
    alone = model.logits([seqs[2]])[0]
    torch.testing.assert_close(alone, ours[2], atol=1e-5, rtol=0)


def test_last_only_returns_last_rows(checkpoint):
    model = load_model(checkpoint[0])
    seqs = _sequences()
    full = model.logits(seqs)
    last = model.logits(seqs, last_only=True)
    for f, l in zip(full, last):
        torch.testing.assert_close(l, f[-1], atol=1e-5, rtol=0)


def test_linear_rope_scaling_is_read_from_config(tmp_path, checkpoint):
    import dataclasses
    import json
    path, state = checkpoint
    cfg = dataclasses.replace(CFG, rope_scaling=RopeScaling("linear", 2.0))
    write_hf_checkpoint(tmp_path, cfg, state, max_shard_bytes=10**9)
    assert json.loads((tmp_path / "config.json").read_text())["rope_scaling"]["factor"] == 2.0
    seq = _sequences()[3]
    got = load_model(tmp_path).logits([seq])[0]
    torch.testing.assert_close(got, plain_forward(state, cfg, seq), atol=1e-4, rtol=0)
    unscaled = plain_forward(state, CFG, seq)
    assert (got - unscaled).abs().max() > 1e-3  # the factor really changed something


def test_bad_sequences_name_the_problem(checkpoint):
    model = load_model(checkpoint[0])
    with pytest.raises(ValueError, match=r"sequences\[1\]: token id 300"):
        model.logits([[1, 2], [3, 300]])
    with pytest.raises(ValueError, match=r"sequences\[0\]: empty"):
        model.logits([[]])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.logits([[1] * 513])


def test_bf16_close_to_fp32(checkpoint):
    path, state = checkpoint
    seq = _sequences()[3]
    fp32 = load_model(path).logits([seq])[0]
    bf16_model = load_model(path, dtype=torch.bfloat16)
    assert bf16_model.model.layers[0].self_attn.qkv_proj.weight.dtype == torch.bfloat16
    bf16 = bf16_model.logits([seq])[0]
    assert bf16.dtype == torch.float32  # logits are always cast to fp32
    scale = fp32.abs().max()
    assert (bf16 - fp32).abs().max() / scale < 0.1
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.8


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu(checkpoint):
    path, _ = checkpoint
    seqs = _sequences()
    cpu = load_model(path).logits(seqs)
    gpu_model = load_model(path, device="cuda")
    assert gpu_model.dtype == torch.bfloat16
    for c, g in zip(cpu, gpu_model.logits(seqs)):
        assert g.is_cuda and g.dtype == torch.float32
        assert (g.cpu() - c).abs().max() / c.abs().max() < 0.1
