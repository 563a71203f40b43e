"""The reference path's way of making an image, for side-by-side ratios (issue: "a simple
baseline that does what the reference does"): per visual token, two sequential batch-1
forwards (conditional, then unconditional) in eager PyTorch like the transformers model:
separate q/k/v and gate/up projections (views of our fused weights), unfused RMSNorm and RoPE,
each stream's contiguous KV cache grown by concatenation like DynamicCache, SDPA, the head
over the true 282,926 rows and fp32 logits of every position; then the HF-path CFG
processor and warpers (spec §6.2) and one multinomial draw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.fused_norm import apply_rope_reference, rms_norm_reference
from services.model.transformer import Emu35ForCausalLM


class ConcatCache:
    """Per layer K/V [Hkv, S, D] grown by torch.cat every forward (DynamicCache)."""

    def __init__(self, layers: int):
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[1]

    def attend(self, layer, q, k, v):  # q: [T, Hq, D]; k, v: [T, Hkv, D]
        k, v = k.transpose(0, 1), v.transpose(0, 1)
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=1)
            v = torch.cat([self.v[layer], v], dim=1)
        self.k[layer], self.v[layer] = k, v
        causal = q.shape[0] > 1  # prefill from an empty cache; one new token sees everything
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None],
                                           is_causal=causal, enable_gqa=True)
        return o[0].transpose(0, 1)


def _split(proj) -> list[torch.Tensor]:
    """The separate matrices of a fused projection, as views (q, k, v or gate, up)."""
    w = proj.weight
    return [w[proj.offsets[n]:proj.offsets[n] + size] for n, size in proj.local_sizes.items()]


def reference_forward(model: Emu35ForCausalLM, ids: torch.Tensor, pos: torch.Tensor,
                      cache: ConcatCache) -> torch.Tensor:
    """Eager decoder forward like the transformers model -> fp32 logits [T, V]."""
    cfg = model.config
    cos, sin = model.rope_cos[pos], model.rope_sin[pos]
    h = model.model.embed_tokens(ids)
    for i, layer in enumerate(model.model.layers):
        att, mlp = layer.self_attn, layer.mlp
        x = rms_norm_reference(h, layer.input_layernorm.weight, cfg.rms_norm_eps)
        q, k, v = (F.linear(x, w) for w in _split(att.qkv_proj))
        q = q.view(-1, cfg.num_attention_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_key_value_heads, cfg.head_dim)
        q = apply_rope_reference(rms_norm_reference(q, att.q_norm.weight, cfg.rms_norm_eps), cos, sin)
        k = apply_rope_reference(rms_norm_reference(k, att.k_norm.weight, cfg.rms_norm_eps), cos, sin)
        o = cache.attend(i, q, k, v.view(-1, cfg.num_key_value_heads, cfg.head_dim))
        h = h + F.linear(o.reshape(o.shape[0], -1), att.o_proj.weight)
        x = rms_norm_reference(h, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
        gate, up = (F.linear(x, w) for w in _split(mlp.gate_up_proj))
        h = h + F.linear(F.silu(gate) * up, mlp.down_proj.weight)
    h = rms_norm_reference(h, model.model.norm.weight, cfg.rms_norm_eps)
    return F.linear(h, model.lm_head.weight[: cfg.vocab_size]).float()


class ReferencePath:
    """One request's two streams, stepped one visual token at a time."""

    def __init__(self, model: Emu35ForCausalLM, visual_base: int, cfg_scale: float = 5.0,
                 top_k: int = 5120, seed: int = 6666):
        self.model, self.visual_base = model, visual_base
        self.cfg_scale, self.top_k = cfg_scale, top_k
        layers = model.config.num_hidden_layers
        self.cond, self.uncond = ConcatCache(layers), ConcatCache(layers)
        self.gen = torch.Generator(device=model.device).manual_seed(seed)

    def _forward(self, cache: ConcatCache, ids: list[int]) -> torch.Tensor:
        dev = self.model.device
        start = cache.length
        x = torch.tensor(ids, device=dev)
        pos = torch.arange(start, start + len(ids), device=dev)
        return reference_forward(self.model, x, pos, cache)[-1]  # fp32 [V]

    @torch.inference_mode()
    def prefill(self, cond_ids, uncond_ids) -> None:
        self.last = (self._forward(self.cond, list(cond_ids)),
                     self._forward(self.uncond, list(uncond_ids)))

    @torch.inference_mode()
    def step(self) -> int:
        """Sample one visual token from the last logits, then feed it to both streams."""
        c, u = self.last
        c, u = torch.log_softmax(c, -1), torch.log_softmax(u, -1)
        scores = u + self.cfg_scale * (c - u)
        scores[: self.visual_base] = float("-inf")
        kth = torch.topk(scores, self.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
        token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=self.gen))
        self.last = (self._forward(self.cond, [token]), self._forward(self.uncond, [token]))
        return token
