"""LocalResultStore (unit, CPU), the settings and make_store, and the storage layer's imports."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.storage import (
    AlreadyExists,
    LocalResultStore,
    StorageError,
    StorageSettings,
    make_store,
)
from tests.storage.contract import PNG, StoreContract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    return LocalResultStore(tmp_path / "results")


class TestLocalContract(StoreContract):
    pass


def test_files_are_read_directly(store):
    ref = store.put("acme/r/images/00.png", PNG, "image/png", width=64, height=32)
    assert ref.uri.startswith("file:///") and ref.presigned_url == ""
    assert store.url_for("acme/r/images/00.png") == ""
    path = store.path_for("acme/r/images/00.png")
    assert ref.uri == path.as_uri() and path.read_bytes() == PNG
    meta = json.loads((store.root / ".meta/acme/r/images/00.png.json").read_text())
    assert meta == {"sha256": ref.sha256, "size": len(PNG), "content_type": "image/png",
                    "width": 64, "height": 32}


def test_no_temporary_files_left(store):
    for i in range(3):
        store.put("t/r/story.pb", bytes([i]) * 10, "application/x-protobuf")
    leftovers = [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_failed_overwrite_keeps_the_old_object(store, monkeypatch):
    store.put("t/r/story.pb", b"old", "application/x-protobuf")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="write failed: disk full"):
        store.put("t/r/story.pb", b"new", "application/x-protobuf")
    monkeypatch.undo()
    assert store.get("t/r/story.pb") == b"old"
    assert [p for p in store.root.rglob("*") if p.name.endswith(".tmp")] == []


def test_bytes_without_sidecar_do_not_exist(store):
    """A writer that died after moving the bytes but before the sidecar left no object."""
    path = store.path_for("t/r/images/00.png")
    path.parent.mkdir(parents=True)
    path.write_bytes(PNG)
    assert not store.exists("t/r/images/00.png")
    store.put("t/r/images/00.png", PNG, "image/png")  # the retry
    assert store.exists("t/r/images/00.png")


def test_create_only_keeps_a_half_created_key_taken(store):
    """Bytes without a sidecar may be a creator at work: a second create must not take the
    key (it would swap the bytes under the first one's sidecar); delete_prefix frees it."""
    path = store.path_for("t/r/claim.json")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"creator-1")
    assert not store.exists("t/r/claim.json")
    with pytest.raises(AlreadyExists):
        store.put("t/r/claim.json", b"creator-2", "application/json", create=True)
    assert path.read_bytes() == b"creator-1"
    store.delete_prefix("t/r")
    store.put("t/r/claim.json", b"creator-2", "application/json", create=True)
    assert store.get("t/r/claim.json") == b"creator-2"


def test_create_only_failing_sidecar_frees_the_key(store, monkeypatch):
    real = os.replace

    def broken_replace(src, dst):
        if ".meta" in str(dst):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="disk full"):
        store.put("t/r/claim.json", b"x", "application/json", create=True)
    monkeypatch.undo()
    assert not store.path_for("t/r/claim.json").exists()
    assert [p for p in store.root.rglob("*") if p.name.endswith(".tmp")] == []
    store.put("t/r/claim.json", b"x", "application/json", create=True)


def test_corrupted_bytes_are_detected(store):
    store.put("t/r/images/00.png", PNG, "image/png")
    store.path_for("t/r/images/00.png").write_bytes(PNG[:-1] + b"?")
    with pytest.raises(StorageError, match="do not match their sha256"):
        store.get("t/r/images/00.png")


def test_unreadable_sidecar_is_a_storage_error(store):
    store.put("t/r/story.pb", b"x", "application/x-protobuf")
    (store.root / ".meta/t/r/story.pb.json").write_text("{not json")
    with pytest.raises(StorageError, match="unreadable metadata"):
        store.ref_for("t/r/story.pb")


def test_foreign_uri_rejected(store, tmp_path):
    other = LocalResultStore(tmp_path / "other")
    ref = other.put("t/r/story.pb", b"x", "application/x-protobuf")
    with pytest.raises(ValueError, match="^uri: "):
        store.key_for_uri(ref.uri)


# ---- settings and make_store -----------------------------------------------------------------

def test_make_store_from_settings(monkeypatch, tmp_path):
    """The environment is read by the one settings model (tests/cluster/test_config_file.py),
    not here: StorageSettings is its storage section."""
    settings = StorageSettings(backend="local", root=tmp_path / "root", presign_expiry_s=120)
    assert settings.presign_expiry_s == 120
    store = make_store(settings)
    assert isinstance(store, LocalResultStore) and store.root == tmp_path / "root"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMU35_STORAGE__ROOT", str(tmp_path / "ignored"))
    default = make_store()  # None: the defaults (a relative "results" folder)
    assert isinstance(default, LocalResultStore) and default.root == tmp_path / "results"


@pytest.mark.parametrize("kwargs,field", [
    ({"backend": "s3"}, "bucket"),
    ({"backend": "gcs"}, "backend"),
    ({"backend": "s3", "bucket": "results", "access_key": "AK"}, "access_key"),
    ({"presign_expiry_s": 0}, "presign_expiry_s"),
    ({"presign_expiry_s": 8 * 24 * 3600}, "presign_expiry_s"),
    ({"multipart_threshold": 1024}, "multipart_threshold"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"prefix": "../escape"}, "prefix"),
    ({"buckett": "typo"}, "buckett"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        StorageSettings(**kwargs)


def test_settings_hide_secrets_and_normalise_prefix():
    s = StorageSettings(backend="s3", bucket="results", prefix="/emu35/prod/",
                        access_key="AK", secret_key="very-secret")
    assert s.prefix == "emu35/prod"
    assert "very-secret" not in repr(s) and "very-secret" not in str(s.model_dump())
    with pytest.raises(ValidationError):
        s.bucket = "other"  # frozen


# ---- layering (DESIGN.md §4) -------------------------------------------------------------------

FORBIDDEN = {"ray", "grpc", "grpc_tools", "google", "emu35_proto", "redis", "torch"}
FORBIDDEN_PROJECT = ("services.engine", "services.rpc", "services.stages", "services.jobs",
                     "services.model", "cluster", "clients")


def test_storage_imports_no_layer_above_and_no_serving_stack():
    bad = []
    for path in sorted((ROOT / "services/storage").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN
                    or n.startswith(FORBIDDEN_PROJECT)]
    assert bad == []


def test_importing_storage_does_not_load_boto3():
    code = "import sys, services.storage; print(sorted(m for m in sys.modules if 'boto' in m))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
