"""One writer of a request's results over a ResultStore, for the served path (the gateway) and
``emu35 generate``: images, the reference-compatible Story, then the manifest, last. The
manifest's schema (version 1) is documented in docs/manifest.md; ``ResultWriter.record`` is the
only place that builds one.

``ResultWriter`` is blocking (``emu35 generate`` calls it directly). ``StreamResults`` drives it
from an event loop: every store call runs in a worker thread, and work that a cancellation must
not cut short (an image being stored, the final writes) runs as shielded tasks that ``close``
waits for before it writes a cancelled or failed manifest listing what was stored.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from services.engine.events import Finished, Usage
from services.engine.request import GenerationRequest
from services.model.response import (BrokenImage, ImageEntry, IncompleteImage, PngImage,
                                     TextEntry, split_response)
from services.storage import AlreadyExists, ResultRef
from services.storage.base import MANIFEST_VERSION

from .story import build_story

log = logging.getLogger(__name__)

STORY_TYPE = "application/x-protobuf"
KEEP_PNG_BYTES = 64 << 20  # PNG bytes a writer keeps for its Story; beyond, it reads them back
CLOSE_WAIT_S = 60.0        # how long closing waits for an image still being stored
STATES = ("complete", "cancelled", "failed")


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class RequestSummary:
    """What a manifest records about the request itself."""

    task: str
    prompt: str
    seed: int                 # the seed used (the server's pick when the caller sent none)
    max_new_tokens: int
    guidance_scale: float
    output_grid: tuple[int, int] | None  # (h, w) tokens; None: the model chooses

    @classmethod
    def of(cls, request: GenerationRequest, prompt: str) -> RequestSummary:
        grid = request.output_grid
        return cls(request.task.value, prompt, request.seed, request.max_new_tokens,
                   request.guidance.scale, (grid.h, grid.w) if grid is not None else None)


def usage_record(u: Usage) -> dict[str, Any]:
    """Usage under the public API's names (emu35.v1.Usage, the client's ``Usage``)."""
    return {"prompt_tokens": u.prompt_tokens, "uncond_prompt_tokens": u.uncond_prompt_tokens,
            "cached_prompt_tokens": u.cached_prompt_tokens,
            "generated_tokens": u.generated_tokens, "images": u.images,
            "queue_seconds": u.queue_s, "first_token_seconds": u.first_token_s or 0.0,
            "total_seconds": u.total_s}


async def check_unused(store, layout) -> None:
    """Before any work: AlreadyExists (naming ``request_id``) if the request's id is taken
    (claimed, or with a manifest from before claims). ``claim`` settles races."""
    def used() -> bool:
        return store.exists(layout.claim) or store.exists(layout.manifest)
    if await asyncio.to_thread(used):
        raise taken(layout)


def taken(layout) -> AlreadyExists:
    return AlreadyExists(f"request_id: {layout.request_id!r} is already used by this tenant; "
                         "request ids are unique per tenant")


class ResultWriter:
    """Writes one request's results: images (as they come), the Story, the manifest last.

    ``layout``: a RequestLayout (served: ``{tenant}/{request_id}/...``, with a claim) or a
    BatchLayout (``emu35 generate``: flat folders, one batch manifest written by the caller).
    """

    def __init__(self, store, layout, summary: RequestSummary, started: float | None = None,
                 keep_png_bytes: int = KEEP_PNG_BYTES) -> None:
        self.store, self.layout, self.summary = store, layout, summary
        self.images: dict[int, ResultRef] = {}
        self.committed = False
        self.story: ResultRef | None = None  # once stored
        self._finished: Finished | None = None
        self._pngs: dict[int, bytes] = {}
        self._budget = keep_png_bytes
        self._started = time.time() if started is None else started  # accepted (epoch s)

    # ---- request_id: used once per tenant ------------------------------------------------------

    def claim(self) -> None:
        """Take the request_id, create-only: AlreadyExists (naming ``request_id``) if taken."""
        body = json.dumps({"tenant": self.layout.tenant, "request_id": self.layout.request_id,
                           "created_at": _iso(self._started), "nonce": uuid.uuid4().hex})
        try:
            self.store.put(self.layout.claim, body.encode(), "application/json", create=True)
        except AlreadyExists:
            raise taken(self.layout) from None

    # ---- images --------------------------------------------------------------------------------

    def put_image(self, index: int, png: bytes) -> ResultRef:
        """Store image ``index`` (``emu35 generate``; in the cluster the decoder stores it)."""
        p = PngImage(png)
        ref = self.store.put(self.layout.image(index), png, "image/png", p.width, p.height)
        self.add_image(index, ref, png)
        return ref

    def add_image(self, index: int, ref: ResultRef, png: bytes | None = None) -> None:
        """Record a stored image; its bytes are kept for the Story while within the budget."""
        self.images[index] = ref
        if png is not None and len(png) <= self._budget:
            self._pngs[index] = png
            self._budget -= len(png)

    def _png(self, index: int) -> bytes:
        if index in self._pngs:
            return self._pngs.pop(index)
        return self.store.get(self.store.key_for_uri(self.images[index].uri))

    # ---- the end -------------------------------------------------------------------------------

    def finish(self, tok, finished: Finished, reference_pngs: Sequence[PngImage],
               render: Callable[[Any], bytes] | None = None) -> dict[str, Any]:
        """Store the Story of the response and return the complete manifest record (not yet
        written: ``commit`` it, or collect it into a batch manifest). ``render`` makes the PNG
        of an image that no one stored yet (``emu35 generate``)."""
        self._finished = finished
        entries = split_response(tok, list(finished.token_ids))
        items, k = [], 0
        for e in entries:
            if isinstance(e, ImageEntry):
                if k not in self.images:
                    if render is None:
                        raise RuntimeError(f"image {k} of the response was never stored")
                    self.put_image(k, render(e.codes))
                items.append(PngImage(self._png(k)))
                k += 1
            elif not isinstance(e, (BrokenImage, IncompleteImage)):
                items.append(e)
        story = build_story(self.summary.prompt, reference_pngs, items).SerializeToString()
        story_ref = self.story = self.store.put(self.layout.story, story, STORY_TYPE)
        state = {"error": "failed", "aborted": "cancelled"}.get(finished.reason, "complete")
        return self.record(state, finished=finished, story=story_ref,
                           text="".join(e.text for e in entries if isinstance(e, TextEntry)),
                           broken_images=sum(isinstance(e, BrokenImage) for e in entries),
                           error=getattr(finished, "error", None))

    def record(self, state: str, finished: Finished | None = None,
               story: ResultRef | None = None, text: str = "", broken_images: int = 0,
               error: str | None = None) -> dict[str, Any]:
        """The manifest (schema version 1, docs/manifest.md) of the request as it stands."""
        if state not in STATES:
            raise ValueError(f"state: must be one of {STATES}, got {state!r}")
        s, finished = self.summary, finished or self._finished
        return {
            "manifest_version": MANIFEST_VERSION, "tenant": self.layout.tenant,
            "request_id": self.layout.request_id, "state": state, "task": s.task,
            "prompt": s.prompt, "seed": s.seed, "max_new_tokens": s.max_new_tokens,
            "guidance_scale": s.guidance_scale,
            "output_grid": list(s.output_grid) if s.output_grid else None,
            "finish_reason": finished.reason if finished else None, "error": error,
            "images": [self.images[i] for i in sorted(self.images)],
            "story": story or self.story,
            "text": text, "broken_images": broken_images,
            "incomplete_image": bool(finished and finished.incomplete_image),
            "usage": usage_record(finished.usage) if finished else None,
            "created_at": _iso(self._started)}

    def commit(self, manifest: dict[str, Any]) -> ResultRef:
        """Write the request's manifest, create-only: the request's results are final."""
        try:
            ref = self.store.write_manifest(self.layout.request_id, manifest,
                                            tenant=self.layout.tenant, create=True)
        except AlreadyExists:
            raise taken(self.layout) from None
        self.committed = True
        return ref


class StreamResults:
    """A ResultWriter driven from an event loop (the gateway)."""

    def __init__(self, writer: ResultWriter) -> None:
        self.writer = writer
        self._pending: set[asyncio.Task] = set()

    async def claim(self) -> None:
        await asyncio.to_thread(self.writer.claim)

    async def shielded(self, coro: Awaitable):
        """Run ``coro`` to its end even if the caller is cancelled meanwhile; ``close`` waits
        for it (an image the decoder is storing is then listed, not orphaned)."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def complete(self, tok, finished: Finished,
                       reference_pngs: Callable[[], Sequence[PngImage]]):
        """Story and manifest (in a worker thread, shielded); returns (story_ref,
        manifest_ref)."""
        def write():
            manifest = self.writer.finish(tok, finished, reference_pngs())
            return manifest["story"], self.writer.commit(manifest)
        return await self.shielded(asyncio.to_thread(write))

    async def close(self, state: str, error: str | None = None) -> None:
        """The stream ended without committing: wait (bounded) for shielded work, then write
        the manifest saying ``state`` with the images stored so far. Shielded from
        cancellation; failures are logged, never raised over the stream's own error."""
        task = asyncio.ensure_future(self._close(state, error))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - logged in _close
            pass

    async def _close(self, state: str, error: str | None) -> None:
        w = self.writer
        try:
            if self._pending:
                await asyncio.wait(list(self._pending), timeout=CLOSE_WAIT_S)
            if w.committed:
                return  # the final writes got through after all
            unfinished = [t for t in self._pending if not t.done()]
            if unfinished:
                error = (error or "") + f" ({len(unfinished)} image(s) still being stored)"
            await asyncio.to_thread(w.commit, w.record(state, error=error))
        except Exception:
            log.exception("request %s/%s: writing the %s manifest failed", w.layout.tenant,
                          w.layout.request_id, state)
            raise


_CLOSING: set[asyncio.Task] = set()  # strong refs: a shielded close outlives its caller


async def drain_closing() -> None:
    """Wait for every close in progress (shutdown, tests)."""
    while _CLOSING:
        await asyncio.gather(*list(_CLOSING), return_exceptions=True)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
