"""What a deployment serves, for ListModels, Info and the request's ``model`` check: the model's
name (from its checkpoint, never a literal), the package version, the one tenant."""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


PACKAGE = "emu35-serve"
# Results are stored under this tenant: there is one until authentication maps keys to tenants.
DEFAULT_TENANT = "default"


def package_version() -> str:
    """The installed emu35-serve version ("0+unknown" when run from a tree not installed)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def model_name(checkpoint: str | Path) -> str:
    """The served model's name: config.json's ``_name_or_path`` (e.g. "BAAI/Emu3.5"), else the
    checkpoint directory's name."""
    path = Path(checkpoint)
    try:
        raw = json.loads((path / "config.json").read_text())
        name = raw.get("_name_or_path") if isinstance(raw, dict) else None
    except (OSError, ValueError):
        name = None
    if isinstance(name, str) and name.strip():
        return name.strip()
    return path.resolve().name or str(path)


@dataclass(frozen=True)
class ServedModel:
    """The model a deployment serves (one per deployment today)."""

    name: str
    checkpoint: str
    vocab_size: int

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, vocab_size: int) -> ServedModel:
        return cls(model_name(checkpoint), str(checkpoint), vocab_size)
