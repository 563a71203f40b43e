"""The Emu3.5 decoder (spec §1): QK-norm before RoPE, GQA, 8192-wide attention against a 5120
hidden size, SwiGLU, untied head, fp32 logits.

Tokens of any number of sequences travel packed as one flat batch ``[T]`` with their
positions; an :class:`~services.model.attention.AttentionBackend` decides what each token
attends to. Linears are tensor-parallel layers (world size 1 unless a group is given). The
elementwise work (norms with the residual add, QK-norm + RoPE, SwiGLU) goes through an
:class:`~kernels.fused_norm.ElementwiseOps` bundle: fused Triton kernels on CUDA, the plain
torch references that define them elsewhere (:mod:`kernels.registry`; the choice is the
model's ``kernels``, set once by :meth:`Emu35ForCausalLM.use_kernels`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kernels.fused_norm import REFERENCE_OPS, ElementwiseOps
from kernels.linear import MAX_ROWS, linear_silu_mul
from kernels.registry import KernelChoice, decode_fusion, elementwise_ops

from .attention import AttentionBackend, PackedCausal
from .config import Emu35Config
from .ops import rope_tables
from .parallel import (ColumnParallelLinear, ParallelGroup, ParallelLMHead, ReplicatedParameter,
                       RowParallelLinear, VocabParallelEmbedding)


@dataclass(frozen=True)
class ForwardContext:
    """What every layer of one forward pass shares."""

    positions: torch.Tensor  # [T] int64: each token's position
    cos: torch.Tensor        # [max_position_embeddings, D] fp32 RoPE tables
    sin: torch.Tensor
    attn: AttentionBackend
    ops: ElementwiseOps      # plain torch or fused Triton kernels (kernels.registry)
    # Decode-sized batch on the fused kernels (kernels.registry.decode_fusion): K/V written
    # by the QK-norm kernel, SiLU * mul in gate_up's GEMM, split-K sums in the next norm.
    fuse_decode: bool = False


class RMSNorm(ReplicatedParameter):
    def __init__(self, size: int, eps: float, dtype=None, device=None):
        super().__init__(size, dtype=dtype, device=device)
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: ElementwiseOps = REFERENCE_OPS) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_norm(self, x, residual, ops: ElementwiseOps):
        """(norm(residual + x), residual + x), the add fused into the norm; with no residual
        yet (the first layer), (norm(x), x)."""
        if residual is None:
            return self(x, ops), x
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: Emu35Config, layer: int, pg: ParallelGroup, **factory):
        super().__init__()
        self.layer = layer
        self.head_dim = cfg.head_dim
        self.num_heads = pg.split(cfg.num_attention_heads, "num_attention_heads")
        self.num_kv_heads = pg.split(cfg.num_key_value_heads, "num_key_value_heads")
        self.qkv_proj = ColumnParallelLinear(
            cfg.hidden_size, {"q": cfg.q_size, "k": cfg.kv_size, "v": cfg.kv_size}, pg, **factory)
        self.o_proj = RowParallelLinear(cfg.q_size, cfg.hidden_size, pg, **factory)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, **factory)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, **factory)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:  # x: [T, hidden]
        # Split q/k/v, per-head RMSNorm, then RoPE (spec §1.2 item 2):
        # q [T, Hq, D], k and v [T, Hkv, D].
        args = (self.qkv_proj(x), self.q_norm.weight, self.k_norm.weight, ctx.cos, ctx.sin,
                ctx.positions, self.num_heads, self.num_kv_heads, self.head_dim, self.q_norm.eps)
        cache = ctx.attn.cache_for(self.layer) if ctx.fuse_decode else None
        if cache is None:
            q, k, v = ctx.ops.qk_norm_rope(*args)
        else:  # k and v go straight to the cache, in the same launch
            q, k, v = ctx.ops.qk_norm_rope_to_cache(*args, *cache), None, None
        o = ctx.attn.attend(self.layer, q, k, v)  # [T, Hq, D]
        return self.o_proj(o.reshape(o.shape[0], self.num_heads * self.head_dim),
                           defer_split_sum=ctx.fuse_decode)


class MLP(nn.Module):
    def __init__(self, cfg: Emu35Config, pg: ParallelGroup, **factory):
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(
            cfg.hidden_size, {"gate": cfg.intermediate_size, "up": cfg.intermediate_size}, pg, **factory)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, pg, **factory)

    def forward(self, x: torch.Tensor, ops: ElementwiseOps = REFERENCE_OPS,
                fuse_decode: bool = False):
        """silu(gate) * up, then down_proj; with ``fuse_decode`` SiLU * mul runs in gate_up's
        GEMM and down_proj may return unsummed split-K partials (the next norm adds them)."""
        h = linear_silu_mul(x, self.gate_up_proj.weight, ops.silu_mul, fuse=fuse_decode,
                            skinny=self.gate_up_proj.skinny)
        return self.down_proj(h, defer_split_sum=fuse_decode)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Emu35Config, layer: int, pg: ParallelGroup, **factory):
        super().__init__()
        self.self_attn = Attention(cfg, layer, pg, **factory)
        self.mlp = MLP(cfg, pg, **factory)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **factory)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **factory)

    def forward(self, h, residual, ctx: ForwardContext):
        """h = h + attn(norm(h)); h = h + mlp(norm(h)) with the residual stream carried apart,
        so that each add runs inside the next norm. h: the previous sublayer's output
        [T, hidden]; residual: the stream before it (None at the first layer, where h is the
        embedding). Returns (this layer's MLP output, the stream before it); on the fused
        decode path the output may be down_proj's unsummed split-K partials, which the next
        add_norm sums."""
        x, residual = self.input_layernorm.add_norm(h, residual, ctx.ops)
        h = self.self_attn(x, ctx)
        x, residual = self.post_attention_layernorm.add_norm(h, residual, ctx.ops)
        return self.mlp(x, ctx.ops, ctx.fuse_decode), residual


class Emu35Model(nn.Module):
    """Embedding, decoder layers and final norm (the checkpoint's ``model.`` prefix)."""

    def __init__(self, cfg: Emu35Config, pg: ParallelGroup, **factory):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, pg, **factory)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, pg, **factory)
                                    for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **factory)


class Emu35ForCausalLM(nn.Module):
    """Emu3.5 LLM: ``forward`` returns final hidden states, ``compute_logits`` fp32 logits."""

    def __init__(self, cfg: Emu35Config, pg: ParallelGroup | None = None,
                 dtype: torch.dtype | None = None, device=None):
        super().__init__()
        self.config = cfg
        self.pg = pg or ParallelGroup()
        factory = {"dtype": dtype, "device": device}
        self.model = Emu35Model(cfg, self.pg, **factory)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, self.pg, **factory)
        self.use_kernels(KernelChoice.from_env())  # the engine passes its own (EngineConfig)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        if device is None or torch.device(device).type != "meta":
            self.init_rope()

    def init_rope(self) -> None:
        """(Re)build the fp32 RoPE tables on the model's device (after loading from meta)."""
        device = self.lm_head.weight.device
        self.rope_cos, self.rope_sin = rope_tables(self.config, device=device)

    def use_kernels(self, choice: KernelChoice) -> None:
        """Run every later forward on these kernels (read here, not from the environment)."""
        self.kernels = choice
        for module in self.modules():
            if hasattr(module, "skinny"):
                module.skinny = choice.skinny_gemm

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: AttentionBackend) -> torch.Tensor:
        """input_ids, positions: [T] (packed tokens) -> hidden states [T, hidden]."""
        ops = elementwise_ops(self.device, self.kernels.elementwise)
        ctx = ForwardContext(positions, self.rope_cos, self.rope_sin, attn, ops,
                             decode_fusion(ops, self.kernels.decode_fusion)
                             and input_ids.shape[0] <= MAX_ROWS)
        h, residual = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            h, residual = layer(h, residual, ctx)
        return self.model.norm.add_norm(h, residual, ctx.ops)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> fp32 logits [N, vocab] (bf16 GEMM, then cast; spec §1.2)."""
        return self.lm_head(hidden).float()

    @torch.inference_mode()
    def logits(self, sequences: Sequence[Sequence[int]], last_only: bool = False) -> list[torch.Tensor]:
        """fp32 logits for a batch of token sequences (positions from 0 in each), packed into
        one forward. Returns one [len, vocab] tensor per sequence, or [vocab] if last_only;
        with last_only only the last rows go through the head (the reference computes all)."""
        seq_lens = [len(s) for s in sequences]
        self._check_sequences(sequences, seq_lens)
        ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=self.device)
        positions = torch.cat([torch.arange(n, device=self.device) for n in seq_lens])
        hidden = self(ids, positions, PackedCausal(tuple(seq_lens)))
        if last_only:
            ends = torch.tensor(seq_lens, device=self.device).cumsum(0) - 1
            return list(self.compute_logits(hidden[ends]).unbind(0))
        return list(self.compute_logits(hidden).split(seq_lens))

    def _check_sequences(self, sequences, seq_lens) -> None:
        if not sequences:
            raise ValueError("sequences: need at least one sequence")
        limit = self.config.max_position_embeddings
        for i, (seq, n) in enumerate(zip(sequences, seq_lens)):
            if n == 0:
                raise ValueError(f"sequences[{i}]: empty sequence")
            if n > limit:
                raise ValueError(f"sequences[{i}]: length {n} exceeds max_position_embeddings {limit}")
            bad = [t for t in seq if not 0 <= int(t) < self.config.vocab_size]
            if bad:
                raise ValueError(f"sequences[{i}]: token id {bad[0]} outside vocabulary "
                                 f"[0, {self.config.vocab_size})")
