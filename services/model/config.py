"""Emu3.5 LLM configuration read from a checkpoint's ``config.json`` (spec §1.1)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Values the reference code falls back to when config.json omits a field (spec §1.1).
_CODE_DEFAULTS = {
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 9216,
    "rope_scaling": None,
}


class ConfigError(ValueError):
    """config.json is missing a field, has a wrong type or an inconsistent value."""


@dataclass(frozen=True)
class RopeScaling:
    """``rope_scaling`` of the reference: linear or dynamic NTK, factor > 1."""

    type: str
    factor: float


@dataclass(frozen=True)
class Emu35Config:
    """Architecture of an Emu3.5 decoder. Every field comes from config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = _CODE_DEFAULTS["rope_theta"]
    rms_norm_eps: float = _CODE_DEFAULTS["rms_norm_eps"]
    max_position_embeddings: int = _CODE_DEFAULTS["max_position_embeddings"]
    rope_scaling: RopeScaling | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def q_size(self) -> int:
        # 8192 for Emu3.5: the query width differs from hidden_size (spec §1.2).
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token per sequence in bf16 (256 KiB for the 34B model)."""
        return self.num_hidden_layers * 2 * self.kv_size * 2

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> "Emu35Config":
        """Validate a parsed config.json; errors name the offending field."""
        model_type = raw.get("model_type")
        if model_type != "Emu3":
            raise ConfigError(f"{source}: model_type must be 'Emu3', got {model_type!r}")
        ints = {}
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads"):
            ints[name] = _positive_int(raw, name, source)
        head_dim = raw.get("head_dim", ints["hidden_size"] // ints["num_attention_heads"])
        ints["head_dim"] = _positive_int({"head_dim": head_dim}, "head_dim", source)
        if ints["head_dim"] % 2:
            raise ConfigError(f"{source}: head_dim must be even for RoPE, got {ints['head_dim']}")
        if ints["num_attention_heads"] % ints["num_key_value_heads"]:
            raise ConfigError(f"{source}: num_attention_heads ({ints['num_attention_heads']}) must be "
                              f"a multiple of num_key_value_heads ({ints['num_key_value_heads']})")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act must be 'silu', got {act!r}")
        if raw.get("tie_word_embeddings", False):
            raise ConfigError(f"{source}: tie_word_embeddings must be false (Emu3.5 has an untied lm_head)")
        for flag in ("attention_bias", "mlp_bias"):
            if raw.get(flag, False):
                raise ConfigError(f"{source}: {flag} must be false (Emu3.5 has no biases)")
        known = set(ints) | {"rope_theta", "rms_norm_eps", "max_position_embeddings", "rope_scaling",
                             "pad_token_id", "bos_token_id", "eos_token_id"}
        return cls(
            **ints,
            rope_theta=_positive_float(raw, "rope_theta", source),
            rms_norm_eps=_positive_float(raw, "rms_norm_eps", source),
            max_position_embeddings=_positive_int(
                {"max_position_embeddings": raw.get("max_position_embeddings",
                                                    _CODE_DEFAULTS["max_position_embeddings"])},
                "max_position_embeddings", source),
            rope_scaling=_rope_scaling(raw.get("rope_scaling"), source),
            pad_token_id=_optional_id(raw, "pad_token_id", source),
            bos_token_id=_optional_id(raw, "bos_token_id", source),
            eos_token_id=_optional_id(raw, "eos_token_id", source),
            extra={k: v for k, v in raw.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "Emu35Config":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path} does not exist (expected a "
                                    "directory with config.json)")
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"config.json not found in checkpoint directory {path.parent}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a JSON object")
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json form, as the released checkpoints write it."""
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out["rope_scaling"] = asdict(self.rope_scaling) if self.rope_scaling else None
        out.update(model_type="Emu3", architectures=["Emu3ForCausalLM"], hidden_act="silu",
                   tie_word_embeddings=False, torch_dtype="bfloat16")
        return {**self.extra, **out}


def _positive_int(raw: dict, name: str, source: str) -> int:
    if name not in raw:
        raise ConfigError(f"{source}: missing required field {name!r}")
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{source}: {name} must be a positive integer, got {value!r}")
    return value


def _positive_float(raw: dict, name: str, source: str) -> float:
    value = raw.get(name, _CODE_DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{source}: {name} must be a positive number, got {value!r}")
    return float(value)


def _optional_id(raw: dict, name: str, source: str) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: {name} must be a non-negative integer, got {value!r}")
    if value >= raw["vocab_size"]:
        raise ConfigError(f"{source}: {name}={value} is outside vocab_size={raw['vocab_size']}")
    return value


def _rope_scaling(value: Any, source: str) -> RopeScaling | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: rope_scaling must be null or an object, got {value!r}")
    kind = value.get("type", value.get("rope_type"))
    factor = value.get("factor")
    if kind not in ("linear", "dynamic"):
        raise ConfigError(f"{source}: rope_scaling.type must be 'linear' or 'dynamic', got {kind!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise ConfigError(f"{source}: rope_scaling.factor must be a number > 1, got {factor!r}")
    return RopeScaling(type=kind, factor=float(factor))
