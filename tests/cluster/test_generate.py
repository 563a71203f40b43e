"""``emu35 generate`` end to end on a tiny checkpoint: files, manifest, Story, errors."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from cluster.cli import main
from emu35_proto.story import interleave_story_pb2 as story_pb
from services.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    llm, vq = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=2)
    return ["--model", str(llm), "--vision-tokenizer", str(vq)]


@pytest.fixture(scope="module")
def ref_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "ref.png"
    Image.new("RGB", (96, 64), "teal").save(path)
    return path


def test_batch_writes_pngs_story_and_manifest(tiny, ref_image, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [
        {"name": "cat", "task": "t2i", "prompt": "a cat", "size": "3*4", "seed": 1},
        {"name": "edit", "task": "x2i", "prompt": "make it red", "images": [str(ref_image)],
         "size": "2*3"},
        {"name": "tale", "task": "story", "prompt": "a short tale", "seed": 7},
    ]) + "\n")
    out = tmp_path / "out"
    assert main(["generate", *tiny, "--prompts", str(prompts), "--max-new-tokens", "120",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["manifest_version"] == 1
    by_name = {r["request_id"]: r for r in manifest["results"]}
    assert list(by_name) == ["cat", "edit", "tale"]
    for r in manifest["results"]:
        assert r["manifest_version"] == 1 and r["state"] == "complete"
        assert r["finish_reason"] in ("stop", "length")
        assert r["usage"]["generated_tokens"] <= 120 and "queue_seconds" in r["usage"]
        for i, img in enumerate(r["images"]):
            assert img["key"] == f"images/{r['request_id']}_{i:02d}.png"
            png = Image.open(out / img["key"])
            assert png.size == (img["width"], img["height"])
        assert r["story"]["key"] == f"proto/{r['request_id']}.pb"
        story = story_pb.Story.FromString((out / r["story"]["key"]).read_bytes())
        assert story.question == r["prompt"]
    assert by_name["cat"]["seed"] == 1 and by_name["tale"]["seed"] == 7
    cat = by_name["cat"]
    assert all((i["width"], i["height"]) == (64, 48) for i in cat["images"])
    edit = story_pb.Story.FromString((out / by_name["edit"]["story"]["key"]).read_bytes())
    assert len(edit.reference_images) == 1
    assert edit.reference_images[0].image.format == story_pb.PNG


def test_single_prompt_equals_its_batch_run(tiny, tmp_path):
    """The same prompt and seed give the same tokens alone and inside a batch."""
    solo, batch = tmp_path / "solo", tmp_path / "batch"
    common = ["--task", "howto", "--max-new-tokens", "60", "--seed", "11"]
    assert main(["generate", *tiny, *common, "--prompt", "How to fold paper", "--out", str(solo)]) == 0
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(["Tell me about tea", "How to fold paper", "What is a kite"]))
    assert main(["generate", *tiny, *common, "--prompts", str(prompts), "--out", str(batch)]) == 0
    a = json.loads((solo / "manifest.json").read_text())["results"][0]
    b = json.loads((batch / "manifest.json").read_text())["results"][1]
    assert a["text"] == b["text"] and a["usage"]["generated_tokens"] == b["usage"]["generated_tokens"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "paint", "--prompt", "x"], "task"),
    (["--task", "t2i", "--prompt", "x", "--aspect", "7:5"], "7:5"),
    (["--task", "x2i", "--prompt", "x", "--image", "/no/such.png"], "--image: file not found"),
    (["--task", "t2i", "--prompt", "x", "--size", "8192x8192"], "8192"),
    (["--task", "t2i", "--prompt", "x", "--size", "99*99"], "size"),  # the image itself exceeds the context
    (["--task", "t2i"], "--prompt or --prompts"),
])
def test_bad_arguments_give_one_line(tiny, capsys, argv, message, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["generate", *tiny, *argv, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("emu35: error:") and message in err
    assert "Traceback" not in err and err.count("\n") == 1
