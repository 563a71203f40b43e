"""Request building and event conversion (emu35_client.convert), without a server."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from emu35_client import (
    Finished,
    Guidance,
    Health,
    ImageProgress,
    ImageReady,
    ImageStarted,
    InvalidArgument,
    ModelInfo,
    ResultRef,
    Sampling,
    ServerInfo,
    TextDelta,
    Usage,
)
from emu35_client.convert import (
    event_from_pb,
    generate_request,
    health_from_pb,
    info_from_pb,
    models_from_pb,
)
from emu35_proto.v1 import api_pb2, common_pb2

REF_PB = common_pb2.ResultRef(uri="s3://b/k.png", presigned_url="https://x/k.png?sig=1",
                              sha256="ab" * 32, bytes=123, width=64, height=48,
                              content_type="image/png")
REF = ResultRef(uri="s3://b/k.png", presigned_url="https://x/k.png?sig=1", sha256="ab" * 32,
                bytes=123, width=64, height=48, content_type="image/png")


# ---- events -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, pb, expected", [
    ("text", api_pb2.TextDelta(text="héllo", channel="image_cot"),
     TextDelta("héllo", "image_cot")),
    ("text", api_pb2.TextDelta(text="x"), TextDelta("x", "text")),
    ("image_started", api_pb2.ImageStarted(index=2, grid=common_pb2.ImageGrid(h=47, w=85)),
     ImageStarted(index=2, h=47, w=85)),
    ("image_progress", api_pb2.ImageProgress(index=1, rows_done=5, rows_total=64),
     ImageProgress(index=1, rows_done=5, rows_total=64)),
    ("image_ready", api_pb2.ImageReady(index=0, image=REF_PB), ImageReady(index=0, ref=REF)),
])
def test_event_from_pb(kind, pb, expected):
    assert event_from_pb(api_pb2.GenerateEvent(request_id="r", **{kind: pb})) == expected


def test_finished_from_pb_with_refs():
    usage = common_pb2.Usage(prompt_tokens=1, uncond_prompt_tokens=2, cached_prompt_tokens=3,
                             generated_tokens=4, images=5, queue_seconds=0.5,
                             first_token_seconds=0.75, total_seconds=2.0)
    pb = api_pb2.Finished(reason=common_pb2.LENGTH, usage=usage, story=REF_PB, manifest=REF_PB,
                          incomplete_image=True, seed=-7)
    assert event_from_pb(api_pb2.GenerateEvent(finished=pb)) == Finished(
        reason="length", usage=Usage(1, 2, 3, 4, 5, 0.5, 0.75, 2.0), story=REF, manifest=REF,
        incomplete_image=True, seed=-7)


@pytest.mark.parametrize("reason, name", [
    (common_pb2.STOP, "stop"), (common_pb2.ABORTED, "aborted"), (common_pb2.ERROR, "error"),
    (0, "unspecified"), (42, "unknown(42)"),
])
def test_finished_reason_names_and_absent_refs(reason, name):
    ev = event_from_pb(api_pb2.GenerateEvent(finished=api_pb2.Finished(reason=reason)))
    assert (ev.reason, ev.story, ev.manifest, ev.usage) == (name, None, None, Usage())


def test_unknown_event_kind_is_skipped():
    assert event_from_pb(api_pb2.GenerateEvent(request_id="r")) is None


def test_events_are_frozen():
    with pytest.raises(AttributeError):
        TextDelta("a").text = "b"


def test_unary_responses_from_pb():
    assert health_from_pb(api_pb2.HealthResponse(ready=False, stages={"b": False, "a": True})) \
        == Health(ready=False, stages={"a": True, "b": False})
    info = api_pb2.InfoResponse(version="1", tasks=["t2i"], max_prompt_chars=10, max_images=3,
                                max_image_bytes=99, context_length=9216)
    assert info_from_pb(info) == ServerInfo("1", ("t2i",), 10, 3, 99, 9216)
    models = api_pb2.ListModelsResponse(models=[api_pb2.ModelInfo(name="m", checkpoint="c",
                                                                  vocab_size=5)])
    assert models_from_pb(models) == (ModelInfo("m", "c", 5),)


# ---- requests -----------------------------------------------------------------------------

def test_minimal_request_leaves_optional_fields_unset():
    req = generate_request("T2I", "a fox")
    assert (req.task, req.prompt, list(req.images)) == (common_pb2.T2I, "a fox", [])
    for name in ("size", "text_sampling", "image_sampling", "guidance", "seed", "max_new_tokens"):
        assert not req.HasField(name), name
    assert (req.request_id, req.model, req.stop_at_image_end) == ("", "", False)


def test_full_request(tmp_path):
    photo = tmp_path / "p.png"
    photo.write_bytes(b"file-bytes")
    req = generate_request(
        "x2i", "edit", images=[photo, b"raw", str(photo)], size="16:9",
        text_sampling={"top_k": 1}, image_sampling=Sampling(top_k=5120, top_p=0.9, temperature=1.0),
        cfg=Guidance(scale=3.0, mode="NO_TEXT_IMG_CFG", image_scale=1.5), seed=0,
        max_new_tokens=100, stop_at_image_end=True, request_id="job-1a_b", decode_mode="dida",
        model="emu3.5-image")
    assert [i.data for i in req.images] == [b"file-bytes", b"raw", b"file-bytes"]
    assert req.size.preset == "16:9"
    assert req.text_sampling.top_k == 1 and not req.text_sampling.HasField("top_p")
    assert (req.image_sampling.top_k, round(req.image_sampling.top_p, 5),
            req.image_sampling.temperature) == (5120, 0.9, 1.0)
    assert (req.guidance.mode, req.guidance.scale, req.guidance.image_scale) == (
        common_pb2.NO_TEXT_IMG_CFG, 3.0, 1.5)
    assert req.HasField("seed") and req.seed == 0
    assert (req.max_new_tokens, req.stop_at_image_end, req.request_id, req.decode_mode,
            req.model) == (100, True, "job-1a_b", api_pb2.DIDA, "emu3.5-image")


@pytest.mark.parametrize("size, which, value", [
    ("auto", "auto", True), ("AUTO", "auto", True), ("16:9", "preset", "16:9"),
    ("default", "preset", "default"), ("8*12", "grid", (8, 12)), ("128x192", "grid", (8, 12)),
    ((47, 85), "grid", (47, 85)), ([1, 256], "grid", (1, 256)),
])
def test_size_forms(size, which, value):
    pb = generate_request("t2i", "p", size=size).size
    assert pb.WhichOneof("size") == which
    got = getattr(pb, which)
    assert ((got.h, got.w) if which == "grid" else got) == value


def test_sampling_and_cfg_forms():
    duck = SimpleNamespace(top_k=3, top_p=None, temperature=0.5)
    assert generate_request("t2i", "p", text_sampling=duck).text_sampling == \
        common_pb2.SamplingParams(top_k=3, temperature=0.5)
    assert generate_request("t2i", "p", cfg=5).guidance == common_pb2.Guidance(scale=5.0)
    assert generate_request("t2i", "p", cfg={"mode": "none"}).guidance == \
        common_pb2.Guidance(mode=common_pb2.NONE)


@pytest.mark.parametrize("kwargs, field", [
    ({"task": "draw"}, "task"),
    ({"task": "task_unspecified"}, "task"),
    ({"prompt": None}, "prompt"),
    ({"images": "a.png"}, "images"),
    ({"images": [b""]}, r"images\[0\]"),
    ({"images": [b"x", "/no/such/file.png"]}, r"images\[1\]: file not found"),
    ({"images": [3]}, r"images\[0\]"),
    ({"size": "16x9"}, "size"), ({"size": "0*5"}, "size"), ({"size": "300*2"}, "size"),
    ({"size": "huge"}, "size"), ({"size": (1, 2, 3)}, "size"), ({"size": (8.0, 2)}, "size"),
    ({"text_sampling": {"topk": 1}}, "text_sampling"),
    ({"image_sampling": {"top_p": "high"}}, r"image_sampling\.top_p"),
    ({"image_sampling": 5}, "image_sampling"),
    ({"cfg": {"mode": "loud"}}, r"cfg\.mode"), ({"cfg": True}, "cfg"),
    ({"seed": 2**63}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"request_id": "has space"}, "request_id"), ({"request_id": "x" * 65}, "request_id"),
    ({"decode_mode": "fast"}, "decode_mode"), ({"model": 3}, "model"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"task": "t2i", "prompt": "p", **kwargs}
    with pytest.raises(InvalidArgument, match=f"^INVALID_ARGUMENT: {field}") as info:
        generate_request(args.pop("task"), args.pop("prompt"), **args)
    assert isinstance(info.value, ValueError)
    assert re.match(field, info.value.details)
