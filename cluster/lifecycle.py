"""``emu35 serve``'s life: start, serve until Ctrl-C/SIGTERM, stop in bounded time.

Why stopping needs a bound: Ctrl-C in a terminal (and ``killpg`` in the tests) signals the
whole process group, Ray's own processes (GCS, raylet, workers) included, so they may be gone
or going while ``serve.shutdown()`` asks the Serve controller to stop its replicas and
``ray.shutdown()`` waits on them; each call can then block on a peer that will never answer.
So each runs in a thread with a deadline (``STOP_S`` in all), and whatever Ray process this
command started that is still alive afterwards is killed. A second Ctrl-C kills them at once.
A Ctrl-C while the applications deploy stops the start-up instead of waiting for it.

The terminal shows only this command's own lines; Ray's and Serve's driver-side log lines
(HTTP routes of the gRPC applications, colour codes, the raylet's notices) go to a log file
whose path is printed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .serve import ServeConfig, replica_states, start

log = logging.getLogger(__name__)

STOP_S = 15.0               # Ctrl-C to exit, at most
SERVE_SHUTDOWN_S = 8.0      # of which the Serve controller may take this long
_KILL_GRACE_S = 1.0         # SIGTERM, then SIGKILL after this
# Ray processes this command started, seen while serving: a raylet that dies first leaves
# its workers to init, where a later look for this process's descendants would miss them.
_started: dict[int, int] = {}
_EXCEPTION_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)):\s*\S")


class _Run:
    """What the signal handler needs: the phase, how many signals, the processes to kill."""

    def __init__(self):
        self.phase = "starting"        # -> serving -> stopping
        self.signals = 0
        self.done = threading.Event()

    def on_signal(self, signum, frame) -> None:
        self.signals += 1
        if self.signals > 1:  # a second Ctrl-C: no more waiting
            print("emu35: forced stop", file=sys.stderr, flush=True)
            kill_processes({**_started, **descendants(os.getpid())})
            _exit_now(130)
        self.done.set()
        if self.phase == "starting":
            raise KeyboardInterrupt  # out of serve.run's wait for the deployments


def serve_forever(cfg: ServeConfig, stdout=None) -> None:
    """Start the cluster, print its address, serve until SIGINT/SIGTERM, stop within
    ``STOP_S``. A deployment that fails ends the command with one line naming its cause."""
    out = stdout or sys.stdout
    run = _Run()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, run.on_signal)
    code = 0
    try:
        logs = route_ray_logs()
        start(cfg)
        run.phase = "serving"
        _started.update(descendants(os.getpid()))
        print(f"emu35 replicas: {json.dumps(replica_states(), sort_keys=True)}", file=out,
              flush=True)
        print(f"emu35 serving gRPC on {_address(cfg.host, cfg.grpc_port)}; Ray and Serve logs: "
              f"{logs}; Ctrl-C to stop", file=out, flush=True)
        run.done.wait()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        print(f"emu35: error: {deploy_failure(e)}", file=sys.stderr, flush=True)
        code = 1
    run.phase = "stopping"
    if not stop():
        print(f"emu35: Ray did not stop within {STOP_S:.0f} s; its processes were killed",
              file=sys.stderr, flush=True)
        _exit_now(code)  # Ray's own exit hook would wait on them again
    if code:
        raise SystemExit(code)


def stop(timeout_s: float = STOP_S) -> bool:
    """Shut Serve and Ray down within ``timeout_s``; True when they stopped by themselves."""
    import ray
    from ray import serve

    if not ray.is_initialized():  # (serve.shutdown would start a Ray to connect to)
        return True
    end = time.monotonic() + timeout_s - _KILL_GRACE_S
    _started.update(descendants(os.getpid()))  # before Ray forgets them
    clean = _within(serve.shutdown, min(SERVE_SHUTDOWN_S, end - time.monotonic()))
    clean = _within(ray.shutdown, end - time.monotonic()) and clean
    left = alive(_started)
    if left:
        kill_processes(left)
    return clean and not left


def _within(fn, timeout_s: float) -> bool:
    """Run ``fn`` in a daemon thread; True when it returned within ``timeout_s``."""
    def call():
        try:
            fn()
        except Exception:  # noqa: BLE001 - a peer already gone; the kill below handles it
            log.debug("shutdown step failed", exc_info=True)

    thread = threading.Thread(target=call, name="emu35-bounded", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 0.1))
    return not thread.is_alive()


def deploy_failure(exc: Exception) -> str:
    """One line for a failed start: the application and its replica's exception (the last
    line of the traceback Serve records), else the exception itself."""
    import ray
    from ray import serve

    apps: dict = {}
    if ray.is_initialized():  # (serve.status would start a Ray to connect to)
        _within(lambda: apps.update(serve.status().applications), 10.0)  # Ray may be going
    failed = []  # (stage or application, message) of each part that failed to deploy
    for app, status in apps.items():
        if str(status.status).endswith("DEPLOY_FAILED"):
            failed += [(f"{name} stage", d.message) for name, d in status.deployments.items()
                       if d.message and not str(d.status).endswith("HEALTHY")]
            failed.append((app, status.message))
    failed = [(who, text) for who, text in failed if text]
    if not failed:
        return _last_exception_line(str(exc)) or type(exc).__name__
    who, text = next(((w, t) for w, t in failed if _last_exception_line(t)), failed[0])
    cause = _last_exception_line(text)
    return f"{who} failed to start: {cause or ' '.join(text.split())[:300]}"


def _last_exception_line(text: str) -> str:
    """``Name: message`` of the last exception in a traceback text (the class without its
    module path), at most 300 characters."""
    lines = [ln.strip() for ln in text.splitlines() if _EXCEPTION_LINE.match(ln)]
    if not lines:
        return ""
    name, _, message = lines[-1].partition(":")
    line = f"{name.rsplit('.', 1)[-1]}:{message}"
    return line if len(line) <= 300 else line[:297] + "..."


def route_ray_logs() -> Path:
    """Send Ray's and Serve's driver-side log lines and the raylet's notices to a file, so
    the terminal holds only this command's lines; returns the file."""
    import ray._private.worker as ray_worker
    import ray.serve  # noqa: F401 - configures Serve's logger, which is replaced below

    path = Path(tempfile.gettempdir()) / "emu35" / f"serve-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    for name in ("ray", "ray.serve"):  # ray.init(configure_logging=False) clears ray's own
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    raylet = logging.getLogger("ray.notices")

    def to_file(data, ignore_prefix=False):
        for line in data.get("lines", ()):
            raylet.warning("(%s) %s", data.get("pid", "ray"), _ANSI.sub("", line))

    ray_worker.print_to_stdstream = to_file  # the driver's raylet-notice thread prints here
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---- the processes this command started (Linux /proc; elsewhere nothing is force-killed) ----

def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below ``root`` (Ray's GCS, raylet, workers...)."""
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    children: dict[int, list[tuple[int, int]]] = {}
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[0], []).append((pid, st[2]))
    found, todo = {}, [root]
    while todo:
        for pid, started in children.get(todo.pop(), ()):
            found[pid] = started
            todo.append(pid)
    return found


def alive(procs: dict[int, int]) -> dict[int, int]:
    """Those of ``procs`` still running (same start time: not a reused pid; not a zombie)."""
    out = {}
    for pid, started in procs.items():
        st = _stat(pid)
        if st is not None and st[2] == started and st[1] != "Z":
            out[pid] = started
    return out


def kill_processes(procs: dict[int, int]) -> None:
    """SIGTERM, then SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive(procs):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + _KILL_GRACE_S
        while alive(procs) and time.monotonic() < deadline and sig == signal.SIGTERM:
            time.sleep(0.05)
