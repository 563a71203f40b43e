"""Offline generation (``emu35 generate``): many prompts run as one continuous batch through
the engine; results are PNGs, the reference-compatible Story protobuf per prompt and a JSON
manifest written last.

Layout of OUT:  images/{name}_{i:02d}.png   proto/{name}.pb   manifest.json
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _file_record(path: Path, root: Path, data: bytes, **extra) -> dict:
    return {"path": str(path.relative_to(root)), "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), **extra}


def write_result(out: Path, item: PromptItem, finished, tok, vision, reference_pngs) -> dict:
    """PNGs and the Story .pb of one finished request; returns its manifest entry."""
    from services.model.response import (BrokenImage, ImageEntry, IncompleteImage, PngImage,
                                         TextEntry, split_response)
    from services.rpc.story import build_story

    entries = split_response(tok, finished.token_ids)
    images, items = [], []
    for entry in entries:
        if isinstance(entry, ImageEntry):
            data = png_bytes(vision.decode_to_pil(entry.codes))
            path = out / "images" / f"{item.name}_{len(images):02d}.png"
            path.write_bytes(data)
            png = PngImage(data)
            images.append(_file_record(path, out, data, width=png.width, height=png.height))
            items.append(png)
        elif not isinstance(entry, (BrokenImage, IncompleteImage)):
            items.append(entry)
    story = build_story(item.prompt, reference_pngs, items).SerializeToString()
    pb_path = out / "proto" / f"{item.name}.pb"
    pb_path.write_bytes(story)
    text = "".join(e.text for e in entries if isinstance(e, TextEntry))
    return {**asdict(item), "finish_reason": finished.reason, "text": text, "images": images,
            "story": _file_record(pb_path, out, story), "usage": asdict(finished.usage),
            "incomplete_image": finished.incomplete_image,
            "broken_images": sum(isinstance(e, BrokenImage) for e in entries)}


def write_manifest(out: Path, results: list[dict], meta: dict) -> Path:
    path = out / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    tmp.replace(path)  # written last and atomically: its presence means the run completed
    return path
