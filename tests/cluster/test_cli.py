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


# ---- emu35 generate: every argument checked before the checkpoint loads -------------------------

@pytest.fixture
def no_loading(monkeypatch):
    """Loading the checkpoint fails the test: the argument error must come first."""
    import services.model.loader as loader

    def load(*a, **kw):
        raise AssertionError("the checkpoint was loaded before the arguments were checked")

    monkeypatch.setattr(loader, "load_checkpoint", load)


def _prompts(tmp_path, *entries) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device: 'gpu' is not a device; use cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "--device: cuda:99 requested but"),
    (["--task", "paint"], "--task: 'paint' is not a valid task"),
    (["--aspect", "7:5"], "--aspect: image size '7:5' not understood"),
    (["--size", "8192x8192"], "--size: image size '8192x8192' is 512*512 tokens"),
    (["--cfg", "nan"], "--cfg: must be a finite number >= 0, not 'nan'"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be a whole number in [1, "),
    (["--seed", "-1"], "--seed: must be a whole number in [0, "),
    (["--num-blocks", "0"], "--num-blocks: must be positive, not 0"),
    (["--tokenizer", "/"], "--tokenizer: emu3.tiktoken not found in /"),
])
def test_generate_checks_arguments_before_loading(tiny, capsys, tmp_path, no_loading, argv,
                                                  message):
    args = {"--task": "t2i", "--prompt": "a cat", "--out": str(tmp_path / "out")}
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(tiny / "llm"), "--vision-tokenizer",
              str(tiny / "vision_tokenizer"), *[x for kv in args.items() for x in kv], *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("emu35: error: ") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_generate_names_the_prompts_entry_and_out(tiny, capsys, tmp_path, no_loading):
    base = ["generate", "--model", str(tiny / "llm"), "--vision-tokenizer",
            str(tiny / "vision_tokenizer"), "--task", "t2i"]
    cases = [
        ([{"prompt": "a"}, {"prompt": "b", "task": "paint"}], "--prompts: prompt 001: task: "
                                                              "'paint' is not a valid task"),
        ([{"prompt": "a", "size": "9:7"}], "--prompts: prompt 000: size: image size '9:7'"),
        ([{"prompt": "a", "seed": "x"}], "--prompts: prompt 000: seed: must be a whole number"),
        ([{"prompt": "a", "images": "one.png"}], "--prompts: prompt 000: images: must be a list"),
    ]
    for entries, message in cases:
        with pytest.raises(SystemExit):
            main([*base, "--prompts", _prompts(tmp_path, *entries), "--out", str(tmp_path / "o")])
        assert message in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(SystemExit):
        main([*base, "--prompt", "a cat", "--out", str(taken)])
    assert f"--out: {taken} exists and is not a directory" in capsys.readouterr().err


def test_generate_without_cuda_names_the_device(tiny, capsys, tmp_path, no_loading):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tiny / "llm"), "--vision-tokenizer",
              str(tiny / "vision_tokenizer"), "--task", "t2i", "--prompt", "x", "--device", "cuda",
              "--out", str(tmp_path / "o")])
    assert "--device: cuda requested but CUDA is not available" in capsys.readouterr().err


def test_offline_progress_rate_moves_before_any_request_finishes():
    import io

    from cluster.offline import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = Progress(2, stream=stream)
    progress.draw(live_tokens=0)
    assert stream.getvalue().endswith(" 0 tok/s ")
    progress.draw(live_tokens=5000)  # nothing finished yet, 5000 tokens generated
    assert not stream.getvalue().endswith(" 0 tok/s "), stream.getvalue()
    assert "0/2 done" in stream.getvalue().rsplit("\r", 1)[1]


def test_version_is_the_packages(capsys):
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"emu35 {pyproject['project']['version']}\n"


@pytest.mark.parametrize("argv", [[], ["checkpoint", "tiny"], ["prompt"], ["generate"], ["serve"],
                                  ["vq", "encode"], ["vq", "decode"]])
def test_every_help_has_a_description_and_examples(capsys, argv):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = capsys.readouterr().out
    assert "examples:\n  emu35 " in text, text
    description = text.split("\n\n")[1]
    assert not description.startswith(("options:", "positional")), text
    if argv in (["generate"], ["serve"]):
        assert text.count("(default:") >= 5, text
