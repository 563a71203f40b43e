"""Fault and load probes against a running ``emu35 serve`` (issue 11): cancellations that
must free the generator's KV, a burst that must be refused fast while Health keeps answering.

    python -m benchmarks.serve_faults --target 127.0.0.1:9000 cancel --n 50
    python -m benchmarks.serve_faults --target 127.0.0.1:9000 cancel --n 10 --concurrent
    python -m benchmarks.serve_faults --target 127.0.0.1:9000 burst --n 300
    python -m benchmarks.serve_faults --target 127.0.0.1:9000 kill   # SIGKILL each stage

Prints one JSON line of figures; timings are measurements, not pass/fail checks.
"""
from __future__ import annotations

import argparse
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from emu35_client import Client, Emu35Error

LONG = dict(task="t2i", prompt="a long picture", size=(48, 48), max_new_tokens=2600)
SHORT = dict(task="t2i", prompt="a small picture", size=(4, 4), max_new_tokens=60)


def wait_idle(client: Client, bound_s: float) -> float | None:
    """Seconds until the generator holds no KV and runs nothing; None past ``bound_s``."""
    start = time.monotonic()
    while time.monotonic() - start < bound_s:
        load = client.health(timeout=5).load
        if load is not None and load.running == 0 and load.kv_blocks_used == 0 and load.waiting == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def cancel_one(client: Client, seed: int, after_s: float) -> None:
    stream = client.generate(seed=seed, **LONG)
    timer = threading.Timer(after_s, stream.close)
    timer.start()
    try:
        for _ in stream:
            pass
    except Emu35Error:
        pass  # Cancelled
    finally:
        timer.cancel()


def cancel_probe(client: Client, n: int, concurrent: bool, bound_s: float) -> dict:
    """Cancel ``n`` streams 0.2-0.35 s after their start; count those whose KV was freed."""
    rng = random.Random(0)
    delays = [rng.uniform(0.2, 0.35) for _ in range(n)]
    freed, waits = 0, []
    if concurrent:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: cancel_one(client, i, delays[i]), range(n)))
        wait = wait_idle(client, bound_s)
        return {"probe": "cancel", "concurrent": n, "all_freed_within_s": wait}
    for i in range(n):
        cancel_one(client, i, delays[i])
        wait = wait_idle(client, bound_s)
        if wait is None:
            wait_idle(client, 120)  # let the stray one finish before the next
        else:
            freed += 1
            waits.append(round(wait, 2))
    return {"probe": "cancel", "n": n, "freed": freed, "bound_s": bound_s,
            "max_wait_s": max(waits, default=None)}


def burst_probe(target: str, n: int) -> dict:
    """``n`` concurrent Generate calls (one asyncio client); the first RESOURCE_EXHAUSTED's
    time and the Health latency meanwhile, polled from another process (so the burst's own
    client does not slow the measurement)."""
    import asyncio
    import multiprocessing

    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    watcher = multiprocessing.Process(target=_health_watch, args=(target, stop, results))
    watcher.start()
    time.sleep(1.0)  # the watcher's first samples are the idle baseline
    out = asyncio.run(_burst(target, n))
    stop.set()
    health_ms = sorted(results.get(timeout=30))
    watcher.join()
    busy = health_ms  # every sample, idle ones included
    return {"probe": "burst", "n": n, **out,
            "health_ms_p50": round(busy[len(busy) // 2], 1) if busy else None,
            "health_ms_max": round(busy[-1], 1) if busy else None, "health_samples": len(busy)}


async def _burst(target: str, n: int) -> dict:
    import asyncio

    from emu35_client import AsyncClient
    codes: dict[str, int] = {}
    first: list[float] = []
    async with AsyncClient(target, default_timeout=90) as client:
        start = time.monotonic()

        async def one(i: int) -> None:
            try:
                async for _ in client.generate(seed=i, **SHORT):
                    pass
                code = "OK"
            except Emu35Error as e:
                code = e.code.name
                if code == "RESOURCE_EXHAUSTED" and not first:
                    first.append(time.monotonic() - start)
            codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(one(i) for i in range(n)))
        took = time.monotonic() - start
    return {"codes": codes, "burst_s": round(took, 1),
            "first_resource_exhausted_s": round(first[0], 3) if first else None}


def _health_watch(target: str, stop, results) -> None:
    samples = []
    with Client(target) as client:
        while not stop.is_set():
            t = time.monotonic()
            try:
                client.health(timeout=10)
                samples.append((time.monotonic() - t) * 1000)
            except Emu35Error:
                samples.append(float("inf"))
            time.sleep(0.1)
    results.put(samples)


def _replica_pids(stage: str) -> list[int]:
    from pathlib import Path
    found = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes()  # ray::ServeReplica:<app>:<deployment>
            if b"ServeReplica:" in text and f":{stage}".encode() in text.split(b"\0")[0]:
                found.append(int(cmd.parent.name))
        except OSError:
            continue
    return found


def _big_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1536, 1536, 3), np.uint8)).save(
        buf, format="PNG")
    return buf.getvalue()


def kill_probe(client: Client) -> dict:
    """SIGKILL each stage's replica while a request is inside it; what the client sees. The
    replica is stopped (SIGSTOP) first so the request surely reaches it, then killed."""
    seen = {}
    cases = {"encoder": dict(task="x2i", prompt="edit", images=[_big_png()], size=(4, 4),
                             max_new_tokens=100),
             "generator": LONG,
             "decoder": dict(task="t2i", prompt="a small picture", size=(4, 4),
                             max_new_tokens=60)}
    for stage, kw in cases.items():
        while not client.health(timeout=5).ready:
            time.sleep(0.5)
        _signal(stage, "SIGSTOP")
        threading.Timer(3.0, _signal, (stage, "SIGKILL")).start()
        start = time.monotonic()
        try:
            for _ in client.generate(seed=1, timeout=60, **kw):
                pass
            seen[stage] = "OK"
        except Emu35Error as e:
            seen[stage] = f"{e.code.name}: {e.details} ({time.monotonic() - start:.1f} s)"
        back = time.monotonic()
        while not client.health(timeout=5).ready:
            time.sleep(0.5)
        seen[stage + "_back_after_s"] = round(time.monotonic() - back, 1)
    return {"probe": "kill", **seen}


def _signal(stage: str, name: str) -> None:
    import os
    import signal
    for pid in _replica_pids(stage):
        os.kill(pid, getattr(signal, name))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:9000")
    sub = p.add_subparsers(dest="probe", required=True)
    c = sub.add_parser("cancel")
    c.add_argument("--n", type=int, default=50)
    c.add_argument("--concurrent", action="store_true")
    c.add_argument("--bound", type=float, default=2.0, help="seconds to wait for KV freed")
    b = sub.add_parser("burst")
    b.add_argument("--n", type=int, default=300)
    sub.add_parser("kill")
    args = p.parse_args(argv)
    with Client(args.target, default_timeout=60) as client:
        if args.probe == "cancel":
            out = cancel_probe(client, args.n, args.concurrent, args.bound)
        elif args.probe == "kill":
            out = kill_probe(client)
        else:
            out = burst_probe(args.target, args.n)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
