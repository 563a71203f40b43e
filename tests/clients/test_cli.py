"""emu35-client end to end against the fake gateway: streamed text, progress, saved images,
the JSON summary, and the one-line error format."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from emu35_client.cli import main

from .conftest import CLIENTS
from .fake_gateway import REQUEST_ID, png_bytes


def _generate(gateway, tmp_path, *extra):
    return main(["generate", "--target", gateway.target, "--task", "t2i",
                 "--out", str(tmp_path / "out"), *map(str, extra)])


def test_generate_saves_images_and_prints_a_summary(gateway, tmp_path, capsys):
    photo = tmp_path / "ref.png"
    photo.write_bytes(b"ref")
    assert _generate(gateway, tmp_path, "--prompt", "images:2", "--image", photo,
                     "--aspect", "16:9", "--seed", 11, "--cfg", 4.5,
                     "--max-new-tokens", 300, "--timeout", 30) == 0
    out, err = capsys.readouterr()
    text, summary_line = out.rstrip("\n").rsplit("\n", 1)
    assert text == "Step one. Done."
    summary = json.loads(summary_line)
    assert summary["channels"] == {"global_cot": "thinking"}
    assert (summary["request_id"], summary["reason"], summary["seed"]) == (REQUEST_ID, "stop", 11)
    assert summary["usage"]["generated_tokens"] == 17 and summary["manifest"].startswith("file://")
    assert [img["path"] for img in summary["images"]] == [str(tmp_path / "out" / "00.png"),
                                                          str(tmp_path / "out" / "01.png")]
    for i in range(2):
        assert (tmp_path / "out" / f"{i:02d}.png").read_bytes() == png_bytes(i)
    assert "2/2 rows -> " in err and err.count("\n") == 2  # one finished bar line per image
    req = gateway.requests[-1]
    assert (req.size.preset, req.seed, req.guidance.scale, req.max_new_tokens,
            [i.data for i in req.images]) == ("16:9", 11, 4.5, 300, [b"ref"])


def test_generate_over_http_with_api_key_from_env(http_store, tmp_path, capsys, monkeypatch):
    http_store.api_key = "envkey"
    monkeypatch.setenv("EMU35_API_KEY", "envkey")
    assert _generate(http_store, tmp_path, "--prompt", "p", "--size", "8*8") == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["images"][0]["uri"].startswith("s3://")
    assert (tmp_path / "out" / "00.png").read_bytes() == png_bytes(0)
    assert http_store.requests[-1].size.grid.h == 8


@pytest.mark.parametrize("prompt, extra, line", [
    ("abort:RESOURCE_EXHAUSTED:queue full", [], "RESOURCE_EXHAUSTED: queue full"),
    ("corrupt", [], "DATA_LOSS: file://"),
    ("p", ["--size", "7x7"], "INVALID_ARGUMENT: size: '7x7' pixels must be multiples of 16"),
    ("p", ["--image", "/no/such.png"], "INVALID_ARGUMENT: images[0]: file not found"),
    ("silent", ["--timeout", "0.2"], "DEADLINE_EXCEEDED: "),
])
def test_errors_are_one_line_with_exit_2(gateway, tmp_path, capsys, prompt, extra, line):
    assert _generate(gateway, tmp_path, "--prompt", prompt, *extra) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith(f"emu35-client: error: {line}"), err
    assert err.endswith("\n") and "Traceback" not in err


def test_usage_errors_use_the_same_format(gateway, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _generate(gateway, tmp_path, "--prompt", "p", "--aspect", "1:1", "--size", "8*8")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("emu35-client: error: INVALID_ARGUMENT: argument")


def test_unauthenticated(gateway, tmp_path, capsys):
    gateway.api_key = "right"
    assert _generate(gateway, tmp_path, "--prompt", "p", "--api-key", "wrong") == 2
    assert capsys.readouterr().err == ("emu35-client: error: UNAUTHENTICATED: "
                                       "authorization: unknown API key\n")


def test_health_info_models(gateway, capsys):
    assert main(["health", "--target", gateway.target]) == 0
    assert json.loads(capsys.readouterr().out)["ready"] is True
    gateway.ready = False
    assert main(["health", "--target", gateway.target]) == 1
    assert json.loads(capsys.readouterr().out)["stages"]["generator"] is False
    assert main(["info", "--target", gateway.target]) == 0
    assert json.loads(capsys.readouterr().out)["context_length"] == 9216
    assert main(["models", "--target", gateway.target]) == 0
    assert json.loads(capsys.readouterr().out)[1]["name"] == "emu3.5-image"


def test_unreachable_target(capsys):
    assert main(["health", "--target", "127.0.0.1:1", "--timeout", "5"]) == 2
    assert capsys.readouterr().err.startswith("emu35-client: error: UNAVAILABLE: ")


def test_as_a_process(gateway, tmp_path):
    """The real entry point: streams, exits 0; an error is one stderr line and exit 2."""
    env = {**os.environ, "PYTHONPATH": str(CLIENTS)}
    cmd = [sys.executable, "-m", "emu35_client", "generate", "--target", gateway.target,
           "--task", "howto", "--out", str(tmp_path / "o")]
    ok = subprocess.run([*cmd, "--prompt", "p"], capture_output=True, text=True, env=env,
                        timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["reason"] == "stop"
    bad = subprocess.run([*cmd, "--prompt", "abort:INTERNAL:boom"], capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    assert (bad.returncode, bad.stderr) == (2, "emu35-client: error: INTERNAL: boom\n")
