"""The kernel registry: defaults per device, env overrides read once (KernelChoice.from_env),
lazy imports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import fused_norm
from kernels import paged_attention as pa
from kernels import registry
from kernels.registry import (attention_impl, attention_impl_name, elementwise_ops,
                              elementwise_ops_name)
from kernels import sampling
from kernels.registry import attention_impl, attention_impl_name, guided_scores_impl

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_gets_reference(monkeypatch):
    monkeypatch.delenv("EMU35_ATTENTION", raising=False)
    assert attention_impl("cpu") is pa.paged_attention_reference


def test_cuda_prefers_flash_then_triton(monkeypatch):
    monkeypatch.delenv("EMU35_ATTENTION", raising=False)
    monkeypatch.setattr(pa, "flash_attn_available", lambda: True)
    assert attention_impl_name("cuda") == "flash"
    monkeypatch.setattr(pa, "flash_attn_available", lambda: False)
    assert attention_impl("cuda:0") is pa.paged_attention_triton


def test_env_overrides_through_the_choice(monkeypatch):
    monkeypatch.setenv("EMU35_ATTENTION", "triton")
    choice = registry.KernelChoice.from_env()
    assert attention_impl("cpu", prefer=choice.attention) is pa.paged_attention_triton
    assert attention_impl("cpu") is pa.paged_attention_reference  # no env read per call
    monkeypatch.setenv("EMU35_ATTENTION", "cudnn")
    with pytest.raises(ValueError, match="cudnn"):
        registry.KernelChoice.from_env()


def test_sampling_triton_on_cuda_reference_elsewhere(monkeypatch):
    monkeypatch.delenv("EMU35_SAMPLING", raising=False)
    assert guided_scores_impl("cpu") is sampling.guided_scores_reference
    assert guided_scores_impl("cuda:0") is sampling.guided_scores_triton
    monkeypatch.setenv("EMU35_SAMPLING", "reference")
    choice = registry.KernelChoice.from_env()
    assert guided_scores_impl("cuda", choice.sampling) is sampling.guided_scores_reference
    assert guided_scores_impl("cpu", prefer="triton") is sampling.guided_scores_triton
    monkeypatch.setenv("EMU35_SAMPLING", "flash")
    with pytest.raises(ValueError, match="sampling implementation 'flash'"):
        registry.KernelChoice.from_env()


def test_cpu_use_does_not_import_triton():
    code = ("import sys; from kernels.registry import attention_impl, elementwise_ops; "
            "f = attention_impl('cpu'); import kernels.paged_attention; "
            "ops = elementwise_ops('cpu'); import services.model.transformer; "
            "assert ops.name == 'reference'; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = {k: v for k, v in os.environ.items() if k not in ("EMU35_ATTENTION", "EMU35_FUSED")}
    code = ("import sys; from kernels.registry import attention_impl, guided_scores_impl; "
            "f = attention_impl('cpu'); g = guided_scores_impl('cpu'); "
            "import kernels.paged_attention, kernels.sampling, kernels.token_draw; "
            "import services.engine.sampler; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = {k: v for k, v in os.environ.items() if k not in ("EMU35_ATTENTION", "EMU35_SAMPLING")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_elementwise_fused_on_cuda_with_triton(monkeypatch):
    monkeypatch.delenv("EMU35_FUSED", raising=False)
    assert elementwise_ops("cpu") is fused_norm.REFERENCE_OPS
    monkeypatch.setattr(registry, "triton_installed", lambda: True)
    assert elementwise_ops_name("cuda:0") == "triton"
    monkeypatch.setattr(registry, "triton_installed", lambda: False)
    assert elementwise_ops_name("cuda") == "reference"


def test_elementwise_env_and_prefer(monkeypatch):
    monkeypatch.setattr(registry, "triton_installed", lambda: True)
    monkeypatch.setenv("EMU35_FUSED", "0")
    assert elementwise_ops("cuda", registry.KernelChoice.from_env().elementwise) \
        is fused_norm.REFERENCE_OPS
    monkeypatch.setenv("EMU35_FUSED", "1")
    assert elementwise_ops_name("cpu", registry.KernelChoice.from_env().elementwise) == "triton"
    assert elementwise_ops_name("cpu", prefer="reference") == "reference"
    monkeypatch.setenv("EMU35_FUSED", "yes")
    with pytest.raises(ValueError, match="EMU35_FUSED"):
        registry.KernelChoice.from_env()
    with pytest.raises(ValueError, match="cudnn"):
        elementwise_ops_name("cpu", prefer="cudnn")


def test_draw_triton_on_cuda_torch_elsewhere(monkeypatch):
    monkeypatch.delenv("EMU35_DRAW", raising=False)
    monkeypatch.setattr(registry, "triton_installed", lambda: True)
    assert registry.draw_impl_name("cpu") == "torch"
    assert registry.draw_impl_name("cuda:0") == "triton"
    monkeypatch.setattr(registry, "triton_installed", lambda: False)
    assert registry.draw_impl_name("cuda") == "torch"
    monkeypatch.setenv("EMU35_DRAW", "triton")
    assert registry.draw_impl_name("cpu", registry.KernelChoice.from_env().draw) == "triton"
    assert registry.draw_impl_name("cpu", prefer="torch") == "torch"
    monkeypatch.setenv("EMU35_DRAW", "sorted")
    with pytest.raises(ValueError, match="sorted"):
        registry.KernelChoice.from_env()
