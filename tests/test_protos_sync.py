"""The committed generated modules (clients/emu35_proto) are what `python -m protos.generate`
writes from protos/ today, and pyproject's protobuf floor admits their gencode version."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is not installed (it is in the "
                    "'test' extra: pip install -e '.[test]'); cannot regenerate the protos")

from protos.generate import DEFAULT_OUT, PROTO_ROOT, generate, proto_files

ROOT = Path(__file__).resolve().parents[1]
_VERSION_RE = re.compile(r"^# Protobuf Python Version: (\S+)$", re.MULTILINE)


def _tree(root: Path, packages: set[str]) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for pkg in sorted(packages) for p in (root / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _gencode_version(files: dict[str, bytes]) -> str:
    versions = {m.group(1) for data in files.values()
                for m in _VERSION_RE.finditer(data.decode("utf-8", "replace"))}
    return ", ".join(sorted(versions)) or "?"


def test_generated_modules_match_the_protos(tmp_path):
    assert DEFAULT_OUT == ROOT / "clients" and PROTO_ROOT == ROOT / "protos"
    packages = {f.split("/")[0] for f in proto_files()}
    generate(tmp_path)
    fresh, committed = _tree(tmp_path, packages), _tree(DEFAULT_OUT, packages)
    hint = (f"run `python -m protos.generate` and commit the result (fresh gencode "
            f"{_gencode_version(fresh)}, committed {_gencode_version(committed)})")
    assert sorted(fresh) == sorted(committed), hint
    differing = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not differing, f"{differing}: {hint}"


def test_generation_is_deterministic(tmp_path):
    generate(tmp_path / "a")
    generate(tmp_path / "b")
    packages = {f.split("/")[0] for f in proto_files()}
    assert _tree(tmp_path / "a", packages) == _tree(tmp_path / "b", packages)


def test_grpc_stubs_only_for_files_with_services(tmp_path):
    protos = tmp_path / "protos" / "pkg"
    protos.mkdir(parents=True)
    (protos / "msgs.proto").write_text('syntax = "proto3";\npackage t;\n'
                                       "// service Commented { }\nmessage Ping { int32 n = 1; }\n")
    (protos / "svc.proto").write_text('syntax = "proto3";\npackage t;\nimport "pkg/msgs.proto";\n'
                                      "service Pinger {\n  rpc Send(Ping) returns (Ping);\n}\n")
    out = tmp_path / "out"
    stale = out / "pkg" / "gone_pb2.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("# from a removed .proto\n")
    written = {p.relative_to(out).as_posix() for p in generate(out, root=tmp_path / "protos")}
    assert written == {"pkg/__init__.py", "pkg/msgs_pb2.py", "pkg/msgs_pb2.pyi",
                       "pkg/svc_pb2.py", "pkg/svc_pb2.pyi", "pkg/svc_pb2_grpc.py"}
    assert "from pkg import msgs_pb2" in (out / "pkg" / "svc_pb2.py").read_text()


def test_pyproject_protobuf_floor_admits_the_gencode():
    committed = _tree(DEFAULT_OUT, {f.split("/")[0] for f in proto_files()})
    (gencode,) = _gencode_version(committed).split(", ")
    floor = re.search(r'"protobuf>=([\d.]+)', (ROOT / "pyproject.toml").read_text()).group(1)
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))
    assert as_tuple(floor) >= as_tuple(gencode), f"pyproject needs protobuf>={gencode}"
