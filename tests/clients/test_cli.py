"""emu35-client end to end against the fake gateway: streamed text, progress, saved images,
the JSON summary, and the one-line error format."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from emu35_client import InvalidArgument
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
    ("p", ["--size", "7x7"], "INVALID_ARGUMENT: --size/--aspect: '7x7' pixels must be multiples of 16"),
    ("p", ["--image", "/no/such.png"], "INVALID_ARGUMENT: --image #1: file not found"),
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


def test_no_arguments_prints_the_usage(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: emu35-client") and "generate" in err and "examples:" in err
    assert "INVALID_ARGUMENT" not in err


def test_version(capsys):
    from emu35_client import __version__
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"emu35-client {__version__}\n"


def test_help_has_descriptions_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for text in ("--cfg SCALE", "t2i 5, others 3", "port 9000 when left out", "examples:",
                 "--out DIR", "JSON summary"):
        assert text in out, text


def test_a_target_without_a_port_uses_9000():
    from emu35_client.channel import Connection
    assert Connection("example.com").target == "example.com:9000"
    assert Connection("[::1]").target == "[::1]:9000"
    assert Connection("h:1234").target == "h:1234"
    for bad in ("h:", "h:0", "h:x", " "):
        with pytest.raises(InvalidArgument, match="target"):
            Connection(bad)


def test_a_failed_call_leaves_no_empty_out_folder(gateway, tmp_path, capsys):
    assert _generate(gateway, tmp_path, "--prompt", "abort:INVALID_ARGUMENT:prompt: bad") == 2
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()  # a folder the user made stays
    assert _generate(gateway, tmp_path, "--prompt", "abort:INVALID_ARGUMENT:prompt: bad") == 2
    assert (tmp_path / "out").is_dir()


def test_downloaded_images_get_normal_modes(gateway, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert _generate(gateway, tmp_path, "--prompt", "p") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "00.png").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("details, line", [
    ("guidance.scale: must be a finite number", "--cfg: must be a finite number"),
    ("max_new_tokens: 9 does not fit", "--max-new-tokens: 9 does not fit"),
    ("images[1]: cannot be decoded", "--image #2: cannot be decoded"),
    ("size: a 64*64 output image takes", "--size/--aspect: a 64*64 output image takes"),
    ("prompt: must not be empty", "--prompt: must not be empty"),
    ("request: corrupt", "request: corrupt"),
])
def test_errors_name_the_flag(gateway, tmp_path, capsys, details, line):
    assert _generate(gateway, tmp_path, "--prompt", f"abort:INVALID_ARGUMENT:{details}") == 2
    assert capsys.readouterr().err == f"emu35-client: error: INVALID_ARGUMENT: {line}\n"
