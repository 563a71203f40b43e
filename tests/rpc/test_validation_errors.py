"""Request checks and status mapping, without a cluster: each bad input names its field."""
from __future__ import annotations

import io
import struct
import zlib

import grpc
import pytest
from PIL import Image

from emu35_proto.v1 import api_pb2, common_pb2
from services.engine.request import RequestError
from services.engine.scheduler import QueueFull
from services.rpc.errors import InvalidArgument, status_for
from services.rpc.validation import Limits, check_request


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "red").save(buf, format="PNG")
    return buf.getvalue()


def _bomb_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + iend)


def _req(**kw):
    images = [api_pb2.InputImage(data=d) for d in kw.pop("images", [])]
    return api_pb2.GenerateRequest(task=kw.pop("task", common_pb2.X2I), prompt=kw.pop("prompt", "edit"),
                                   images=images, **kw)


@pytest.mark.parametrize("req, field", [
    (_req(images=[_bomb_header(100_000, 100_000)]), "images[0]: too many pixels"),
    (_req(images=[_bomb_header(5000, 5000)]), "images[0]: 5000x5000 pixels"),
    (_req(images=[_png(8, 8), b"GIF89a" + b"\0" * 20]), "images[1]"),
    (_req(images=[b""]), "images[0]: empty"),
    (_req(images=[_png(8, 8)] * 4), "images: 4 given"),
    (_req(prompt="  "), "prompt: must not be empty"),
    (_req(task=common_pb2.TASK_UNSPECIFIED), "task"),
    (_req(images=[_png(8, 8)], request_id="bad id!"), "request_id"),
    (_req(images=[_png(8, 8)], size=common_pb2.ImageSize(preset="5:4")), "size"),
    (_req(images=[_png(8, 8)], size=common_pb2.ImageSize(grid=common_pb2.ImageGrid(h=0, w=3))), "size"),
])
def test_bad_requests_name_the_field(req, field):
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        check_request(req, Limits())


def test_oversized_image_bytes_checked_before_decoding():
    with pytest.raises(InvalidArgument, match="bytes, the limit"):
        check_request(_req(images=[_png(64, 64)]), Limits(max_image_bytes=100))


def test_a_good_request_passes():
    checked = check_request(_req(images=[_png(32, 16)], size=common_pb2.ImageSize(preset="16:9")), Limits())
    assert checked.size.h == 47 and checked.size_given and len(checked.images) == 1


@pytest.mark.parametrize("exc, code", [
    (InvalidArgument("prompt: x"), grpc.StatusCode.INVALID_ARGUMENT),
    (RequestError("max_new_tokens: x"), grpc.StatusCode.INVALID_ARGUMENT),
    (QueueFull("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (KeyError("boom"), grpc.StatusCode.INTERNAL),
])
def test_status_mapping(exc, code):
    got, message = status_for(exc)
    assert got == code
    assert "Traceback" not in message
    if code == grpc.StatusCode.INTERNAL:
        assert "boom" not in message  # internals are not leaked


def test_public_errors_survive_pickling():
    """Ray sends a replica's exception to the proxy by pickle."""
    import pickle

    from services.rpc.errors import PublicError, Status
    err = PublicError(Status(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", (("retry-after-ms", "5"),)))
    assert pickle.loads(pickle.dumps(err)).status == err.status


@pytest.mark.parametrize("inner, public", [
    ("text.top_p must be in (0, 1], got 2", "text_sampling.top_p must be in (0, 1], got 2"),
    ("image.temperature must be > 0", "image_sampling.temperature must be > 0"),
    ("stop: 'eoi' is only for t2i and x2i", "stop_at_image_end: 'eoi' is only for t2i and x2i"),
    ("output_grid: a 9*9 image takes", "size: a 9*9 image takes"),
    ("max_new_tokens must be positive", "max_new_tokens must be positive"),
])
def test_engine_field_names_become_public_ones(inner, public):
    assert status_for(RequestError(inner)) == (grpc.StatusCode.INVALID_ARGUMENT, public)


@pytest.mark.parametrize("grid, field", [
    (common_pb2.CodeGrid(h=2, w=2, codes=[1, 2, 3]), "grid.codes: 3 codes do not fill 2x2"),
    (common_pb2.CodeGrid(h=0, w=2), "grid.h, grid.w"),
    (common_pb2.CodeGrid(h=1, w=2, codes=[1, 99]), "grid.codes: code 99 is outside"),
    (common_pb2.CodeGrid(h=1, w=2, codes=[-1, 0]), "grid.codes: code -1 is outside"),
])
def test_decode_codes_name_the_field(grid, field):
    from services.rpc.convert import codes_from_pb
    with pytest.raises(RequestError) as info:
        codes_from_pb(grid, codebook_size=64)
    assert str(info.value).startswith(field)
