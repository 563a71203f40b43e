"""The benchmark baseline computes the same model as the engine: its eager, transformers-style
forward (separate projections, DynamicCache-style cache) gives the model's logits."""
from __future__ import annotations

import torch

from benchmarks.baseline import ConcatCache, ReferencePath, reference_forward
from services.model.loader import load_checkpoint
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer
from services.model.tiny import TinySpec, random_state_dict, tiny_config, write_hf_checkpoint


def _model(tmp_path):
    write_synthetic_tokenizer(tmp_path, 512)
    cfg = tiny_config(TextTokenizer.from_dir(tmp_path), TinySpec())
    write_hf_checkpoint(tmp_path, cfg, random_state_dict(cfg, seed=3), max_shard_bytes=1 << 30)
    return load_checkpoint(tmp_path)


def test_prefill_then_decode_equals_the_model(tmp_path):
    model, tok = _model(tmp_path)
    ids = [5, 17, 200, 3, 44, 91, 7]
    want = model.logits([ids])[0]  # [T, V] fp32, one packed forward
    cache = ConcatCache(model.config.num_hidden_layers)
    with torch.inference_mode():
        got = [reference_forward(model, torch.tensor(ids[:4]), torch.arange(4), cache)]
        for p in range(4, len(ids)):  # then one token at a time through the grown cache
            got.append(reference_forward(model, torch.tensor([ids[p]]), torch.tensor([p]), cache))
    torch.testing.assert_close(torch.cat(got), want, rtol=1e-4, atol=1e-4)
    assert cache.length == len(ids)


def test_reference_path_samples_visual_tokens(tmp_path):
    model, tok = _model(tmp_path)
    ref = ReferencePath(model, tok.special, top_k=4)
    ref.prefill([5, 6, 7], [5, 6])
    tokens = [ref.step() for _ in range(5)]
    assert all(t >= tok.special.visual_base for t in tokens)
    assert ref.cond.length == 3 + 5 and ref.uncond.length == 2 + 5
