"""Safe, strict loading of the released IBQ ``model.ckpt`` (spec §7.1).

The file is a torch pickle. It is read with ``weights_only=True`` so a crafted file cannot
run code, and every key and shape is checked against the model before anything is
copied, so a wrong or truncated checkpoint fails with the offending keys named instead of
producing a silently broken tokenizer.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

# How many offending keys an error message lists before summarising the rest.
_MAX_KEYS_SHOWN = 8


class IBQCheckpointError(ValueError):
    """The checkpoint cannot be read safely or does not match the model; names the keys."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.ckpt`` (optionally wrapped as ``{"state_dict": ...}``) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IBQ checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals such as functions or code objects.
        raise IBQCheckpointError(
            f"{path.name}: refused to load: it is not a plain tensor checkpoint "
            f"(weights_only unpickling rejected it): {exc}"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise IBQCheckpointError(f"{path.name}: not a readable torch checkpoint: {exc}") from None
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping):
        raise IBQCheckpointError(f"{path.name}: expected a state dict, got {type(ckpt).__name__}")
    bad = [k for k, v in ckpt.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise IBQCheckpointError(f"{path.name}: entries that are not tensors: {_show(bad)}")
    return dict(ckpt)


def _show(keys: list) -> str:
    shown = ", ".join(str(k) for k in keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "model.ckpt"
) -> None:
    """Raise :class:`IBQCheckpointError` unless keys and shapes match ``model`` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_show(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_show(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_show(mismatched)}")
    if problems:
        raise IBQCheckpointError(f"{source} does not match the config: " + "; ".join(problems))
    non_float = sorted(k for k, v in state_dict.items() if not v.is_floating_point())
    if non_float:
        raise IBQCheckpointError(f"{source}: non-floating-point weights: {_show(non_float)}")


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Check, then load ``state_dict`` into ``model`` (built on the meta device) by assignment.

    Assignment makes the checkpoint tensors the parameters, so a 1.8 GB checkpoint is
    not held twice and the model never spends time on a random initialisation.
    """
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=True)
