"""Which kernel implementation a device uses.

Paged attention: ``flash`` (flash-attn importable, CUDA) > ``triton`` (CUDA) > ``reference``
(anything else); ``EMU35_ATTENTION=reference|triton|flash`` overrides the choice. Guided
sampling scores: ``triton`` on CUDA, else ``reference``; ``EMU35_SAMPLING=reference|triton``
overrides. A ``prefer`` argument overrides both. Names resolve to functions only when asked
for, so CPU-only use never imports Triton.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

IMPLEMENTATIONS = ("reference", "triton", "flash")
ENV_VAR = "EMU35_ATTENTION"
SAMPLING_IMPLEMENTATIONS = ("reference", "triton")
SAMPLING_ENV_VAR = "EMU35_SAMPLING"


def _requested(kind: str, choices: tuple[str, ...], env_var: str, prefer: str | None
               ) -> str | None:
    name = prefer or os.environ.get(env_var) or None
    if name is not None and name not in choices:
        raise ValueError(f"unknown {kind} implementation {name!r}; "
                         f"choose one of {', '.join(choices)}")
    return name


def attention_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The implementation's name for ``device``: ``prefer``, else the env var, else the best
    one available."""
    name = _requested("attention", IMPLEMENTATIONS, ENV_VAR, prefer)
    if name is not None:
        return name
    if torch.device(device).type != "cuda":
        return "reference"
    from .paged_attention import flash_attn_available

    return "flash" if flash_attn_available() else "triton"


def attention_impl(device: torch.device | str, prefer: str | None = None) -> Callable:
    """The paged-attention function to call on ``device`` (signature of
    :func:`kernels.paged_attention.paged_attention_reference`)."""
    from . import paged_attention as pa

    name = attention_impl_name(device, prefer)
    return {"reference": pa.paged_attention_reference, "triton": pa.paged_attention_triton,
            "flash": pa.paged_attention_flash}[name]


def sampling_impl_name(device: torch.device | str, prefer: str | None = None) -> str:
    """The guided-scores implementation's name for ``device``: ``prefer``, else the env var,
    else ``triton`` on CUDA and ``reference`` elsewhere."""
    name = _requested("sampling", SAMPLING_IMPLEMENTATIONS, SAMPLING_ENV_VAR, prefer)
    return name or ("triton" if torch.device(device).type == "cuda" else "reference")


def guided_scores_impl(device: torch.device | str, prefer: str | None = None) -> Callable:
    """The guided-scores function to call on ``device`` (signature of
    :func:`kernels.sampling.guided_scores_reference`)."""
    from . import sampling

    name = sampling_impl_name(device, prefer)
    return {"reference": sampling.guided_scores_reference,
            "triton": sampling.guided_scores_triton}[name]
