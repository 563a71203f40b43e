"""Offline generation (``emu35 generate``): many prompts run as one continuous batch through
the engine; results are PNGs, the reference-compatible Story protobuf per prompt and a JSON
manifest written last, all through the served path's writer (services.rpc.results) over a
local ResultStore rooted at OUT.

Layout of OUT:  images/{name}_{i:02d}.png   proto/{name}.pb   manifest.json
                (.meta/: the store's checksums of each file)
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.rpc.results import png_bytes  # noqa: F401  (re-exported for generate_cmd)

PROMPT_KEYS = {"name", "task", "prompt", "images", "aspect", "size", "seed", "cfg", "max_new_tokens"}


@dataclass
class PromptItem:
    name: str
    task: str
    prompt: str
    images: list[str] = field(default_factory=list)
    size: str | None = None
    seed: int | None = None
    cfg: float | None = None
    max_new_tokens: int | None = None


def load_prompt_file(path: str, defaults: dict) -> list[PromptItem]:
    """JSON list or JSON Lines of objects (keys: PROMPT_KEYS; "prompt" required) or of strings.
    Errors name the line/entry and field."""
    from services.storage import validate_name

    from .cli import UsageError

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"--prompts: file not found: {path}") from None
    try:
        raw = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UsageError(f"--prompts: {path} is not JSON or JSON Lines ({e})") from None
    items = []
    for i, entry in enumerate(raw):
        entry = {"prompt": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
            raise UsageError(f"--prompts: entry {i} needs a string 'prompt'")
        unknown = set(entry) - PROMPT_KEYS
        if unknown:
            raise UsageError(f"--prompts: entry {i} has unknown field(s) {sorted(unknown)}")
        if "aspect" in entry:
            entry["size"] = entry.pop("aspect")
        merged = {**defaults, "name": f"{i:03d}", **entry}
        try:
            validate_name(merged["name"], "name")  # it names files: images/{name}_00.png
        except ValueError as e:
            raise UsageError(f"--prompts: entry {i}: {e}") from None
        items.append(PromptItem(**merged))
    if not items:
        raise UsageError(f"--prompts: {path} has no prompts")
    return items


class Progress:
    """One status line on stderr: requests done, image rows, tokens per second."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.tokens, self.stream = total, 0, 0, stream
        self.rows: dict[str, tuple[int, int]] = {}
        self.start = time.monotonic()
        self.tty = stream.isatty()

    def update(self, event) -> None:
        from services.engine.events import Finished, ImageProgress
        if isinstance(event, ImageProgress):
            self.rows[event.request_id] = (event.rows_done, event.rows_total)
        elif isinstance(event, Finished):
            self.done += 1
            self.rows.pop(event.request_id, None)
            self.tokens += event.usage.generated_tokens
            if not self.tty:
                self.stream.write(f"[{self.done}/{self.total}] {event.request_id}: {event.reason}\n")

    def draw(self, live_tokens: int = 0) -> None:
        """``live_tokens``: tokens generated so far by the requests still running, so the
        rate moves while they run rather than only when one finishes."""
        if not self.tty:
            return
        bar = "#" * (20 * self.done // self.total)
        rows = sum(r for r, _ in self.rows.values()), sum(t for _, t in self.rows.values())
        rate = (self.tokens + live_tokens) / max(time.monotonic() - self.start, 1e-9)
        self.stream.write(f"\r[{bar:<20}] {self.done}/{self.total} done | image rows "
                          f"{rows[0]}/{rows[1]} | {rate:,.0f} tok/s ")
        self.stream.flush()


def write_result(store, item: PromptItem, finished, request, tok, vision, reference_pngs,
                 started: float | None = None) -> dict:
    """PNGs and the Story .pb of one finished request; returns its manifest record (schema:
    docs/manifest.md)."""
    from services.rpc.results import RequestSummary, ResultWriter
    from services.storage import BatchLayout

    writer = ResultWriter(store, BatchLayout(item.name), RequestSummary.of(request, item.prompt),
                          started)
    return writer.finish(tok, finished, reference_pngs,
                         render=lambda codes: png_bytes(vision.decode_to_pil(codes)))


def write_manifest(store, results: list[dict], meta: dict) -> Path:
    """The batch manifest, ``OUT/manifest.json``: written last (its presence means the run
    completed), ``results`` in prompt order."""
    body = store.encode_manifest({"manifest_version": 1, **meta, "results": results})
    store.put("manifest.json", body, "application/json")
    return store.path_for("manifest.json")
