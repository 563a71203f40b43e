"""download(): file:// and presigned http URLs, with the sha256 and size checks."""
from __future__ import annotations

import dataclasses

import pytest
from emu35_client import (
    Emu35Error,
    IntegrityError,
    InvalidArgument,
    NotFound,
    ResultRef,
    Unavailable,
    download,
)
from emu35_client.convert import result_ref_from_pb


def _ref(gateway, key="a/img.png", data=b"\x89PNG-bytes") -> ResultRef:
    return result_ref_from_pb(gateway.store_object(key, data))


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_file_uri(gateway, tmp_path):
    ref = _ref(gateway)
    assert ref.uri.startswith("file://") and not ref.presigned_url
    out = download(ref, tmp_path / "out" / "sub" / "img.png")
    assert out == tmp_path / "out" / "sub" / "img.png" and out.read_bytes() == b"\x89PNG-bytes"


def test_file_uri_with_quoted_path(gateway, tmp_path):
    ref = _ref(gateway, key="with space/ünï.png", data=b"x")
    assert "%20" in ref.uri
    assert download(ref, tmp_path / "x.png").read_bytes() == b"x"


@pytest.mark.parametrize("change, match", [({"sha256": "0" * 64}, "sha256"),
                                           ({"bytes": 3}, "got 10 bytes, expected 3")])
def test_mismatch_raises_and_leaves_nothing(gateway, tmp_path, change, match):
    ref = dataclasses.replace(_ref(gateway), **change)
    dest = tmp_path / "out" / "img.png"
    with pytest.raises(IntegrityError, match=match) as info:
        download(ref, dest)
    assert info.value.code.name == "DATA_LOSS" and isinstance(info.value, Emu35Error)
    assert _leftovers(dest.parent) == []


def test_mismatch_keeps_an_existing_file(gateway, tmp_path):
    dest = tmp_path / "img.png"
    dest.write_bytes(b"old")
    with pytest.raises(IntegrityError):
        download(dataclasses.replace(_ref(gateway), sha256="f" * 64), dest)
    assert dest.read_bytes() == b"old"


def test_missing_file_and_non_local_uri(tmp_path):
    with pytest.raises(NotFound):
        download(ResultRef(uri=(tmp_path / "gone.png").as_uri()), tmp_path / "x.png")
    with pytest.raises(InvalidArgument, match="presigned_url"):
        download(ResultRef(uri="s3://bucket/key.png"), tmp_path / "x.png")
    with pytest.raises(InvalidArgument, match="presigned_url"):
        download(ResultRef(uri="s3://b/k", presigned_url="file:///etc/passwd"), tmp_path / "x.png")


def test_http_presigned_url(http_store, tmp_path):
    ref = _ref(http_store, data=b"served over http" * 1000)
    assert ref.presigned_url.startswith("http://127.0.0.1:") and ref.uri.startswith("s3://")
    assert download(ref, tmp_path / "h.png").read_bytes() == b"served over http" * 1000


def test_http_sha_mismatch(http_store, tmp_path):
    ref = dataclasses.replace(_ref(http_store), sha256="1" * 64)
    with pytest.raises(IntegrityError):
        download(ref, tmp_path / "out" / "h.png")
    assert _leftovers(tmp_path / "out") == []


def test_http_errors_map_and_hide_the_signature(http_store, tmp_path):
    missing = f"{http_store.http_base}/nope.png?X-Amz-Signature=secret"
    ref = dataclasses.replace(_ref(http_store), presigned_url=missing)
    with pytest.raises(NotFound, match="HTTP 404") as info:
        download(ref, tmp_path / "h.png")
    assert "secret" not in str(info.value)
    closed = dataclasses.replace(ref, presigned_url="http://127.0.0.1:1/x.png")
    with pytest.raises(Unavailable):
        download(closed, tmp_path / "h.png", timeout=5)
