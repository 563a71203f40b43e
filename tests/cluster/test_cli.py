"""The emu35 command: tiny checkpoints, prompt inspection, vq encode/decode, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cluster.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    assert main(["checkpoint", "tiny", str(out), "--seed", "1"]) == 0
    return out


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *argv):
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_prompt_t2i(tiny, capsys):
    out = _run(capsys, "prompt", "--model", tiny / "llm", "--task", "t2i", "--prompt", "a cat",
               "--aspect", "16:9", "--text")
    assert out["output_grid"] == [47, 85]
    assert out["cond_text"] == ("<|extra_203|>You are a helpful assistant for t2i task. USER: a cat "
                                "ASSISTANT: <|extra_100|>")
    assert out["uncond_text"] == "<|extra_203|>You are a helpful assistant. USER:  ASSISTANT: <|extra_100|>"
    assert out["cond_len"] == len(out["cond"])


def test_prompt_x2i_takes_last_reference_grid(tiny, capsys, photo, tmp_path):
    tall = tmp_path / "tall.png"
    Image.new("RGB", (100, 300), "red").save(tall)
    out = _run(capsys, "prompt", "--model", tiny / "llm", "--task", "x2i", "--prompt", "edit",
               "--image", photo, "--image", tall)
    # smart_resize at 1,048,576 px: 200x120 -> 1328x800 (83x50), 100x300 -> 592x1776 (111x37)
    assert out["reference_grids"] == [[50, 83], [111, 37]]
    assert out["output_grid"] == [111, 37]
    assert out["cond_len"] > 50 * 83 + 111 * 37


def test_vq_roundtrip(tiny, capsys, photo, tmp_path):
    codes_file = tmp_path / "codes.json"
    assert main(["vq", "encode", str(photo), "--vision-tokenizer", str(tiny / "vision_tokenizer"),
                 "--area", str(64 * 64), "--out", str(codes_file)]) == 0
    codes = json.loads(codes_file.read_text())
    assert (codes["h"], codes["w"]) == (3, 5) and len(codes["codes"][0]) == 5
    png = tmp_path / "out.png"
    out = _run(capsys, "vq", "decode", codes_file, "--vision-tokenizer", tiny / "vision_tokenizer",
               "--out", png)
    assert (out["width"], out["height"]) == (80, 48)
    assert Image.open(png).size == (80, 48)


def test_vq_token_span_roundtrip(tiny, capsys, photo, tmp_path):
    """encode --tokenizer prints the BOI..EOI span the model would read or write; decode takes
    such a span back to the same image as the code grid."""
    vq, llm = tiny / "vision_tokenizer", tiny / "llm"
    enc = _run(capsys, "vq", "encode", photo, "--vision-tokenizer", vq, "--area", 64 * 64,
               "--tokenizer", llm)
    span_file, codes_file = tmp_path / "span.json", tmp_path / "codes.json"
    span_file.write_text(json.dumps({"span_ids": enc["span_ids"]}))
    codes_file.write_text(json.dumps({"codes": enc["codes"]}))
    assert len(enc["span_ids"]) == 3 * 5 + 2 + 1 + 1 + 4  # h*w, (h-1) EOLs, digits, BOI * IMG EOI
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _run(capsys, "vq", "decode", span_file, "--vision-tokenizer", vq, "--tokenizer", llm, "--out", a)
    _run(capsys, "vq", "decode", codes_file, "--vision-tokenizer", vq, "--out", b)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    span_file.write_text(json.dumps({"span_ids": enc["span_ids"][:-3]}))  # cut: no EOI
    with pytest.raises(SystemExit):
        main(["vq", "decode", str(span_file), "--vision-tokenizer", str(vq), "--tokenizer",
              str(llm), "--out", str(a)])
    assert "span_ids" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--task", "painting"], "task"),
    (["--task", "t2i", "--aspect", "5:4"], "5:4"),
    (["--task", "t2i", "--aspect", "1000x1000"], "1000"),
    (["--task", "x2i", "--image", "/nonexistent.png"], "--image: file not found"),
])
def test_prompt_errors_are_one_line(tiny, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["prompt", "--model", str(tiny / "llm"), "--prompt", "x", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("emu35: error:") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_corrupt_image_and_codes(tiny, capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit):
        main(["prompt", "--model", str(tiny / "llm"), "--task", "x2i", "--prompt", "x",
              "--image", str(bad)])
    assert "cannot read" in capsys.readouterr().err
    codes = tmp_path / "c.json"
    codes.write_text(json.dumps({"codes": [[1, 2], [3]]}))
    with pytest.raises(SystemExit):
        main(["vq", "decode", str(codes), "--vision-tokenizer", str(tiny / "vision_tokenizer"),
              "--out", str(tmp_path / "o.png")])
    assert "rectangular" in capsys.readouterr().err
    codes.write_text(json.dumps({"codes": [[1, 99999]]}))
    with pytest.raises(SystemExit):
        main(["vq", "decode", str(codes), "--vision-tokenizer", str(tiny / "vision_tokenizer"),
              "--out", str(tmp_path / "o.png")])
    assert "codes" in capsys.readouterr().err


def test_missing_model_dir(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["prompt", "--model", str(tmp_path / "none"), "--task", "t2i", "--prompt", "x"])
    assert "emu35: error:" in capsys.readouterr().err
