"""Shared pieces of the GPU benchmarks: measured ceilings, the 34B model with random weights,
and the roofline model of DESIGN.md §6."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from benchmarks.timing import mean_s_back_to_back
from services.model.config import Emu35Config
from services.model.text_tokenizer import TextTokenizer
from services.model.transformer import Emu35ForCausalLM


def emu35_34b_config(vocab_size: int, max_positions: int = 32768) -> Emu35Config:
    """The released 34B architecture (spec §1): 64 layers, hidden 5120, 64/8 heads of 128,
    FFN 25600; the vocabulary comes from the tokenizer (282,926 for the real one)."""
    return Emu35Config(vocab_size=vocab_size, hidden_size=5120, intermediate_size=25600,
                       num_hidden_layers=64, num_attention_heads=64, num_key_value_heads=8,
                       head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-5,
                       max_position_embeddings=max_positions)


@torch.no_grad()
def random_model(cfg: Emu35Config, device="cuda", seed: int = 0) -> Emu35ForCausalLM:
    """bf16 weights drawn N(0, 0.02) (norms at 1) straight on the device: the real model's
    cost without its values."""
    torch.manual_seed(seed)
    model = Emu35ForCausalLM(cfg, dtype=torch.bfloat16, device=device)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02)
    return model.eval()


def streamed_weight_bytes(model: Emu35ForCausalLM) -> int:
    """Bytes a decode step reads from weights: everything but the embedding table (of which
    a step reads only its own rows)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
               if "embed_tokens" not in n)


def matmul_params(model: Emu35ForCausalLM) -> int:
    """Parameters every prefill token multiplies through (layers; no embedding, no head)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if "embed_tokens" not in n and "lm_head" not in n and p.dim() == 2)


@dataclass(frozen=True)
class Ceilings:
    copy_bytes_per_s: float   # device-to-device copy, bytes read + written
    matmul_flops: float       # bf16 8192^3 GEMM


def measure_ceilings(device="cuda") -> Ceilings:
    """Copy bandwidth (2 GiB each way) and bf16 8192^3 matmul rate, each the mean of 20
    back-to-back calls."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.bfloat16, device=device).uniform_()
    dst = torch.empty_like(src)
    t_copy = mean_s_back_to_back(lambda: dst.copy_(src), iters=20)
    del src, dst
    a, b = (torch.randn(8192, 8192, dtype=torch.bfloat16, device=device) for _ in range(2))
    t_mm = mean_s_back_to_back(lambda: a @ b, iters=20)
    del a, b
    torch.cuda.empty_cache()
    return Ceilings(copy_bytes_per_s=4 * n / t_copy, matmul_flops=2 * 8192 ** 3 / t_mm)


def decode_roofline_s(weight_bytes: int, kv_bytes_per_token: int, ctx_lens, ceil: Ceilings) -> float:
    """DESIGN.md §6: every weight once plus each row's KV, at the measured copy bandwidth."""
    return (weight_bytes + kv_bytes_per_token * sum(ctx_lens)) / ceil.copy_bytes_per_s


def attention_flops(cfg: Emu35Config, n_new: int, ctx: int) -> float:
    """QK^T and PV FLOPs of n_new causal queries ending at context ctx, all layers."""
    keys = n_new * (2 * ctx - n_new + 1) / 2  # sum of ctx - n_new + 1 .. ctx
    return 4.0 * cfg.q_size * keys * cfg.num_hidden_layers


def step_flops(cfg: Emu35Config, params: int, step, head: bool = True) -> float:
    """FLOPs of one engine step (a StepInput): every token through the layers' matmuls, the
    causal attention of each row's new tokens, and (``head``) the head for its logits rows."""
    n_q = [b - a for a, b in zip(step.cu_q, step.cu_q[1:])]
    flops = 2.0 * params * len(step.token_ids) + sum(
        attention_flops(cfg, n, c) for n, c in zip(n_q, step.ctx_lens))
    if head:
        flops += 2.0 * cfg.hidden_size * cfg.vocab_size * len(step.logits_rows)
    return flops


def load_tokenizer(path: str) -> TextTokenizer:
    return TextTokenizer.from_dir(path)


class Stopwatch:
    def __init__(self):
        torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        torch.cuda.synchronize()
        return time.perf_counter() - self.t0
