"""IBQ vision-tokenizer configuration, read from the released ``config.yaml`` (spec §7.1).

The released file holds the reference ``IBQ(**cfg)`` constructor arguments::

    ddconfig: {ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
               z_channels, double_z, in_channels, out_ch, dropout}
    n_embed: 131072
    embed_dim: 256
    beta: 0.25            # training-only keys like this one are ignored

Validation happens when the dataclass is built, so a bad file fails at load time with
the offending field named, never later as a shape error deep inside a convolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# GroupNorm(32) in every ResnetBlock/AttnBlock needs channel counts divisible by 32.
NORM_GROUPS = 32

# ddconfig keys the reference accepts (through **kwargs) that would change the
# architecture if set to a non-default value; anything else unknown is ignored like the
# reference ignores it.
_ARCH_CHANGING_DEFAULTS = {"resamp_with_conv": True, "give_pre_end": False}


class IBQConfigError(ValueError):
    """A ``config.yaml`` field is missing, mistyped or inconsistent; the message names it."""


def _is_int(value: Any) -> bool:
    # bool is a subclass of int; `ch: true` is a typo, not a channel count.
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value <= 0:
        raise IBQConfigError(f"{name} must be a positive int, got {value!r}")


def _int_tuple(name: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    ok = isinstance(value, (list, tuple)) and all(_is_int(v) and v > 0 for v in value)
    if not ok or (not allow_empty and len(value) == 0):
        raise IBQConfigError(f"{name} must be a list of positive ints, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class IBQConfig:
    """Shape of an IBQ tokenizer: codebook plus the Encoder/Decoder ``ddconfig``."""

    n_embed: int
    embed_dim: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    resolution: int
    z_channels: int
    double_z: bool = False
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Lists from YAML become tuples so the frozen config is hashable.
        object.__setattr__(self, "ch_mult", _int_tuple("ddconfig.ch_mult", self.ch_mult, False))
        object.__setattr__(
            self,
            "attn_resolutions",
            _int_tuple("ddconfig.attn_resolutions", self.attn_resolutions, True),
        )
        _positive_int("n_embed", self.n_embed)
        _positive_int("embed_dim", self.embed_dim)
        for name in ("ch", "num_res_blocks", "resolution", "z_channels", "in_channels", "out_ch"):
            _positive_int(f"ddconfig.{name}", getattr(self, name))
        if self.ch % NORM_GROUPS:
            raise IBQConfigError(
                f"ddconfig.ch must be a multiple of {NORM_GROUPS} (GroupNorm groups), got {self.ch}"
            )
        if not isinstance(self.double_z, bool):
            raise IBQConfigError(f"ddconfig.double_z must be a bool, got {self.double_z!r}")
        if self.double_z:
            # The reference quant_conv takes z_channels inputs, so a double_z encoder
            # could never have produced a working checkpoint.
            raise IBQConfigError("ddconfig.double_z must be false (quant_conv expects z_channels)")
        dropout_ok = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        if not dropout_ok or not 0.0 <= self.dropout < 1.0:
            raise IBQConfigError(
                f"ddconfig.dropout must be a float in [0, 1), got {self.dropout!r}"
            )

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent side: one stride-2 downsample between consecutive levels."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (``len(ch_mult)``)."""
        return len(self.ch_mult)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config.yaml") -> "IBQConfig":
        """Build from the parsed ``config.yaml`` mapping; errors are prefixed with ``source``."""
        try:
            return cls._from_mapping(raw)
        except IBQConfigError as exc:
            raise IBQConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "IBQConfig":
        """Read and validate a released ``config.yaml`` (plain YAML, read with safe_load)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"IBQ config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise IBQConfigError(f"{path.name}: not valid YAML: {exc}") from None
        return cls.from_dict(raw, source=path.name)

    @classmethod
    def _from_mapping(cls, raw: Any) -> "IBQConfig":
        if not isinstance(raw, dict):
            raise IBQConfigError(f"top level must be a mapping, got {type(raw).__name__}")
        dd = raw.get("ddconfig")
        if not isinstance(dd, dict):
            raise IBQConfigError("ddconfig must be a mapping of Encoder/Decoder arguments")
        for key, default in _ARCH_CHANGING_DEFAULTS.items():
            if key in dd and dd[key] != default:
                raise IBQConfigError(f"ddconfig.{key} must be {default!r}, got {dd[key]!r}")
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            top_level = field.name in ("n_embed", "embed_dim")
            section, prefix = (raw, "") if top_level else (dd, "ddconfig.")
            if field.name in section:
                kwargs[field.name] = section[field.name]
            elif field.name != "dropout":  # the reference Encoder defaults dropout to 0.0
                raise IBQConfigError(f"{prefix}{field.name} is missing")
        return cls(**kwargs)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The released ``config.yaml`` layout (lists, not tuples, so YAML stays plain)."""
        dd = {
            "double_z": self.double_z,
            "z_channels": self.z_channels,
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "out_ch": self.out_ch,
            "ch": self.ch,
            "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": list(self.attn_resolutions),
            "dropout": float(self.dropout),
        }
        return {"ddconfig": dd, "n_embed": self.n_embed, "embed_dim": self.embed_dim}
