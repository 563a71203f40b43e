"""Where settings come from, and which wins: defaults < config file < environment < flags.

Each source is a ``Layer``: nested dicts in the model's shape, plus how to name each value's
origin in an error (``engine.kv_blocks`` in a file, ``EMU35_ENGINE__KV_BLOCKS``, ``--kv-blocks``).
Environment variables are ``EMU35_`` + the path in capitals joined by ``__``. A variable under
``EMU35_`` that is not a setting but looks like one (a section name, ``__``, or close to a
setting's name) is an error rather than silently ignored.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from .model import Emu35Settings

ENV_PREFIX = "EMU35_"
NESTED = "__"
Path_ = tuple[str, ...]

# EMU35_ variables that are not settings: each is read by one process or library directly.
OTHER_VARIABLES = {
    "EMU35_TRACE_EXPORTER": "tracing, in each process: none (default), file or otlp",
    "EMU35_TRACE_FILE": "tracing: append spans as JSON lines to this file (implies file)",
    "EMU35_OTLP_ENDPOINT": "tracing: the OTLP collector endpoint (extra otlp)",
    "EMU35_ATTENTION": "kernel switch: attention implementation (kernels/registry.py)",
    "EMU35_FUSED": "kernel switch: fused norm kernels (kernels/registry.py)",
    "EMU35_DECODE_FUSION": "kernel switch: fused decode kernels, 0 to disable",
    "EMU35_SAMPLING": "kernel switch: guided-sampling implementation",
    "EMU35_DRAW": "kernel switch: token draw implementation",
    "EMU35_SKINNY_GEMM": "kernel switch: skinny GEMM for decode, 0 to disable",
    "EMU35_API_KEY": "emu35-client: the API key it sends",
    "EMU35_GRPC_BIND_HOST": "internal: set by emu35 serve for its Ray workers",
    "EMU35_TOKENIZER_DIR": "tests: a directory with the real Emu3.5 tokenizer files",
}


class SettingsError(ValueError):
    """Invalid settings: one line naming every bad value by where it was given."""


@dataclass(frozen=True)
class Layer:
    """One source's values (nested dicts) and the name of each value's origin."""

    data: dict
    labels: dict[Path_, str] = field(default_factory=dict)


def setting_paths(model: type[BaseModel] = Emu35Settings, prefix: Path_ = ()) -> list[Path_]:
    """Every leaf setting's path, in the model's order."""
    paths = []
    for name, f in model.model_fields.items():
        kind = f.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            paths += setting_paths(kind, prefix + (name,))
        else:
            paths.append(prefix + (name,))
    return paths


def env_name(path: Path_) -> str:
    return ENV_PREFIX + NESTED.join(p.upper() for p in path)


def environment_layer(environ: Mapping[str, str]) -> Layer:
    """The settings given as EMU35_ variables. Raises SettingsError for likely typos."""
    known = {env_name(p): p for p in setting_paths()}
    data: dict = {}
    labels, typos = {}, []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OTHER_VARIABLES:
            continue
        path = known.get(name)
        if path is None:
            if _looks_like_a_setting(name, known):
                typos.append(_unknown(name, [*known, *OTHER_VARIABLES]))
            continue
        _put(data, path, environ[name])
        labels[path] = name
    if typos:
        raise SettingsError("; ".join(typos))
    return Layer(data, labels)


def _looks_like_a_setting(name: str, known: dict[str, Path_]) -> bool:
    sections = {ENV_PREFIX + p[0].upper() for p in known.values()}
    return (NESTED in name or any(name.startswith(s) for s in sections)
            or bool(difflib.get_close_matches(name, known, n=1, cutoff=0.8)))


def _unknown(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else " (docs/settings.md lists them)"
    return f"{name}: not a setting{hint}"


def _put(data: dict, path: Path_, value) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _has(data: dict, path: Path_) -> bool:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def merge(base: dict, override: dict) -> dict:
    """``override`` wins, section by section and key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


_MODEL_SOURCE = (("model", "path"), ("model", "tiny"))


def resolve(layers: list[Layer]) -> Emu35Settings:
    """Validate the layers merged, later layers winning. A layer that names a model source
    (model.path or model.tiny) replaces the source of the layers below it."""
    merged: dict = {"model": {}}
    for layer in layers:
        if any(_has(layer.data, p) for p in _MODEL_SOURCE) and isinstance(merged["model"], dict):
            merged["model"] = {k: v for k, v in merged["model"].items() if k not in ("path", "tiny")}
        merged = merge(merged, layer.data)
    try:
        return Emu35Settings.model_validate(merged)
    except ValidationError as e:
        raise SettingsError(describe(e, layers)) from None


def describe(error: ValidationError, layers: list[Layer] = (), prefix: Path_ = ()) -> str:
    """One line: every problem as ``origin: message``, the origin named as it was given."""
    lines = []
    for err in error.errors():
        path, msg = _error_path(err, prefix)
        label = next((ly.labels[path] for ly in reversed(layers) if path in ly.labels),
                     ".".join(path))
        line = f"{label}: {msg}" if label else msg
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)


def _error_path(err: dict, prefix: Path_) -> tuple[Path_, str]:
    """The setting an error is about, and its message. A validator's message that starts by
    naming a field ("bucket: ...") is about that field of the section it ran on."""
    path = prefix + tuple(str(p) for p in err["loc"] if isinstance(p, str))
    msg = err["msg"].removeprefix("Value error, ")
    head, sep, rest = msg.partition(": ")
    if sep and " " not in head and head.replace("_", "").replace(".", "").isalnum():
        return path + tuple(head.split(".")), rest
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return path, msg


def defaults() -> dict[Path_, object]:
    """Every setting's default (a stage's own defaults included)."""
    out = {}
    for name, f in Emu35Settings.model_fields.items():
        section = f.annotation.model_construct()  # defaults, no validation
        for path in setting_paths(f.annotation):
            value = section
            for key in path:
                value = getattr(value, key)
            out[(name, *path)] = value
    return out


def description(path: Path_) -> str:
    model: type[BaseModel] = Emu35Settings
    for key in path[:-1]:
        model = model.model_fields[key].annotation
    return model.model_fields[path[-1]].description or ""


def settings_table() -> str:
    """docs/settings.md: every setting, its variable, file key, default and meaning."""
    dflt = defaults()
    lines = ["# Settings", "",
             "One model (`services/settings`) read by `emu35 serve --config FILE` (YAML, the "
             "file key), the environment (the variable) and flags; precedence: flag > "
             "environment > file > default. Generated by `python -m services.settings`; a "
             "test keeps it current.", "",
             "| variable | file key | default | meaning |", "|---|---|---|---|"]
    for path in setting_paths():
        value = dflt[path]
        shown = "unset" if value is None else str(value) or '""'
        lines.append(f"| `{env_name(path)}` | `{'.'.join(path)}` | `{shown}` | "
                     f"{description(path)} |")
    lines += ["", "A variable under `EMU35_` that is none of these but looks like a setting "
              "(a section name, `__`, or close to a setting's name) stops `emu35 serve` with "
              "one line naming it.", "", "## Other variables", "",
              "| variable | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in OTHER_VARIABLES.items()]
    return "\n".join(lines) + "\n"


__all__ = ["ENV_PREFIX", "Layer", "OTHER_VARIABLES", "SettingsError",
           "describe", "env_name", "environment_layer", "merge", "resolve", "setting_paths",
           "settings_table"]
