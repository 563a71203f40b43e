"""Faults, hostile input and cancellation through the real cluster (`emu35 serve --tiny`,
issue 11): the stages are not reachable on the public port, malformed and oversize requests
are refused with a clear status, every cancellation frees the generator's KV, Health reports
each stage's real state, and a replica death reaches the client as UNAVAILABLE."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients"))
from emu35_client import Emu35Error, Unavailable  # noqa: E402
from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2  # noqa: E402

from .test_serve_e2e import running_cluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time

LONG = dict(task="t2i", prompt="a long picture", size=(48, 48), max_new_tokens=2600)
LEAK_RE = re.compile(r"Traceback|File \"|pid=|\bpid\b|actor_id|ActorID|[0-9a-f]{32}|/work/|\.py\b",
                     re.IGNORECASE)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    with running_cluster(root, "--tiny", str(root / "tiny"), "--storage-root",
                         str(root / "results")) as c:
        yield c


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def _raw(cluster, method: str, message: bytes, application: str | None, stream: bool, **opts):
    """Call ``method`` with raw bytes on the public port; the final status code and details."""
    md = (("application", application),) if application else ()
    with grpc.insecure_channel(f"127.0.0.1:{cluster['port']}", options=list(opts.items())) as ch:
        kind = ch.unary_stream if stream else ch.unary_unary
        call = kind(method, request_serializer=None, response_deserializer=None)
        try:
            out = call(message, metadata=md, timeout=60)
            if stream:
                list(out)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""


def _stage_calls(cluster):
    """Requests that did harm through the stages on the public port before (issue 11 item 1)."""
    done = next((cluster["root"] / "results").rglob("manifest.json"), None)
    rid, tenant = (done.parent.name, done.parent.parent.name) if done else ("someone", "default")
    grid = common_pb2.CodeGrid(h=2, w=2, codes=[1, 2, 3, 4])
    return [
        ("/emu35.v1.ImageDecoder/Decode", "emu35-decoder", False, stages_pb2.DecodeRequest(
            request_id=rid, tenant=tenant, index=0, grid=grid)),
        ("/emu35.v1.ImageDecoder/Decode", "emu35-decoder", False, stages_pb2.DecodeRequest(
            request_id="x", tenant="other-tenant", index=0, grid=grid)),
        ("/emu35.v1.Generator/Generate", "emu35-generator", True, stages_pb2.GeneratorRequest(
            request_id="raw", task=common_pb2.T2I, cond_ids=[1, 2, 3], max_new_tokens=8)),
        ("/emu35.v1.VisionEncoder/Encode", "emu35-encoder", False,
         stages_pb2.EncodeRequest(images=[b"x" * 100] * 20, area=144_000_000)),
    ]


def test_the_normal_path_works_through_the_client(cluster):
    events = list(cluster["client"].generate(task="t2i", prompt="a cat", size=(2, 2), seed=3,
                                             max_new_tokens=30))
    assert type(events[-1]).__name__ == "Finished"


def test_a_reference_image_over_4_mib_crosses_the_stage_transport(cluster):
    """Serve's transport between replicas defaults to gRPC's 4 MiB; a legal image is larger."""
    import io

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (1300, 1300, 3), np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    assert buf.tell() > 4 << 20
    events = list(cluster["client"].generate(task="x2i", prompt="edit", images=[buf.getvalue()],
                                             size=(2, 2), seed=1, max_new_tokens=30))
    assert type(events[-1]).__name__ == "Finished"


@pytest.mark.parametrize("application", [None, "emu35-gateway", "stage"])
def test_stage_services_are_not_on_the_public_port(cluster, application):
    """Only emu35.v1.Emu35 is served: every stage method is UNIMPLEMENTED, whatever the
    application metadata, and nothing is written to storage."""
    before = _files(cluster["root"] / "results")
    for method, app, stream, message in _stage_calls(cluster):
        code, details = _raw(cluster, method, message.SerializeToString(),
                             app if application == "stage" else application, stream)
        assert code == grpc.StatusCode.UNIMPLEMENTED, (method, code, details)
    assert _files(cluster["root"] / "results") == before


def test_malformed_protobuf_is_invalid_argument(cluster):
    code, details = _raw(cluster, "/emu35.v1.Emu35/Generate", b"\x0a\xff\xff\xff\xff\x0f",
                         None, True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "GenerateRequest" in details and not LEAK_RE.search(details), details


def test_an_oversize_request_is_refused_before_it_is_read(cluster):
    """Above the largest legal request the public port answers RESOURCE_EXHAUSTED naming the
    limit; the proxy does not buffer the body (its memory stays put)."""
    from cluster.netbind import max_request_bytes
    from services.rpc.validation import Limits
    limit = max_request_bytes(Limits())
    proxy = _pids("ProxyActor")
    rss = sum(_rss(p) for p in proxy)
    body = api_pb2.GenerateRequest(task=common_pb2.T2I, prompt="x", images=[
        api_pb2.InputImage(data=b"\0" * (limit // 2 + 1)) for _ in range(2)])
    start = time.monotonic()
    code, details = _raw(cluster, "/emu35.v1.Emu35/Generate", body.SerializeToString(), None,
                         True, **{"grpc.max_send_message_length": -1})
    took = time.monotonic() - start
    grown = sum(_rss(p) for p in proxy) - rss
    print(f"\noversize request ({body.ByteSize()} bytes, limit {limit}): {code.name} in "
          f"{took:.2f} s, proxy RSS +{grown >> 20} MiB")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(limit) in details, details
    assert grown < body.ByteSize() // 2


def test_every_cancellation_frees_the_generator(cluster):
    """50 streams in a row, each cancelled 0.2-0.35 s after it started: each time the
    generator ends up running nothing and holding no KV (bounded wait)."""
    client, freed, waits = cluster["client"], 0, []
    for i in range(50):
        stream = client.generate(seed=i, **LONG)
        timer = threading.Timer(0.2 + 0.15 * (i % 7) / 6, stream.close)
        timer.start()
        try:
            for _ in stream:
                pass
        except Emu35Error:
            pass
        timer.join()
        wait = _wait_idle(client, 10.0)
        assert wait is not None, f"cancellation {i} left the generator busy: {client.health().load}"
        freed, waits = freed + 1, waits + [wait]
    print(f"\ncancellations freed: {freed} of 50, slowest {max(waits):.2f} s")


def test_health_shows_a_killed_stage_until_it_is_back(cluster):
    client = cluster["client"]
    for stage in ("encoder", "decoder"):
        _kill(stage)
        seen = _until(lambda: not client.health().stages.get(stage, True), 20)
        assert seen, f"Health kept {stage} ready after its replica was killed"
        assert _until(lambda: client.health().ready, 120), f"{stage} did not come back"


def test_a_generator_death_mid_stream_is_unavailable(cluster):
    client = cluster["client"]
    assert _until(lambda: client.health().ready, 120)
    stream = client.generate(seed=1, **LONG)
    threading.Timer(1.0, _kill, ("generator",)).start()
    with pytest.raises(Emu35Error) as exc:
        for _ in stream:
            pass
    print(f"\ngenerator killed mid-stream: {exc.value.code.name}: {exc.value.details}")
    assert isinstance(exc.value, Unavailable), exc.value
    assert not LEAK_RE.search(exc.value.details), exc.value.details
    assert _until(lambda: client.health().ready, 120)


@pytest.mark.parametrize("stage", ["encoder", "decoder"])
def test_an_encoder_or_decoder_death_is_unavailable_or_retried(cluster, stage):
    """The replica is frozen (SIGSTOP) when the stage call comes, then killed. A call the
    replica had not accepted yet is retried by Serve on its replacement (the request
    finishes); one it had accepted fails as UNAVAILABLE. Never another status, never Ray's
    internals."""
    import io

    from PIL import Image
    client = cluster["client"]
    assert _until(lambda: client.health().ready, 120)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(buf, format="PNG")
    kw = dict(task="x2i", prompt="edit", images=[buf.getvalue()]) if stage == "encoder" else \
        dict(task="t2i", prompt="a cat")
    _signal(stage, signal.SIGSTOP)
    threading.Timer(3.0, _signal, (stage, signal.SIGKILL)).start()
    try:
        events = list(client.generate(size=(2, 2), seed=1, max_new_tokens=30, timeout=90, **kw))
        outcome = type(events[-1]).__name__
        assert outcome == "Finished"
    except Emu35Error as e:
        outcome = f"{e.code.name}: {e.details}"
        assert isinstance(e, Unavailable) and not LEAK_RE.search(e.details), outcome
    print(f"\n{stage} killed during its call: {outcome}")
    assert _until(lambda: client.health().ready, 120)


def test_a_gateway_death_mid_stream_is_unavailable(cluster):
    client = cluster["client"]
    assert _until(lambda: client.health().ready, 120)
    stream = client.generate(seed=2, **LONG)
    threading.Timer(1.0, _kill, ("gateway",)).start()
    with pytest.raises(Emu35Error) as exc:
        for _ in stream:
            pass
    print(f"\ngateway killed mid-stream: {exc.value.code.name}: {exc.value.details}")
    assert isinstance(exc.value, Unavailable), exc.value
    assert not LEAK_RE.search(exc.value.details), exc.value.details
    assert _until(lambda: client.health().ready, 120)
    assert _wait_idle(client, 60) is not None  # the orphaned generation was cancelled


# ---------------------------------------------------------------- helpers
def _wait_idle(client, bound_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        load = client.health(timeout=5).load
        if load is not None and (load.running, load.waiting, load.kv_blocks_used) == (0, 0, 0):
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def _until(check, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Emu35Error:
            pass
        time.sleep(0.2)
    return False


def _pids(name: str) -> list[int]:
    """Processes whose command line names ``name`` (Ray titles replicas by deployment)."""
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if name.encode() in cmd.read_bytes():
                found.append(int(cmd.parent.name))
        except OSError:
            continue
    return found


def _kill(stage: str) -> None:
    _signal(stage, signal.SIGKILL)


def _signal(stage: str, sig) -> None:
    deadline = time.monotonic() + 120  # a replica killed by an earlier test may be restarting
    while not (pids := _pids(f"ServeReplica:emu35-gateway:{stage}")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pids, f"no {stage} replica process"
    for pid in pids:
        os.kill(pid, sig)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0
