"""The sync Client against a fake gateway on 127.0.0.1: events, request and metadata on the
wire, status -> exception mapping, deadlines, cancellation."""
from __future__ import annotations

import gc

import grpc
import pytest
from emu35_client import (
    Cancelled,
    Client,
    DeadlineExceeded,
    Emu35Error,
    EngineLoad,
    Finished,
    ImageProgress,
    ImageReady,
    ImageStarted,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TextDelta,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

from .fake_gateway import REQUEST_ID, SERVER_SEED

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CODES = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
    (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    (grpc.StatusCode.NOT_FOUND, NotFound),
    (grpc.StatusCode.UNAVAILABLE, Unavailable),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    (grpc.StatusCode.CANCELLED, Cancelled),
    (grpc.StatusCode.INTERNAL, Internal),
    (grpc.StatusCode.FAILED_PRECONDITION, Emu35Error),
    (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
    (grpc.StatusCode.DATA_LOSS, Emu35Error),
]


@pytest.fixture
def client(gateway):
    with Client(gateway.target) as c:
        yield c


def test_generate_streams_typed_events_in_order(client):
    stream = client.generate("t2i", "a fox", seed=7)
    events = list(stream)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TextDelta", "TextDelta", "ImageStarted", "ImageProgress", "ImageProgress",
                     "ImageReady", "TextDelta", "Finished"]  # the unknown event kind is skipped
    assert events[0] == TextDelta("Step one. ", "text")
    assert events[1] == TextDelta("thinking", "global_cot")
    assert events[2] == ImageStarted(index=0, h=2, w=3)
    assert events[4] == ImageProgress(index=0, rows_done=2, rows_total=2)
    ready, finished = events[5], events[7]
    assert isinstance(ready, ImageReady) and ready.ref.uri.startswith("file://")
    assert (ready.ref.width, ready.ref.height, ready.ref.content_type) == (48, 32, "image/png")
    assert isinstance(finished, Finished)
    assert (finished.reason, finished.seed, finished.incomplete_image) == ("stop", 7, False)
    assert finished.usage.generated_tokens == 17 and finished.story and finished.manifest
    assert stream.request_id == REQUEST_ID


def test_request_reaches_the_server(client, gateway, tmp_path):
    photo = tmp_path / "ref.png"
    photo.write_bytes(b"png-bytes")
    finished = list(client.generate("x2i", "edit", images=[photo, b"jpeg-bytes"], size=(32, 48),
                                    image_sampling={"top_k": 100}, cfg=2.5, max_new_tokens=50,
                                    stop_at_image_end=True, request_id="mine"))[-1]
    req = gateway.requests[-1]
    assert [i.data for i in req.images] == [b"png-bytes", b"jpeg-bytes"]
    assert (req.size.grid.h, req.size.grid.w, req.image_sampling.top_k, req.guidance.scale) == (
        32, 48, 100, 2.5)
    assert (req.max_new_tokens, req.stop_at_image_end, req.request_id) == (50, True, "mine")
    assert not req.HasField("seed") and finished.seed == SERVER_SEED


def test_api_key_and_traceparent_metadata(gateway):
    gateway.api_key = "s3cret"
    with Client(gateway.target, api_key="s3cret") as client:
        list(client.generate("t2i", "p", traceparent=TRACEPARENT))
        assert client.health(traceparent=TRACEPARENT).ready
    for md in gateway.metadata:
        assert md["authorization"] == "Bearer s3cret"
        assert md["traceparent"] == TRACEPARENT


def test_no_traceparent_unless_given(client, gateway):
    client.info()
    assert "traceparent" not in gateway.metadata[-1]
    assert "authorization" not in gateway.metadata[-1]


def test_missing_or_wrong_api_key_is_unauthenticated(gateway):
    gateway.api_key = "s3cret"
    for key in (None, "wrong"):
        with Client(gateway.target, api_key=key) as client:
            with pytest.raises(Unauthenticated, match="API key"):
                list(client.generate("t2i", "p"))
            with pytest.raises(Unauthenticated):
                client.list_models()


def test_bad_traceparent_or_key_fails_before_any_rpc(client, gateway):
    with pytest.raises(InvalidArgument, match="traceparent"):
        client.generate("t2i", "p", traceparent="not-a-trace")
    with pytest.raises(InvalidArgument, match="size"):
        client.generate("t2i", "p", size="big")
    assert gateway.requests == [] and gateway.metadata == []
    with pytest.raises(InvalidArgument, match="api_key"):
        Client(gateway.target, api_key="two words")
    with pytest.raises(InvalidArgument, match="default_timeout"):
        Client(gateway.target, default_timeout=0)


@pytest.mark.parametrize("code, cls", CODES, ids=[c.name for c, _ in CODES])
def test_stream_status_maps_to_exception(client, code, cls):
    with pytest.raises(cls) as info:
        list(client.generate("t2i", f"abort:{code.name}:field x is wrong"))
    err = info.value
    assert type(err) is cls and isinstance(err, Emu35Error)
    assert (err.code, err.details, str(err)) == (code, "field x is wrong",
                                                 f"{code.name}: field x is wrong")


@pytest.mark.parametrize("code, cls", CODES, ids=[c.name for c, _ in CODES])
def test_unary_status_maps_to_exception(client, gateway, code, cls):
    gateway.unary_error = (code, "nope")
    for call in (client.health, client.info, client.list_models):
        with pytest.raises(cls, match="nope"):
            call()


def test_unreachable_server_is_unavailable():
    with Client("127.0.0.1:1") as client, pytest.raises(Unavailable):
        client.health(timeout=5)


def test_deadline_exceeded(gateway):
    with Client(gateway.target) as client, pytest.raises(DeadlineExceeded):
        list(client.generate("t2i", "silent", timeout=0.2))
    gateway.unary_delay = 5
    with Client(gateway.target, default_timeout=0.2) as client:
        with pytest.raises(DeadlineExceeded):
            client.health()
        with pytest.raises(DeadlineExceeded):  # a call's own timeout wins over the default
            client.info(timeout=0.1)


def test_with_block_cancels_the_rpc(client, gateway):
    with client.generate("t2i", "endless") as stream:
        for i, event in enumerate(stream):
            if i == 3:
                break
    assert gateway.cancelled.wait(5)
    assert list(stream) == []  # a closed stream ends quietly


def test_break_out_of_a_dropped_stream_cancels_the_rpc(client, gateway):
    for event in client.generate("t2i", "endless"):
        if isinstance(event, ImageProgress):
            break
    gc.collect()  # CPython drops the stream at once; other interpreters may need a collection
    assert gateway.cancelled.wait(5)


def test_close_cancels_the_rpc(client, gateway):
    stream = client.generate("t2i", "endless")
    assert isinstance(next(stream), ImageStarted)
    stream.close()
    stream.close()  # idempotent
    assert gateway.cancelled.wait(5)
    with pytest.raises(StopIteration):
        next(stream)


def test_health_info_models(client):
    health = client.health()
    assert health.ready and dict(health.stages) == {"decoder": True, "encoder": True,
                                                    "generator": True}
    assert health.load == EngineLoad(replicas=2, waiting=1, running=3, kv_blocks_used=40,
                                     kv_blocks_total=8192, max_waiting=512)
    info = client.info()
    assert (info.version, info.tasks, info.max_images) == ("0.1.0-fake", ("t2i", "x2i", "howto"), 3)
    assert info.load is None  # a server that sends no load
    assert [m.name for m in client.list_models()] == ["emu3.5", "emu3.5-image"]
