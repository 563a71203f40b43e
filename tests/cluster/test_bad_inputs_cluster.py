"""The bad-input catalogue (bad_inputs.py) through a real `emu35 serve --tiny` cluster, with raw
gRPC stubs on the public Emu35 service only: each case gets its status and a message naming
the field, no internals, and the cluster stays healthy. Slow: run under the Ray lock,
`flock /tmp/emu35-ray.lock python -m pytest -q tests/rpc/test_bad_inputs_cluster.py`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from emu35_proto.v1 import api_pb2

from tests.rpc.bad_inputs import CASES, Case

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time

ROOT = Path(__file__).resolve().parents[2]
APP = (("application", "emu35-gateway"),)  # Serve's proxy routes the public API by this key
SERVICE = "/emu35.v1.Emu35/"
MAX_DETAILS = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawApi:
    """Raw stubs: request bodies go out as given bytes (malformed ones included)."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 << 20)])
        ident = lambda b: b  # noqa: E731
        self.generate = self.channel.unary_stream(SERVICE + "Generate", request_serializer=ident,
                                                  response_deserializer=api_pb2.GenerateEvent.FromString)
        self.health = self.channel.unary_unary(SERVICE + "Health", request_serializer=ident,
                                               response_deserializer=api_pb2.HealthResponse.FromString)
        self.info = self.channel.unary_unary(SERVICE + "Info", request_serializer=ident,
                                             response_deserializer=api_pb2.InfoResponse.FromString)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "serve", "--tiny", str(root / "tiny"),
         "--storage-root", str(root / "results"), "--grpc-port", str(port),
         "--http-port", str(_free_port())], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=ROOT)
    raw = RawApi(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 240
    while True:
        try:
            if raw.health(b"", metadata=APP, timeout=10).ready:
                break
        except grpc.RpcError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("emu35 serve did not come up:\n" + (root / "serve.log").read_text()[-3000:])
        time.sleep(2)
    raw.context_length = raw.info(b"", metadata=APP, timeout=30).context_length
    raw.results = root / "results"
    try:
        yield raw
    finally:
        raw.channel.close()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_through_the_cluster(case: Case, api):
    if case.context_below is not None and api.context_length >= case.context_below:
        pytest.skip(f"not a fault with a context of {api.context_length} tokens")
    body = case.request if isinstance(case.request, bytes) else case.request.SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        for _ in api.generate(body, metadata=APP, timeout=60):
            pass
    code, details = info.value.code().name, info.value.details() or ""
    allowed = {case.code, "RESOURCE_EXHAUSTED"} if case.big else {case.code}
    assert code in allowed, f"{code}: {details[:300]}"
    if code == case.code:
        assert case.field in details, details[:300]
    assert len(details) <= MAX_DETAILS and "Traceback" not in details, details[:300]


def test_the_cluster_is_healthy_and_wrote_nothing_afterwards(api):
    assert api.health(b"", metadata=APP, timeout=30).ready
    written = [p for p in api.results.rglob("*") if p.is_file()] if api.results.exists() else []
    assert written == []
