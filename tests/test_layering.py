"""Imports go down only (DESIGN.md §4): the model and the engine never import serving
dependencies or the layers above them."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVING_DEPS = {"ray", "grpc", "grpc_tools", "boto3", "botocore", "redis", "valkey", "opentelemetry"}
# layer -> the project packages it must not import (everything above it)
ABOVE = {
    "kernels": {"services", "cluster", "clients"},
    "services/model": {"services.engine", "services.rpc", "services.storage", "services.jobs",
                       "services.stages", "cluster", "clients"},
    "services/engine": {"services.rpc", "services.storage", "services.jobs", "services.stages",
                        "cluster", "clients"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _back_edges(layer: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[0]
            forbidden = top in SERVING_DEPS or any(name == p or name.startswith(p + ".")
                                                   for p in ABOVE[layer])
            if forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_no_back_edges(layer):
    if not (ROOT / layer).is_dir():
        pytest.skip(f"{layer} does not exist yet")
    assert _back_edges(layer) == []


def test_walker_sees_a_back_edge(tmp_path, monkeypatch):
    """The walker itself must catch a forbidden import (else the test above proves nothing)."""
    fake = tmp_path / "services" / "model"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("import os\nfrom ray import serve\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _back_edges("services/model") == ["services/model/bad.py:2 imports ray"]


def test_importing_the_model_loads_no_serving_module():
    code = ("import sys, services.model.loader, services.model.tiny, services.model.templates, "
            "services.model.ibq; print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    loaded = set(ast.literal_eval(out))
    assert not loaded & SERVING_DEPS
