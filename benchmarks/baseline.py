"""The reference path's way of making an image, for side-by-side ratios (issue: "a simple
baseline that does what the reference does"): the HF path of spec §10.2 and §6.2, one
request, eager PyTorch, no graphs.

Per visual token, as the reference's ``model.generate`` + CFG logits processor run it:

* the conditional forward (``prepare_inputs_for_generation``: position ids from the cumsum
  of the growing attention mask), then the processor: its checks of the last ids
  (``input_ids[0][-1] == BOI`` ...: host reads of device scalars), the unconditional stream's
  ids and mask grown by concatenation, the second batch-1 forward, the search for the last IMG
  (``nonzero`` + ``.item()``), CFG over two log-softmaxes, the visual mask built with
  ``full_like`` and added, the image top-k (``topk`` + boolean-index fill);
* the generic warper of ``generate`` (top-k 131,072: a no-op that still runs its ``topk``),
  softmax, one multinomial draw, ``input_ids`` and ``attention_mask`` grown by concatenation,
  the stopping check (``unfinished_sequences.max() == 0``, a host read).

Every forward mirrors the transformers model: one module call per projection (q, k, v, o,
gate, up, down as separate linears: views of our fused weights), RMSNorm modules in fp32,
a rotary module returning the cached cos/sin up to the sequence length and indexed by
position ids, a cache grown by ``torch.cat`` per layer (DynamicCache), the flash-attention
path's ``0 in attention_mask`` check once per forward, and fp32 logits of every position.
Attention runs through SDPA where the reference calls flash-attn (not installable here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.fused_norm import rotate_half
from services.model.transformer import Emu35ForCausalLM

TOP_K_GENERIC = 131072  # spec §6.1: the generic top_k every task passes to generate


class ConcatCache:
    """Per layer K/V [1, Hkv, S, D] grown by torch.cat every forward (DynamicCache)."""

    def __init__(self, layers: int):
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


def _linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free nn.Linear module over ``weight`` (a view: no copy)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


def _split(proj) -> list[torch.Tensor]:
    """The separate matrices of a fused projection, as views (q, k, v or gate, up)."""
    w = proj.weight
    return [w[proj.offsets[n]:proj.offsets[n] + size] for n, size in proj.local_sizes.items()]


class HFRMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight, self.eps = weight, eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class HFRotary(nn.Module):
    """Cached cos/sin tables; forward returns the first ``seq_len`` rows in x's dtype."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.cos, self.sin = cos, sin

    def forward(self, x, seq_len: int):
        return self.cos[:seq_len].to(x.dtype), self.sin[:seq_len].to(x.dtype)


class HFAttention(nn.Module):
    def __init__(self, layer, idx: int, cfg, rotary: HFRotary):
        super().__init__()
        att = layer.self_attn
        self.idx, self.h, self.hkv, self.d = idx, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj, self.k_proj, self.v_proj = (_linear(w) for w in _split(att.qkv_proj))
        self.o_proj = _linear(att.o_proj.weight)
        self.q_norm = HFRMSNorm(att.q_norm.weight, cfg.rms_norm_eps)
        self.k_norm = HFRMSNorm(att.k_norm.weight, cfg.rms_norm_eps)
        self.rotary_emb = rotary

    def forward(self, x, position_ids, cache: ConcatCache):  # x: [1, T, hidden]
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.h, self.d)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.hkv, self.d)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        cos, sin = self.rotary_emb(v, seq_len=t + cache.length)
        cos, sin = cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = cache.update(self.idx, k, v)
        # flash_attn_func in the reference (causal, bottom-right aligned); SDPA here
        o = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.h * self.d).contiguous())


class HFMLP(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.gate_proj, self.up_proj = (_linear(w) for w in _split(mlp.gate_up_proj))
        self.down_proj = _linear(mlp.down_proj.weight)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class HFLayer(nn.Module):
    def __init__(self, layer, idx: int, cfg, rotary: HFRotary):
        super().__init__()
        self.self_attn = HFAttention(layer, idx, cfg, rotary)
        self.mlp = HFMLP(layer.mlp)
        self.input_layernorm = HFRMSNorm(layer.input_layernorm.weight, cfg.rms_norm_eps)
        self.post_attention_layernorm = HFRMSNorm(layer.post_attention_layernorm.weight,
                                                  cfg.rms_norm_eps)

    def forward(self, h, position_ids, cache):
        h = h + self.self_attn(self.input_layernorm(h), position_ids, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class HFStyleModel(nn.Module):
    """The transformers module tree over our model's weights (views, no copies)."""

    def __init__(self, model: Emu35ForCausalLM):
        super().__init__()
        cfg = model.config
        self.config, self.embed_tokens = cfg, model.model.embed_tokens
        self.layers = nn.ModuleList(
            HFLayer(layer, i, cfg, HFRotary(model.rope_cos, model.rope_sin))
            for i, layer in enumerate(model.model.layers))
        self.norm = HFRMSNorm(model.model.norm.weight, cfg.rms_norm_eps)
        self.lm_head = _linear(model.lm_head.weight[: cfg.vocab_size])

    def forward(self, input_ids, attention_mask, cache: ConcatCache, position_ids=None):
        """input_ids [1, T], attention_mask [1, S] -> fp32 logits [1, T, V]."""
        _ = 0 in attention_mask  # flash-attention path: drop an all-ones mask (a host read)
        if position_ids is None:
            start = cache.length
            position_ids = torch.arange(start, start + input_ids.shape[1],
                                        device=input_ids.device)[None]
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h, position_ids, cache)
        return self.lm_head(self.norm(h)).float()


def reference_forward(model: Emu35ForCausalLM, ids: torch.Tensor, pos: torch.Tensor,
                      cache: ConcatCache, hf: HFStyleModel | None = None) -> torch.Tensor:
    """One eager forward of ids [T] at positions [T] -> fp32 logits [T, V]."""
    hf = hf or HFStyleModel(model)
    mask = torch.ones(1, cache.length + len(ids), dtype=torch.long, device=ids.device)
    return hf(ids[None], mask, cache, pos[None])[0]


class ReferencePath:
    """One request's two streams, stepped one visual token at a time as the HF path does."""

    def __init__(self, model: Emu35ForCausalLM, special, cfg_scale: float = 5.0,
                 top_k: int = 5120, seed: int = 6666):
        self.hf = HFStyleModel(model)
        self.s, self.cfg_scale, self.top_k = special, cfg_scale, top_k
        layers = model.config.num_hidden_layers
        self.cond, self.uncond = ConcatCache(layers), ConcatCache(layers)
        self.gen = torch.Generator(device=model.device).manual_seed(seed)
        self.device = model.device

    def _ids(self, ids) -> torch.Tensor:
        return torch.tensor([list(ids)], device=self.device)

    @torch.inference_mode()
    def prefill(self, cond_ids, uncond_ids) -> None:
        """Both prompts through their streams (the reference prefills the unconditional one
        at the first image step); the conditional logits of every position, as generate."""
        self.input_ids, self.u_ids = self._ids(cond_ids), self._ids(uncond_ids)
        self.mask, self.u_mask = torch.ones_like(self.input_ids), torch.ones_like(self.u_ids)
        pos = self.mask.cumsum(-1) - 1
        self.scores = self.hf(self.input_ids, self.mask, self.cond, pos)[:, -1, :].clone().float()
        self.u_scores = self.hf(self.u_ids, self.u_mask, self.uncond)[:, -1]

    def _processor(self, scores: torch.Tensor) -> torch.Tensor:
        """The CFG processor on a visual step (spec §6.2), with its per-step checks."""
        ids, s = self.input_ids, self.s
        _ = bool(ids[0][-1] == s.boi), bool(ids[0][-1] == s.eoi)
        _ = bool(ids[0][-1] != s.boi and ids[0][-2] == s.eoi)
        unc = self.u_scores
        img_at = (ids[0] == s.img).nonzero().flatten()  # find_last_token_index
        _ = img_at[-1].item() if len(img_at) else -1
        scores = self.cfg_scale * (F.log_softmax(scores, -1) - F.log_softmax(unc, -1)) \
            + F.log_softmax(unc, -1)
        mask = torch.full_like(scores, float("-inf"))
        mask[:, s.visual_base:] = 0
        scores = scores + mask
        remove = scores < torch.topk(scores, self.top_k)[0][..., -1, None]
        scores[remove] = float("-inf")
        return scores

    @torch.inference_mode()
    def step(self) -> int:
        """Sample one visual token from the last logits, then feed it to both streams."""
        scores = self._processor(self.scores)
        k = min(TOP_K_GENERIC, scores.shape[-1])  # generate's TopKLogitsWarper
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], float("-inf"))
        token = torch.multinomial(F.softmax(scores, -1), 1, generator=self.gen)  # [1, 1]
        self.input_ids = torch.cat([self.input_ids, token], -1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(1, 1)], -1)
        _ = bool((token[:, 0] != self.s.eos).max() == 0)  # unfinished_sequences.max() == 0
        pos = (self.mask.cumsum(-1) - 1)[:, -1:]
        self.scores = self.hf(token, self.mask, self.cond, pos)[:, -1, :].clone().float()
        # the processor's unconditional forward of the same token
        self.u_ids = torch.cat([self.u_ids, token], -1)
        self.u_mask = torch.cat([self.u_mask, self.u_mask.new_ones(1, 1)], -1)
        self.u_scores = self.hf(self.u_ids[:, -1:], self.u_mask, self.uncond)[:, -1]
        return int(token)
