"""The attention registry: defaults per device, env override, lazy imports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import paged_attention as pa
from kernels.registry import attention_impl, attention_impl_name

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


def test_env_overrides_and_prefer_overrides_env(monkeypatch):
    monkeypatch.setenv("EMU35_ATTENTION", "triton")
    assert attention_impl("cpu") is pa.paged_attention_triton
    assert attention_impl("cpu", prefer="reference") is pa.paged_attention_reference
    monkeypatch.setenv("EMU35_ATTENTION", "cudnn")
    with pytest.raises(ValueError, match="cudnn"):
        attention_impl("cpu")


def test_cpu_use_does_not_import_triton():
    code = ("import sys; from kernels.registry import attention_impl; "
            "f = attention_impl('cpu'); import kernels.paged_attention; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = {k: v for k, v in os.environ.items() if k != "EMU35_ATTENTION"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
