"""Kernel switches resolve once: EngineConfig.kernels (from the EMU35_* environment when the
config is made) reaches the model, runner and sampler; changing the environment afterwards
changes nothing, and the config's value selects the path."""
from __future__ import annotations

import pytest

import kernels.linear as linear_mod
from kernels import fused_norm
from kernels import paged_attention as pa
from kernels.registry import KernelChoice
from services.engine.engine import Engine, EngineConfig
from services.engine.scheduler import SchedulerConfig
from services.model.loader import load_checkpoint
from services.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    llm, _ = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=8)
    return load_checkpoint(llm)


def test_the_environment_is_read_when_the_config_is_made(monkeypatch):
    monkeypatch.setenv("EMU35_ATTENTION", "triton")
    monkeypatch.setenv("EMU35_SKINNY_GEMM", "0")
    monkeypatch.setenv("EMU35_DRAW", "triton")
    config = EngineConfig(SchedulerConfig(num_blocks=64))
    monkeypatch.setenv("EMU35_ATTENTION", "flash")
    monkeypatch.delenv("EMU35_SKINNY_GEMM")
    assert config.kernels == KernelChoice(attention="triton", skinny_gemm=False, draw="triton")
    assert EngineConfig(attention="reference").kernels.attention == "reference"  # override


def test_changing_the_environment_after_construction_has_no_effect(tiny, monkeypatch):
    model, tok = tiny
    for var in ("EMU35_ATTENTION", "EMU35_FUSED", "EMU35_SKINNY_GEMM"):
        monkeypatch.delenv(var, raising=False)
    engine = Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=64)))
    calls = []
    monkeypatch.setattr(fused_norm, "triton_ops", lambda: calls.append("triton") or None)
    monkeypatch.setenv("EMU35_FUSED", "1")          # would pick the fused Triton ops
    monkeypatch.setenv("EMU35_ATTENTION", "flash")  # would need flash-attn
    engine.runner.execute(_one_token_step())
    assert calls == [] and engine.runner.attention is pa.paged_attention_reference


def test_the_config_selects_the_path(tiny, monkeypatch):
    model, tok = tiny
    seen = []
    real = linear_mod._skinny
    monkeypatch.setattr(linear_mod, "_skinny", lambda x, w: seen.append(1) or real(x, w))
    Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=64),
                                    kernels=KernelChoice(skinny_gemm=False)))
    model.logits([[1, 2, 3]], last_only=True)
    assert seen == [] and model.kernels.skinny_gemm is False
    Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=64), kernels=KernelChoice()))
    model.logits([[1, 2, 3]], last_only=True)
    assert seen  # the skinny gate is consulted again (it declines off CUDA)
    engine = Engine(model, tok, EngineConfig(SchedulerConfig(num_blocks=64),
                                             kernels=KernelChoice(attention="triton")))
    assert engine.runner.attention is pa.paged_attention_triton


def _one_token_step():
    from services.engine.runner import StepInput
    return StepInput(token_ids=[1], positions=[0], slots=[0], cu_q=[0, 1], ctx_lens=[1],
                     block_tables=[[0]], logits_rows=[0])
