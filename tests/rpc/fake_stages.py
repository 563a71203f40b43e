"""In-process stage clients for gateway unit tests (the ``StageClients`` seam).

The generator replays a scripted response (text, then images given as code grids) as the real
generator stage would stream it; the decoder "decodes" a grid to a solid PNG of the right size
and stores it through the store's async API, as the real decoder does. Every call is appended
to ``log`` (a list shared with the test), so tests assert on the order of stage calls and
store operations. ``gates`` hold a step until the test opens them: ``gates["image", i]`` before
the generator emits image i, ``gates["decode", i]`` before image i is stored,
``gates["encode"]`` before the encoder answers.
"""
from __future__ import annotations

import asyncio
import io
import threading
from collections import defaultdict

import torch
from PIL import Image

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.model.ibq.resize import smart_resize_size
from services.model.image_tokens import image_span_ids
from services.rpc.convert import codes_from_pb, codes_to_pb, result_ref_to_pb
from services.rpc.gateway import StageClients
from services.storage import LocalResultStore


class FakeStages(StageClients):
    def __init__(self, tok, store, log: list, text: str = "A cat.", images: int = 2,
                 grid: tuple[int, int] = (2, 3)):
        self.tok, self.store, self.log = tok, store, log
        self.text, self.images, self.grid = text, images, grid
        self.gates: dict = defaultdict(_open_gate)

    async def encode(self, req, metadata):
        self.log.append(("encode", len(req.images)))
        await self.gates["encode"].wait()
        grids = []
        for data in req.images:  # the grid the real encoder gives (the gateway checks it)
            with Image.open(io.BytesIO(data)) as im:
                w, h = smart_resize_size(im.width, im.height, req.area)
            grids.append(codes_to_pb(torch.arange((h // 16) * (w // 16)).view(h // 16, w // 16) % 6))
        return stages_pb2.EncodeResponse(grids=grids)

    async def generate(self, req, metadata):
        rid = req.request_id
        self.log.append(("generate", rid))
        sp = self.tok.special
        ids = self.tok.encode_text(self.text)
        h, w = self.grid
        try:
            yield stages_pb2.GeneratorEvent(text=api_pb2.TextDelta(text=self.text))
            for i in range(self.images):
                await self.gates["image", i].wait()
                codes = (torch.arange(h * w) + i).view(h, w) % 64
                ids += image_span_ids(self.tok, codes)
                yield stages_pb2.GeneratorEvent(image_started=api_pb2.ImageStarted(
                    index=i, grid=common_pb2.ImageGrid(h=h, w=w)))
                yield stages_pb2.GeneratorEvent(image_tokens=codes_to_pb(codes), image_index=i)
            usage = common_pb2.Usage(prompt_tokens=len(req.cond_ids), generated_tokens=len(ids),
                                     images=self.images, queue_seconds=0.25)
            yield stages_pb2.GeneratorEvent(finished=stages_pb2.GeneratorFinished(
                reason=common_pb2.STOP, usage=usage, token_ids=ids + [sp.eos]))
        finally:
            self.log.append(("generate closed", rid))

    async def decode(self, req, metadata):
        self.log.append(("decode", req.request_id, req.index))
        await self.gates["decode", req.index].wait()
        codes = codes_from_pb(req.grid)
        png = solid_png(16 * codes.shape[1], 16 * codes.shape[0], int(codes[0, 0]))
        key = self.store.request_layout(req.request_id, req.tenant).image(req.index)
        ref = await self.store.aput(key, png, "image/png", 16 * codes.shape[1],
                                    16 * codes.shape[0])
        self.log.append(("decoded", req.request_id, req.index))
        return stages_pb2.DecodeResponse(image=result_ref_to_pb(ref))


class RecordingStore(LocalResultStore):
    """A local store that logs its primitive operations and can hold one: ``hold(op, key)``
    makes that operation wait (in whatever thread runs it) until ``release`` or ``hold_s``."""

    def __init__(self, root, log: list, hold_s: float = 10.0):
        super().__init__(root)
        self.log, self.hold_s = log, hold_s
        self._gates: dict[tuple[str, str], threading.Event] = {}

    def hold(self, op: str, key: str) -> threading.Event:
        self._gates[op, key] = threading.Event()
        return self._gates[op, key]

    def _at(self, op: str, key: str) -> None:
        self.log.append((op, key))
        gate = self._gates.get((op, key))
        if gate is not None:
            gate.wait(self.hold_s)  # bounded: a blocked event loop shows up as wrong order
            self.log.append((op + " done", key))

    def _write(self, key, data, meta):
        self._at("write", key)
        super()._write(key, data, meta)

    def _write_new(self, key, data, meta):
        self._at("create", key)
        super()._write_new(key, data, meta)

    def _read(self, key):
        self._at("read", key)
        return super()._read(key)

    def _stat(self, key):
        self._at("stat", key)
        return super()._stat(key)


def solid_png(width: int, height: int, shade: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (shade * 4 % 256, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _open_gate() -> asyncio.Event:
    gate = asyncio.Event()
    gate.set()
    return gate
