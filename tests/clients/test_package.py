"""emu35-client is its own package: grpcio and protobuf only, and its README example runs."""
from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from .conftest import CLIENTS

ALLOWED = {"grpc", "google", "emu35_proto", "emu35_client"}


def test_imports_only_stdlib_grpc_and_protobuf():
    bad = []
    for path in sorted((CLIENTS / "emu35_client").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top not in ALLOWED and top not in sys.stdlib_module_names:
                    bad.append(f"{path.name} imports {name}")
    assert bad == []


def test_import_loads_no_server_stack():
    code = ("import sys, emu35_client, emu35_client.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=CLIENTS, capture_output=True,
                         text=True, check=True).stdout
    assert not set(ast.literal_eval(out)) & {"torch", "numpy", "PIL", "ray", "services"}


def test_pyproject():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((CLIENTS / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "emu35-client"
    assert project["dependencies"] == ["grpcio>=1.85.1", "protobuf>=7.35.1"]
    assert project["scripts"] == {"emu35-client": "emu35_client.cli:main"}
    assert meta["tool"]["setuptools"]["packages"]["find"]["include"] == ["emu35_client*",
                                                                         "emu35_proto*"]
    import emu35_client
    assert meta["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "emu35_client.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+", emu35_client.__version__)


def test_readme_examples_run(gateway, tmp_path, monkeypatch, capsys):
    readme = (CLIENTS / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:  # the README's own code, against the fake gateway
        code = compile(block.replace("127.0.0.1:9000", gateway.target), "README.md", "exec")
        exec(code, {})  # noqa: S102
    assert (tmp_path / "out" / "00.png").is_file()
    assert (tmp_path / "out" / "lighthouse.png").is_file()
    assert "stop 7" in capsys.readouterr().out
