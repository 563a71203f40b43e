"""The gateway's request lifecycle over fake stages (tests/rpc/fake_stages.py) and a real local
store: order of work, the manifest (docs/manifest.md), request_id reuse, cancellation, and
storage I/O kept off the event loop."""
from __future__ import annotations

import asyncio
import io
import json

import grpc
import pytest
from PIL import Image

from emu35_proto.story import interleave_story_pb2 as story_pb
from emu35_proto.v1 import api_pb2, common_pb2
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer
from services.rpc.errors import PublicError
from services.rpc.gateway import Gateway
from services.rpc.results import drain_closing
from tests.rpc.fake_stages import FakeStages, RecordingStore

DEADLINE_S = 30  # hang guard only


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_synthetic_tokenizer(path, num_visual_tokens=64)
    return TextTokenizer.from_dir(path)


@pytest.fixture
def log():
    return []


@pytest.fixture
def store(tmp_path, log):
    return RecordingStore(tmp_path / "results", log)


@pytest.fixture
def stages(tok, store, log):
    return FakeStages(tok, store, log)


@pytest.fixture
def gateway(tok, stages, store):
    return Gateway(tok, stages, store, context_length=8192)


def request(rid="req-1", task=common_pb2.T2I, images=(), **kw):
    pb = api_pb2.GenerateRequest(task=task, prompt="a cat", request_id=rid, seed=7, **kw)
    pb.size.grid.h, pb.size.grid.w = 2, 3
    for data in images:
        pb.images.add(data=data)
    return pb


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), "orange").save(buf, format="JPEG")
    return buf.getvalue()


async def collect(gateway, pb, on_event=None):
    events = []
    async for ev in gateway.generate(pb):
        events.append(ev)
        if on_event is not None:
            await on_event(ev)
    return events


def run(coro):
    async def main():
        return await asyncio.wait_for(coro, DEADLINE_S)
    return asyncio.run(main())


def request_files(store, rid, tenant="default"):
    root = store.root / tenant / rid
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---- lifecycle --------------------------------------------------------------------------------

def test_lifecycle_order_and_manifest(gateway, store, log):
    events = run(collect(gateway, request(task=common_pb2.X2I, images=[jpeg()])))
    kinds = [ev.WhichOneof("event") for ev in events]
    assert kinds[-1] == "finished" and kinds.count("image_ready") == 2
    layout = store.request_layout("req-1")
    steps = [e for e in log if e[0] in ("encode", "generate", "decode", "create", "write")
             or (e[0] == "stat" and e[1] == layout.claim)]
    assert steps == [
        ("stat", layout.claim),            # request_id unused? before any work
        ("encode", 1),
        ("create", layout.claim),          # claimed, create-only
        ("generate", "req-1"),
        ("decode", "req-1", 0), ("write", layout.image(0)),
        ("decode", "req-1", 1), ("write", layout.image(1)),
        ("write", layout.story),
        ("create", layout.manifest),       # last, create-only
    ]
    fin = events[-1].finished
    manifest = json.loads(store.get(layout.manifest))
    assert fin.manifest.uri == store.uri(layout.manifest) and fin.seed == 7
    assert {k: manifest[k] for k in ("manifest_version", "tenant", "request_id", "state", "task",
                                     "seed", "finish_reason", "error", "output_grid")} == {
        "manifest_version": 1, "tenant": "default", "request_id": "req-1", "state": "complete",
        "task": "x2i", "seed": 7, "finish_reason": "stop", "error": None, "output_grid": [2, 3]}
    ready = [ev.image_ready.image for ev in events if ev.HasField("image_ready")]
    assert [(m["key"], m["sha256"]) for m in manifest["images"]] == \
        [(layout.image(i), r.sha256) for i, r in enumerate(ready)]
    assert manifest["usage"]["queue_seconds"] == 0.25 and manifest["text"] == "A cat."
    story = story_pb.Story.FromString(store.get(layout.story))
    assert story.question == "a cat" and len(story.reference_images) == 1
    assert [m.image.width for m in story.clips[0].segments[0].images] == [48, 48]
    assert request_files(store, "req-1") == ["claim.json", "images/00.png", "images/01.png",
                                             "manifest.json", "story.pb"]


# ---- request_id reuse -------------------------------------------------------------------------

def test_reused_request_id_is_already_exists_before_any_work(gateway, store, log):
    run(collect(gateway, request()))
    layout = store.request_layout("req-1")
    before = {k: store.get(k) for k in (layout.manifest, layout.story, layout.image(0))}
    log.clear()
    with pytest.raises(PublicError, match="^request_id: 'req-1' is already used") as exc:
        run(collect(gateway, request(task=common_pb2.X2I, images=[jpeg()])))
    assert exc.value.status.code is grpc.StatusCode.ALREADY_EXISTS
    assert [e for e in log if e[0] in ("encode", "generate", "write", "create")] == []
    assert {k: store.get(k) for k in before} == before  # the finished result is untouched
    run(collect(gateway, request(rid="req-2")))  # another id is fine
    other = Gateway(gateway.tok, gateway.stages, store, context_length=8192, tenant="acme")
    run(collect(other, request()))  # unique per tenant: another tenant may use it


def test_concurrent_twins_one_wins(gateway, stages, store, log):
    """Both pass the early check (held at the encoder); the create-only claim picks one."""
    stages.gates["encode"] = asyncio.Event()

    async def main():
        pb = request(task=common_pb2.X2I, images=[jpeg()])
        twins = [asyncio.ensure_future(collect(gateway, pb)) for _ in range(2)]
        while sum(e[0] == "encode" for e in log) < 2:
            await asyncio.sleep(0.01)
        stages.gates["encode"].set()
        return await asyncio.gather(*twins, return_exceptions=True)

    outcomes = run(main())
    assert sorted(map(_outcome, outcomes)) == ["ALREADY_EXISTS", "list"]
    assert sum(e[0] == "generate" for e in log) == 1
    assert json.loads(store.get(store.request_layout("req-1").manifest))["state"] == "complete"


# ---- cancellation -----------------------------------------------------------------------------

def _cancel_after(gateway, pb, first_image_seen):
    async def main():
        seen = asyncio.Event()

        async def on_event(ev):
            if ev.HasField("image_ready"):
                seen.set()

        consumer = asyncio.ensure_future(collect(gateway, pb, on_event))
        await seen.wait()
        await first_image_seen()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await drain_closing()
    run(main())


def test_cancel_mid_stream_writes_a_cancelled_manifest(gateway, stages, store, log):
    stages.gates["image", 1] = asyncio.Event()  # the generator stalls before image 1

    async def nothing():
        pass

    _cancel_after(gateway, request(), nothing)
    layout = store.request_layout("req-1")
    manifest = json.loads(store.get(layout.manifest))
    assert (manifest["state"], manifest["finish_reason"], manifest["story"]) == \
        ("cancelled", None, None)
    assert [m["key"] for m in manifest["images"]] == [layout.image(0)]
    assert request_files(store, "req-1") == ["claim.json", "images/00.png", "manifest.json"]
    assert ("generate closed", "req-1") in log  # the generator's call was ended


def test_cancel_while_an_image_is_being_stored_lists_it(gateway, stages, store, log):
    """The decoder is storing image 1 when the caller cancels: the manifest waits for it and
    lists it, so no image is left without a manifest entry."""
    stages.gates["decode", 1] = asyncio.Event()

    async def decode_1_started():
        while ("decode", "req-1", 1) not in log:
            await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(stages.gates["decode", 1].set)

    _cancel_after(gateway, request(), decode_1_started)
    layout = store.request_layout("req-1")
    manifest = json.loads(store.get(layout.manifest))
    assert manifest["state"] == "cancelled"
    assert [m["key"] for m in manifest["images"]] == [layout.image(0), layout.image(1)]
    assert request_files(store, "req-1") == ["claim.json", "images/00.png", "images/01.png",
                                             "manifest.json"]
    assert log.index(("decoded", "req-1", 1)) < log.index(("create", layout.manifest))


def test_failed_stage_writes_a_failed_manifest(gateway, stages, store):
    async def broken_decode(req, metadata):
        raise RuntimeError("decoder exploded")

    stages.decode = broken_decode
    with pytest.raises(PublicError, match=r"^internal error \(request req-1, error id ") as exc:
        run(collect(gateway, request()))
    run(drain_closing())
    manifest = json.loads(store.get(store.request_layout("req-1").manifest))
    assert (manifest["state"], manifest["images"]) == ("failed", [])
    assert manifest["error"] == exc.value.status.message  # the caller's error id, no internals


def test_invalid_request_claims_nothing(gateway, store):
    with pytest.raises(PublicError, match="^max_new_tokens"):
        run(collect(gateway, request(max_new_tokens=10**6)))
    assert not (store.root / "default" / "req-1").exists()
    run(collect(gateway, request()))  # the id is still free


# ---- storage off the event loop ---------------------------------------------------------------

@pytest.mark.parametrize("op,key", [
    ("stat", "default/slow/claim.json"), ("create", "default/slow/claim.json"),
    ("read", "default/slow/images/00.png"), ("write", "default/slow/story.pb"),
    ("create", "default/slow/manifest.json"), ("write", "default/slow/images/00.png")])
def test_a_slow_store_call_does_not_stall_other_streams(gateway, store, log, op, key):
    """One stream's store call hangs; another stream runs to its end meanwhile. Were the call
    on the event loop, the other stream could not move until the hold timed out."""
    held = store.hold(op, key)

    async def main():
        async def release_when_done(ev):
            if ev.HasField("finished"):
                log.append(("fast finished",))
                held.set()

        slow = asyncio.ensure_future(collect(gateway, request("slow")))
        while (op, key) not in log:
            await asyncio.sleep(0.01)
        await collect(gateway, request("fast"), release_when_done)
        return await slow

    events = run(main())
    assert events[-1].HasField("finished")
    assert log.index(("fast finished",)) < log.index((op + " done", key))


# ---- the same on a real S3-compatible server ------------------------------------------------

@pytest.fixture(scope="module")
def s3_store(tmp_path_factory):
    from services.storage.s3 import S3ResultStore
    from tests.storage.s3_server import S3ServerUnavailable, running_s3_server
    try:
        with running_s3_server(tmp_path_factory.mktemp("s3"), buckets=("emu35-gw",)) as server:
            yield S3ResultStore("emu35-gw", prefix="gw", endpoint_url=server.endpoint_url,
                                access_key=server.access_key, secret_key=server.secret_key)
    except S3ServerUnavailable as e:
        pytest.skip(f"no S3-compatible test server: {e}")


def s3_keys(store, rid, tenant="default"):
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=store.object_key(f"{tenant}/{rid}/"))
    return sorted(o["Key"].split(f"/{rid}/", 1)[1] for p in pages for o in p.get("Contents", []))


@pytest.mark.slow
def test_s3_cancel_leaves_no_orphans_and_reuse_is_refused(tok, s3_store, log):
    stages = FakeStages(tok, s3_store, log)
    gateway = Gateway(tok, stages, s3_store, context_length=8192)
    stages.gates["decode", 1] = asyncio.Event()

    async def decode_1_started():
        while ("decode", "s3-cancel", 1) not in log:
            await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(stages.gates["decode", 1].set)

    _cancel_after(gateway, request("s3-cancel"), decode_1_started)
    layout = s3_store.request_layout("s3-cancel")
    manifest = s3_store.read_manifest("s3-cancel")
    assert manifest["state"] == "cancelled"
    assert [m["key"] for m in manifest["images"]] == [layout.image(0), layout.image(1)]
    assert s3_keys(s3_store, "s3-cancel") == ["claim.json", "images/00.png", "images/01.png",
                                              "manifest.json"]
    with pytest.raises(PublicError, match="^request_id: "):
        run(collect(gateway, request("s3-cancel")))
    assert s3_store.read_manifest("s3-cancel") == manifest


@pytest.mark.slow
def test_s3_concurrent_twins_one_wins(tok, s3_store, log):
    stages = FakeStages(tok, s3_store, log)
    gateway = Gateway(tok, stages, s3_store, context_length=8192)
    stages.gates["encode"] = asyncio.Event()

    async def main():
        pb = request("s3-twin", task=common_pb2.X2I, images=[jpeg()])
        twins = [asyncio.ensure_future(collect(gateway, pb)) for _ in range(4)]
        while sum(e[0] == "encode" for e in log) < 4:
            await asyncio.sleep(0.01)
        stages.gates["encode"].set()
        return await asyncio.gather(*twins, return_exceptions=True)

    outcomes = run(main())
    assert sorted(map(_outcome, outcomes)) == ["ALREADY_EXISTS"] * 3 + ["list"]
    assert s3_store.read_manifest("s3-twin")["state"] == "complete"


def test_failing_manifest_write_still_lists_the_story(gateway, store):
    """The Story is stored, then the manifest write fails: the failed manifest lists it."""
    layout = store.request_layout("req-1")
    real = store._write_new
    calls = []

    def flaky(key, data, meta):
        if key == layout.manifest and not calls:
            calls.append(key)
            raise OSError("disk full")  # not a StorageError: an unexpected failure
        return real(key, data, meta)

    store._write_new = flaky
    with pytest.raises(PublicError, match="^internal error"):
        run(collect(gateway, request()))
    run(drain_closing())
    manifest = json.loads(store.get(layout.manifest))
    assert manifest["state"] == "failed" and manifest["story"]["key"] == layout.story
    assert manifest["finish_reason"] == "stop" and manifest["usage"]["queue_seconds"] == 0.25
    assert request_files(store, "req-1") == ["claim.json", "images/00.png", "images/01.png",
                                             "manifest.json", "story.pb"]


def _outcome(o) -> str:
    """A gathered outcome: the public status of a failure, else the result's type."""
    return o.status.code.name if isinstance(o, PublicError) else type(o).__name__
