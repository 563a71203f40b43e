"""Attention backends: how a layer's q/k/v for a packed batch of tokens become outputs.

The transformer hands every backend tokens packed as one flat batch ([T, heads, head_dim]) and
knows nothing about caches; a backend decides where keys and values live (none here; the
engine's paged cache later) and which tokens each query may see.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class AttentionBackend(ABC):
    """Per-forward attention state shared by all layers of one forward pass."""

    @abstractmethod
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] for this step's tokens -> [T, Hq, D]. k and v are
        None when the caller already stored them where :meth:`cache_for` said."""

    def cache_for(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(k_cache, v_cache, slots [T]) when this backend keeps the step's K/V in a paged
        cache that the QK-norm kernel may fill directly (one launch fewer); None otherwise."""
        return None


@dataclass
class PackedCausal(AttentionBackend):
    """Whole sequences packed back to back, causal inside each, no cache (prefill-only use:
    the Python API's logits for a batch of sequences, and tests)."""

    seq_lens: tuple[int, ...]

    def attend(self, layer, q, k, v):
        outs = []
        start = 0
        for n in self.seq_lens:
            # [1, H, n, D] per sequence; SDPA computes softmax in fp32 internally for bf16.
            qs, ks, vs = (t[start:start + n].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                               enable_gqa=q.shape[1] != k.shape[1])
            outs.append(o.squeeze(0).transpose(0, 1))
            start += n
        return torch.cat(outs, dim=0)
