"""``emu35 serve`` settings: the one model (services/settings) read from ``--config FILE``
(YAML), the environment (``EMU35_SECTION__FIELD``) and flags; precedence flag > environment >
file > default. Validated with pydantic: unknown keys and bad values are errors naming the
value as it was given (``stages.generator.max_replicas: ...``, ``EMU35_ENGINE__KV_BLOCKS: ...``,
``--kv-blocks: ...``).

Relative paths in the file are relative to the file's directory. Storage credentials never go
in the file: boto3 reads them from the environment (AWS_*), or EMU35_STORAGE__ACCESS_KEY /
EMU35_STORAGE__SECRET_KEY.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from services.storage.settings import CREDENTIALS

_PATH_KEYS = {"model": ("path", "tiny", "vision_tokenizer", "tokenizer"), "storage": ("root",)}
SECTIONS = ("model", "server", "storage", "engine", "limits", "ray", "stages")


class ConfigError(ValueError):
    """The file, the environment or the flags describe an invalid deployment (one line)."""


def read_file(path: str | Path) -> dict:
    """The YAML file as nested dicts, relative paths made relative to its directory."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"--config: {path} is a directory, not a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML ({_one_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of sections "
                          f"({', '.join(SECTIONS)})")
    for section, keys in _PATH_KEYS.items():
        values = data.get(section)
        if isinstance(values, dict):
            for key in keys:
                if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
                    values[key] = str(path.parent / values[key])
    storage = data.get("storage")
    for key in CREDENTIALS:
        if isinstance(storage, dict) and key in storage:
            raise ConfigError(f"storage.{key}: credentials are read from the environment "
                              "(AWS_* or EMU35_STORAGE__*), never from the config file")
    return data


def load(config: str | Path | None, flags, environ: Mapping[str, str] | None = None):
    """The settings: defaults < the file < the environment < ``flags`` (a sources.Layer).
    Raises ConfigError with one line naming every bad value."""
    from services.settings.sources import Layer, SettingsError, environment_layer, resolve

    try:
        file = Layer(read_file(config)) if config else Layer({})
        env = environment_layer(os.environ if environ is None else environ)
        return resolve([file, env, flags])
    except SettingsError as e:
        raise ConfigError(str(e)) from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
