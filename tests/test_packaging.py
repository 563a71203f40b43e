"""The generated emu35_proto modules ship in exactly one distribution (emu35-client), which the
server depends on: installing both and uninstalling one never deletes the other's files."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _wheel_files(project: Path, out: Path) -> set[str]:
    """Build the project's wheel from a clean copy (setuptools writes build/ and *.egg-info
    next to the sources, and reuses a stale build/)."""
    src = out / "src"
    shutil.copytree(project, src, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, cwd=out)
    (wheel,) = out.glob("*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_only_the_client_wheel_ships_emu35_proto(tmp_path):
    server = _wheel_files(ROOT, tmp_path / "server")
    client = _wheel_files(ROOT / "clients", tmp_path / "client")
    assert "emu35_proto/v1/api_pb2.py" in client and "emu35_client/client.py" in client
    assert not any(f.startswith("emu35_proto/") for f in server), sorted(server)[:20]
    assert "services/stages/deployments.py" in server and "cluster/serve.py" in server
    metadata = next(f for f in server if f.endswith(".dist-info/METADATA"))
    requires = re.findall(r"^Requires-Dist: (\S+)", zipfile.ZipFile(
        next((tmp_path / "server").glob("*.whl"))).read(metadata).decode(), re.M)
    assert any(r.startswith("emu35-client") for r in requires), requires
