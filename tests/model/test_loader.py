"""Checkpoint loading: config validation, strict tensor checks with named errors, streaming."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.model.config import ConfigError, Emu35Config
from services.model.loader import CheckpointError, INDEX_FILE, load_model
from services.model.parallel import ColumnParallelLinear, ParallelGroup, RowParallelLinear
from services.model.tiny import random_state_dict, write_hf_checkpoint

CFG = Emu35Config(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32)


@pytest.fixture
def ckpt(tmp_path):
    write_hf_checkpoint(tmp_path, CFG, random_state_dict(CFG, seed=1), max_shard_bytes=50_000)
    return tmp_path


def _edit_config(path, **changes):
    raw = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (path / "config.json").write_text(json.dumps(raw))


def _rewrite_shard(path, fn):
    """Apply fn to the tensors of the shard holding lm_head.weight."""
    index = json.loads((path / INDEX_FILE).read_text())
    name = index["weight_map"]["lm_head.weight"]
    tensors = fn(load_file(str(path / name)))
    save_file(tensors, str(path / name))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != name}
    index["weight_map"].update({k: name for k in tensors})
    (path / INDEX_FILE).write_text(json.dumps(index))


def test_roundtrip_config_and_weights(ckpt):
    model = load_model(ckpt)
    assert model.config == CFG
    state = random_state_dict(CFG, seed=1)
    qkv = model.model.layers[1].self_attn.qkv_proj.weight
    want = torch.cat([state[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qkv"]).float()
    torch.testing.assert_close(qkv, want, rtol=0, atol=0)
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    want = torch.cat([state[f"model.layers.0.mlp.{n}_proj.weight"] for n in ("gate", "up")]).float()
    torch.testing.assert_close(gate_up, want, rtol=0, atol=0)


def test_rotary_inv_freq_key_is_ignored(ckpt):
    _rewrite_shard(ckpt, lambda t: {**t, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(16)})
    load_model(ckpt)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"}, r"missing tensor\(s\) \['lm_head.weight'\]"),
    (lambda t: {**t, "model.layers.0.self_attn.q_proj.bias": torch.zeros(128)},
     r"unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"),
    (lambda t: {**t, "lm_head.weight": torch.zeros(200, 65)},
     r"'lm_head.weight' has shape \[200, 65\], but config.json implies \[200, 64\]"),
])
def test_bad_tensors_are_named(ckpt, mutate, message):
    _rewrite_shard(ckpt, mutate)
    with pytest.raises(CheckpointError, match=message):
        load_model(ckpt)


def test_missing_shard_file_is_named(ckpt):
    index = json.loads((ckpt / INDEX_FILE).read_text())
    victim = sorted(set(index["weight_map"].values()))[0]
    (ckpt / victim).unlink()
    with pytest.raises(CheckpointError, match=victim):
        load_model(ckpt)


def test_no_weights_at_all(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "emu3"}, "model_type must be 'Emu3'"),
    ({"hidden_size": None}, "missing required field 'hidden_size'"),
    ({"num_attention_heads": "64"}, "num_attention_heads must be a positive integer"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ({"rms_norm_eps": -1}, "rms_norm_eps must be a positive number"),
    ({"rope_scaling": {"type": "yarn", "factor": 4}}, "rope_scaling.type"),
    ({"rope_scaling": {"type": "linear", "factor": 1}}, "rope_scaling.factor"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings must be false"),
    ({"eos_token_id": 999}, "eos_token_id=999 is outside vocab_size"),
])
def test_bad_config_fields_are_named(ckpt, changes, message):
    _edit_config(ckpt, **changes)
    with pytest.raises(ConfigError, match=message):
        load_model(ckpt)


def test_code_defaults_apply_when_fields_absent(ckpt):
    _edit_config(ckpt, rope_theta=None, rms_norm_eps=None, max_position_embeddings=None)
    cfg = load_model(ckpt).config
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (1e6, 1e-5, 9216)


def test_real_architecture_arithmetic():
    """Spec §1.4: the 34B shapes give the published parameter count and KV size."""
    from services.model.loader import expected_shapes
    cfg = Emu35Config(vocab_size=282926, hidden_size=5120, intermediate_size=25600,
                      num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8,
                      head_dim=128)
    shapes = expected_shapes(cfg)
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == 34_103_460_864
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (8192, 5120)
    assert cfg.kv_bytes_per_token == 256 * 1024


def test_tensor_parallel_shards_reassemble():
    """Each rank keeps its slice; the slices of all ranks rebuild the full weight."""
    full_q, full_k = torch.randn(8, 4), torch.randn(4, 4)
    parts = []
    for rank in range(2):
        layer = ColumnParallelLinear(4, {"q": 8, "k": 4}, ParallelGroup(rank, 2))
        layer.load_shard("q", full_q)
        layer.load_shard("k", full_k)
        parts.append(layer.weight)
    assert torch.equal(torch.cat([parts[0][:4], parts[1][:4]]), full_q)
    assert torch.equal(torch.cat([parts[0][4:], parts[1][4:]]), full_k)
    row = [RowParallelLinear(6, 3, ParallelGroup(r, 2)) for r in range(2)]
    w = torch.randn(3, 6)
    for r in row:
        r.load_shard("weight", w)
    x = torch.randn(5, 6)
    partial = sum(x[:, i * 3:(i + 1) * 3] @ r.weight.T for i, r in enumerate(row))  # all-reduce by hand
    torch.testing.assert_close(partial, x @ w.T)
    with pytest.raises(ValueError, match="not divisible by tensor-parallel size 4"):
        ColumnParallelLinear(4, {"k": 6}, ParallelGroup(0, 4))


def test_loading_streams_one_shard_at_a_time(tmp_path):
    """Host memory while loading exceeds what the loaded model keeps by about one shard, not by
    the whole file set (measured in a fresh process with Linux's peak-RSS counter reset)."""
    cfg = Emu35Config(vocab_size=4096, hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=128)
    state = random_state_dict(cfg)
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_hf_checkpoint(tmp_path, cfg, state, max_shard_bytes=total // 8)
    del state
    script = textwrap.dedent(f"""
        import torch
        from services.model.loader import load_model
        def kib(field):
            line = next(l for l in open("/proc/self/status") if l.startswith(field))
            return int(line.split()[1])
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM (peak RSS)
        m = load_model({str(tmp_path)!r}, dtype=torch.bfloat16)
        print((kib("VmHWM:") - kib("VmRSS:")) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    transient = int(out.stdout.strip())
    # Reading every shard before copying would add the whole checkpoint (total) transiently.
    assert transient < total // 3, f"transient {transient / 2**20:.1f} MiB, model {total / 2**20:.1f} MiB"


def test_checkpoint_and_tokenizer_must_agree(tmp_path):
    from services.model.loader import load_checkpoint
    from services.model.tiny import write_tiny_checkpoint

    llm, _ = write_tiny_checkpoint(tmp_path / "t")
    model, tok = load_checkpoint(llm)
    assert model.config.vocab_size == tok.vocab_size and model.config.eos_token_id == tok.special.eos
    _edit_config(llm, eos_token_id=tok.special.bos)
    with pytest.raises(CheckpointError, match=f"eos_token_id={tok.special.bos} but the tokenizer"):
        load_checkpoint(llm)
    _edit_config(llm, eos_token_id=tok.special.eos, vocab_size=tok.vocab_size + 1)
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_checkpoint(llm)
