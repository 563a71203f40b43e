"""The engine's GPU path (bf16, paged Triton attention) against its CPU path (fp32, torch
reference attention): the same requests, teacher-forced to the CPU's tokens, give logits
equal within bf16 tolerance at every step (run on the device: pytest -m gpu)."""
from __future__ import annotations

import pytest
import torch

import services.engine.engine as engine_mod
from services.engine.engine import Engine, EngineConfig
from services.engine.request import SamplingParams, default_request
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.prompting import prepare_prompt
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer
from services.model.tiny import TinySpec, random_state_dict, tiny_config, write_hf_checkpoint

pytestmark = pytest.mark.gpu

MID = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
           num_key_value_heads=2, head_dim=128)


def _checkpoint(path, **dims):
    write_synthetic_tokenizer(path, 512)
    cfg = tiny_config(TextTokenizer.from_dir(path), TinySpec(**{**TinySpec().__dict__, **dims}))
    write_hf_checkpoint(path, cfg, random_state_dict(cfg, seed=4), max_shard_bytes=1 << 30)
    return path


def _trace(path, device, attention, forced=None, graphs=True, kernels=None):
    """Run 3 concurrent requests; record each step's logits (and force tokens if given)."""
    model, tok = load_checkpoint(path, device=device)
    extra = {} if kernels is None else {"kernels": kernels}
    eng = Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=512, block_size=16), attention,
                                          cuda_graphs=graphs, **extra))
    for i, (task, size) in enumerate([("t2i", "3*4"), ("story", None), ("x2i", "2*5")]):
        p = prepare_prompt(tok, task, f"request {i}: a small red boat", size=size)
        eng.add_request(default_request(f"r{i}", task, p.cond, p.uncond, output_grid=p.output_grid,
                                        max_new_tokens=48, seed=i, text=SamplingParams(top_k=1),
                                        image=SamplingParams(top_k=1)))
    logits, tokens = [], []
    real_draw, real_execute = engine_mod.draw, eng.runner.execute

    def execute(step):
        out = real_execute(step)
        logits.append(out.float().cpu())
        return out

    def draw(*args):
        pending = real_draw(*args)
        real_read = pending.read

        def read():
            own = real_read()  # host ints
            tokens.append(torch.tensor(own))  # what this path would pick by itself
            return own if forced is None else forced[len(tokens) - 1].tolist()
        pending.read = read
        return pending

    eng.runner.execute = execute
    engine_mod.draw = draw
    try:
        while eng.has_work():
            eng.step()
    finally:
        engine_mod.draw = real_draw
    return logits, tokens


@pytest.mark.parametrize("dims", [{}, MID], ids=["tiny", "mid"])
def test_gpu_logits_match_cpu(tmp_path, dims):
    path = _checkpoint(tmp_path, **dims)
    cpu_logits, cpu_tokens = _trace(path, "cpu", "reference")
    gpu_logits, gpu_tokens = _trace(path, "cuda", "triton", forced=cpu_tokens)
    assert len(gpu_logits) == len(cpu_logits) > 40
    worst = 0.0
    for c, g in zip(cpu_logits, gpu_logits):
        worst = max(worst, ((g - c).abs().max() / c.abs().max()).item())
    assert worst < 0.05, f"worst relative logit error {worst:.4f}"
    agree = torch.cat([(a == b).float() for a, b in zip(cpu_tokens, gpu_tokens)]).mean()
    print(f"worst relative error {worst:.4f}; greedy token agreement {agree:.3f}")
