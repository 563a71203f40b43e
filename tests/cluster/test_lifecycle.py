"""`emu35 serve`'s life: what is checked before Ray starts (checkpoint files, device, free
ports), the one line a failed deployment ends with, a terminal holding only our own lines, and
a Ctrl-C that stops everything within STOP_S (a second one at once), every time."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.lifecycle import STOP_S, _last_exception_line, alive, descendants
from services.model.tiny import write_tiny_checkpoint

pytestmark = pytest.mark.xdist_group("ray")  # its slow tests start Ray: one cluster at a time

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients"))
from emu35_client import Client  # noqa: E402

FAIL_FAST_S = 60  # a hang guard for start-up failures: they must not wait for Ray


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    write_tiny_checkpoint(root / "tiny")
    return root / "tiny"


def _broken_copy(tiny: Path, tmp_path: Path, remove: str) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny, copy)
    (copy / remove).unlink()
    return copy


@pytest.mark.parametrize("remove, message", [
    ("llm/config.json", "model.path (--model): config.json not found in checkpoint directory"),
    ("llm/model.safetensors.index.json",
     "model.path (--model): no model.safetensors.index.json or model.safetensors in"),
    ("llm/model-00002-of-00004.safetensors", "lists shard file(s) that do not exist"),
    ("vision_tokenizer/config.yaml",
     "model.vision_tokenizer (--vision-tokenizer): config.yaml not found in"),
    ("vision_tokenizer/model.ckpt",
     "model.vision_tokenizer (--vision-tokenizer): model.ckpt not found in"),
    ("llm/emu3.tiktoken", "model.path (--model): emu3.tiktoken not found in"),
])
def test_missing_checkpoint_files_are_named_before_ray_starts(tiny, tmp_path, capsys, remove,
                                                               message):
    ckpt = _broken_copy(tiny, tmp_path, remove)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", str(ckpt / "llm"), "--vision-tokenizer",
              str(ckpt / "vision_tokenizer")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("emu35: error: ") and message in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize("device, message", [
    ("gpu", "model.device (--device): 'gpu' is not a device; use cpu, cuda or cuda:N"),
    ("cuda:99", "model.device (--device): cuda:99 requested but"),
    ("cpu:1", "model.device (--device): 'cpu:1' is not a device"),
])
def test_bad_devices_are_named_before_ray_starts(tiny, capsys, device, message):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--tiny", str(tiny.parent / "tiny"), "--device", device])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1, err


def test_cuda_without_cuda_is_named(tiny, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["serve", "--tiny", str(tiny), "--device", "cuda"])
    assert ("model.device (--device): cuda requested but CUDA is not available"
            in capsys.readouterr().err)


def _serve(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", *args],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listener(host: str = "127.0.0.1") -> socket.socket:
    """An occupant as gRPC makes one: SO_REUSEPORT, listening."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, 0))
    s.listen()
    return s


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_a_used_port_stops_serve_at_once_naming_it(tiny, tmp_path, flag):
    occupant = _listener()
    port = occupant.getsockname()[1]
    other = "--http-port" if flag == "--grpc-port" else "--grpc-port"
    with occupant:
        proc = _serve("--tiny", str(tiny), flag, str(port), other, str(_free_port()),
                      log=tmp_path / "serve.log")
        assert proc.wait(timeout=FAIL_FAST_S) == 2
        out = (tmp_path / "serve.log").read_text()
        assert out == f"emu35: error: {flag}: 127.0.0.1:{port} is in use\n", out
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the occupant still listens


def test_the_exception_line_of_a_replica_traceback():
    text = ("The deployment failed to start 3 times in a row.\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in f\nray.exceptions.RayTaskError(ValueError): boom\n'
            "services.model.ibq.checkpoint.IBQCheckpointError: model.ckpt: not readable\n")
    assert _last_exception_line(text) == "IBQCheckpointError: model.ckpt: not readable"
    assert _last_exception_line("no exception here") == ""


# ---- through Ray (slow) ----------------------------------------------------------------------

def _start(tiny: Path, tmp_path: Path, name: str, *extra: str):
    """`emu35 serve --tiny` in its own process group; returns (process, port, log)."""
    port, http, log = _free_port(), _free_port(), tmp_path / f"{name}.log"
    proc = _serve("--tiny", str(tiny), "--storage-root", str(tmp_path / "results"),
                  "--grpc-port", str(port), "--http-port", str(http), *extra, log=log)
    return proc, port, http, log


def _wait_serving(proc, port: int, log: Path, deadline_s: float = 240) -> None:
    end = time.monotonic() + deadline_s
    with Client(f"127.0.0.1:{port}", default_timeout=10) as client:
        while True:
            try:
                if "emu35 serving gRPC" in log.read_text() and client.health().ready:
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                pytest.fail("emu35 serve did not come up:\n" + log.read_text()[-3000:])
            time.sleep(1)


def _ctrl_c(proc, times: int = 1) -> float:
    """Ctrl-C as a terminal sends it (the whole process group); seconds until it exited."""
    start = time.monotonic()
    for i in range(times):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3 if i + 1 < times else 0)
    try:
        proc.wait(timeout=STOP_S + 5)  # a hang guard; the bound is STOP_S
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("emu35 serve did not stop on Ctrl-C")
    return time.monotonic() - start


@pytest.mark.slow
def test_a_failing_replica_ends_serve_with_its_cause_in_one_line(tiny, tmp_path):
    ckpt = tmp_path / "broken"
    shutil.copytree(tiny, ckpt)
    vq = ckpt / "vision_tokenizer" / "model.ckpt"
    vq.write_bytes(vq.read_bytes()[:1000])  # present (pre-flight passes), unreadable
    proc, _, _, log = _start(ckpt, tmp_path, "broken")
    assert proc.wait(timeout=240) == 1
    out = log.read_text()
    assert re.match(r"emu35: error: (encoder|decoder) stage failed to start: IBQCheckpointError: "
                    "model.ckpt: not a readable torch checkpoint", out), out
    assert out.count("\n") == 1 and "Traceback" not in out and "\x1b[" not in out, out


@pytest.mark.slow
def test_a_second_serve_on_the_same_ports_fails_while_the_first_serves(tiny, tmp_path):
    first, port, http, log = _start(tiny, tmp_path, "first")
    try:
        _wait_serving(first, port, log)
        kids = descendants(first.pid)
        second = _serve("--tiny", str(tiny), "--grpc-port", str(port), "--http-port", str(http),
                        log=tmp_path / "second.log")
        assert second.wait(timeout=FAIL_FAST_S) == 2
        assert (tmp_path / "second.log").read_text() == (
            f"emu35: error: --grpc-port: 127.0.0.1:{port} is in use\n")
        with Client(f"127.0.0.1:{port}", default_timeout=30) as client:
            assert client.health().ready  # the first keeps serving
        # Only our own lines on the terminal: no HTTP routes of the gRPC apps, no colours.
        lines = log.read_text().splitlines()
        assert [ln.split(":")[0] for ln in lines] == ["emu35 replicas", "emu35 serving gRPC on "
                                                      "127.0.0.1"], lines
        assert "\x1b[" not in log.read_text()
    finally:
        _ctrl_c(first)
    assert not alive(kids)


# How each start ends: Ctrl-C while serving, while the applications deploy, and twice. (Every
# other cluster fixture of the suite ends with a Ctrl-C too, and fails if it does not stop.)
WHEN = ["serving", "starting", "serving-twice"]


@pytest.mark.slow
def test_start_and_ctrl_c_each_way(tiny, tmp_path):
    """Each stop is bounded, and the Ray processes the command started are gone after it."""
    for i, when in enumerate(WHEN):
        proc, port, _, log = _start(tiny, tmp_path, f"run{i}")
        if when == "starting":
            end = time.monotonic() + 120
            while "Started a local Ray" not in _ray_log(proc) and time.monotonic() < end:
                time.sleep(0.5)
            time.sleep(2)  # the applications are deploying now
            assert "emu35 serving gRPC" not in log.read_text()
        else:
            _wait_serving(proc, port, log)
        kids = descendants(proc.pid)
        assert kids, f"run {i}: no Ray processes seen"
        took = _ctrl_c(proc, times=2 if when == "serving-twice" else 1)
        text = log.read_text()
        assert took < STOP_S + 5 and "Traceback" not in text, f"run {i} ({when}): {text[-2000:]}"
        assert proc.returncode == (130 if when == "serving-twice" else 0), f"run {i}: {text}"
        time.sleep(1)  # a killed process needs a moment to leave /proc
        assert not alive(kids), f"run {i} ({when}): left {alive(kids)}"


def _ray_log(proc) -> str:
    """The driver-side Ray log `emu35 serve` writes (cluster/lifecycle.route_ray_logs)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "emu35" / f"serve-{proc.pid}.log"
    return path.read_text() if path.is_file() else ""
