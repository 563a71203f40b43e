"""The reference path's way of making an image, for side-by-side ratios (issue: "a simple
baseline that does what the reference does"): per visual token, two sequential batch-1
forwards (conditional, then unconditional), each growing its own contiguous KV cache by
concatenation like transformers' DynamicCache, SDPA attention, no graphs, full fp32 logits;
then the HF-path CFG processor and warpers (spec §6.2) and one multinomial draw.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from services.model.attention import AttentionBackend
from services.model.transformer import Emu35ForCausalLM


@contextlib.contextmanager
def plain_kernels():
    """The baseline runs torch's own ops: no fused norms, no skinny GEMM (kernels/registry.py
    and kernels/linear.py read these per call)."""
    saved = {k: os.environ.get(k) for k in ("EMU35_FUSED", "EMU35_SKINNY_GEMM")}
    os.environ.update({k: "0" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ConcatCache(AttentionBackend):
    """Per layer K/V [H, S, D] grown by torch.cat every forward (DynamicCache)."""

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
        hidden = self.model(x, pos, cache)
        return self.model.compute_logits(hidden)[-1]  # fp32 [V] (the reference keeps all rows)

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
