"""Imports go down only (DESIGN.md §4): every layer imports only the project packages below it
(an allow-list, so a new edge fails until it is placed) and none of the serving dependencies
it must stay free of; nothing in the product imports benchmarks (they are not shipped in the
wheel); the client library imports only grpc, protobuf, the standard library and its own
packages. Relative imports are resolved, so ``from ...engine import x`` counts too."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVING_DEPS = {"ray", "grpc", "grpc_tools", "boto3", "botocore", "redis", "valkey", "opentelemetry",
                "google.protobuf"}
PROJECT = {"kernels", "services", "cluster", "benchmarks", "protos", "tests", "emu35_client",
           "emu35_proto"}
MODEL = {"kernels", "services.model"}
ENGINE = MODEL | {"services.engine"}
SERVICES = ENGINE | {"services.rpc", "services.storage", "services.jobs"}


class Layer:
    def __init__(self, path: str, may_import: set[str], forbidden_deps: set[str],
                 only_deps: set[str] | None = None, package_root: str = ""):
        self.path, self.may_import, self.forbidden_deps = path, may_import, forbidden_deps
        self.only_deps = only_deps  # if set: the only third-party imports allowed (+ stdlib)
        self.package_root = package_root  # where its import names start (clients/)


LAYERS = {layer.path: layer for layer in [
    Layer("kernels", {"kernels"}, SERVING_DEPS),
    Layer("services/model", MODEL, SERVING_DEPS),
    Layer("services/engine", ENGINE, SERVING_DEPS),
    # storage is beside rpc: the request lifecycle (rpc/gateway.py) writes through ResultStore,
    # storage never sees protobuf or gRPC.
    Layer("services/storage", ENGINE | {"services.storage"},
          {"ray", "grpc", "grpc_tools", "google.protobuf", "opentelemetry"}),
    Layer("services/rpc", SERVICES - {"services.jobs"} | {"emu35_proto"}, {"ray", "grpc_tools"}),
    # deploy-time settings (pydantic): read by the stages and the CLI, over the request limits
    # (rpc) and storage settings they describe; no serving dependency of their own.
    Layer("services/settings", SERVICES | {"services.settings"},
          {"ray", "grpc", "grpc_tools", "boto3", "opentelemetry"}),
    # emu35_proto in stages: issue 10 item 13 moves it into services/rpc.
    Layer("services/stages", SERVICES | {"services.stages", "services.settings", "emu35_proto"},
          {"grpc_tools"}),
    Layer("cluster", SERVICES | {"services.stages", "services.settings", "cluster"}, {"grpc_tools"}),
    Layer("benchmarks", PROJECT - {"tests", "protos"}, set()),
    Layer("clients", {"emu35_client", "emu35_proto"}, set(), only_deps={"grpc", "google.protobuf"},
          package_root="clients"),
]}


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(path: Path, package: list[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, whose package is ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module or not node.level:
                found.append((node.lineno, mod))
            else:  # from . import a, b: each is a module or a name of the package
                found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return found


def _package_of(path: Path, root: Path) -> list[str]:
    return list(path.relative_to(root).parent.parts)


def _back_edges(name: str) -> list[str]:
    layer = LAYERS[name]
    root = ROOT / layer.package_root
    bad = []
    for path in sorted((ROOT / layer.path).rglob("*.py")):
        for line, mod in _imports(path, _package_of(path, root)):
            top = mod.split(".")[0]
            if top in PROJECT:
                wrong = not _under(".".join(mod.split(".")[:2]) if top == "services" else mod,
                                   layer.may_import)
            elif layer.only_deps is not None:
                wrong = top not in sys.stdlib_module_names and not _under(mod, layer.only_deps)
            else:
                wrong = _under(mod, layer.forbidden_deps)
            if wrong:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


def test_every_layer_is_covered():
    """Each package directory of the tree belongs to a layer checked here."""
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/__init__.py")}
    packages |= {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("services/*/__init__.py")}
    packages |= {"clients"} if (ROOT / "clients" / "emu35_client").is_dir() else set()
    unchecked = {p for p in packages - {"services", "tests", "protos"}
                 if not any(p == layer or p.startswith(layer + "/") for layer in LAYERS)}
    assert unchecked == set()


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_no_back_edges(layer):
    if not (ROOT / layer).is_dir():
        pytest.skip(f"{layer} does not exist yet")
    assert _back_edges(layer) == []


def test_nothing_in_the_product_imports_benchmarks():
    assert all("benchmarks" not in layer.may_import for name, layer in LAYERS.items()
               if name != "benchmarks")


@pytest.mark.parametrize("layer,source,edge", [
    ("services/model", "import os\nfrom ray import serve\n", "ray"),
    ("services/model", "from ...engine.engine import Engine\n", "services.engine.engine"),
    ("services/engine", "from services.rpc import convert\n", "services.rpc"),
    ("services/storage", "from services.rpc.errors import x\n", "services.rpc.errors"),
    ("kernels", "from benchmarks.timing import median_us\n", "benchmarks.timing"),
    ("services/engine", "from ...rpc import convert\n", "services.rpc"),
    ("services/rpc", "from services.stages import deployments\n", "services.stages"),
    ("services/stages", "import cluster.serve\n", "cluster.serve"),
    ("cluster", "from benchmarks import common\n", "benchmarks"),
    ("clients/emu35_client", "import torch\n", "torch"),
    ("clients/emu35_client", "from services.model import x\n", "services.model"),
])
def test_walker_sees_a_back_edge(tmp_path, monkeypatch, layer, source, edge):
    """The walker itself must catch a forbidden import (else the tests above prove nothing),
    and accept the allowed one beside it."""
    fake = tmp_path / layer / "sub"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("import json\nfrom . import sibling\n" + source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    name = "clients" if layer.startswith("clients") else layer
    line = 2 + source.count("\n")
    assert _back_edges(name) == [f"{layer}/sub/bad.py:{line} imports {edge}"]


def test_importing_the_model_loads_no_serving_module():
    code = ("import sys, services.model.loader, services.model.tiny, services.model.templates, "
            "services.model.ibq; print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    loaded = set(ast.literal_eval(out))
    assert not loaded & {d.split(".")[0] for d in SERVING_DEPS if d != "google.protobuf"}
