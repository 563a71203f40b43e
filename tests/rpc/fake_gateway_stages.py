"""FAKE stages for the gateway's unit tests (the ``StageClients`` seam): the encoder returns the
grid smart_resize gives each image (random codes), the generator records its request and
writes "ok" then one image of the output grid (if any), the decoder stores a real PNG."""
from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from emu35_proto.v1 import api_pb2, common_pb2, stages_pb2
from services.engine.scheduler import QueueFull
from services.model.ibq.resize import smart_resize_size
from services.model.image_tokens import image_span_ids
from services.model.synthetic_vocab import write_synthetic_tokenizer
from services.model.text_tokenizer import TextTokenizer
from services.rpc.convert import codes_from_pb, codes_to_pb, result_ref_to_pb
from services.rpc.gateway import Gateway, StageClients
from services.rpc.served import ServedModel
from services.storage import LocalResultStore

NUM_VISUAL = 64
MODEL_NAME = "Emu3.5-tiny-test"


def tokenizer(path: Path) -> TextTokenizer:
    write_synthetic_tokenizer(path, NUM_VISUAL)
    return TextTokenizer.from_dir(path)


class FakeStages(StageClients):
    def __init__(self, tok: TextTokenizer, store: LocalResultStore):
        self.tok, self.store = tok, store
        self.encoded: list[stages_pb2.EncodeRequest] = []
        self.requests: list[stages_pb2.GeneratorRequest] = []
        self.fail_generate: BaseException | None = None  # raised instead of generating
        self.finish_reason = common_pb2.STOP

    async def encode(self, req, metadata):
        self.encoded.append(req)
        grids = []
        for data in req.images:
            with Image.open(io.BytesIO(data)) as im:
                w, h = smart_resize_size(im.width, im.height, req.area)
            codes = torch.randint(0, NUM_VISUAL, (h // 16, w // 16))
            grids.append(codes_to_pb(codes))
        return stages_pb2.EncodeResponse(grids=grids)

    async def generate(self, req, metadata):
        self.requests.append(req)
        if self.fail_generate is not None:
            raise self.fail_generate
        ids = self.tok.encode_text("ok")
        yield stages_pb2.GeneratorEvent(text=api_pb2.TextDelta(text="ok", channel="text"))
        if req.HasField("output_grid"):
            g = req.output_grid
            codes = torch.randint(0, NUM_VISUAL, (g.h, g.w))
            yield stages_pb2.GeneratorEvent(image_tokens=codes_to_pb(codes), image_index=0)
            ids += image_span_ids(self.tok, codes)
        ids += [self.tok.special.ess, self.tok.special.eos]
        yield stages_pb2.GeneratorEvent(finished=stages_pb2.GeneratorFinished(
            reason=self.finish_reason, usage=common_pb2.Usage(generated_tokens=len(ids)),
            token_ids=ids))

    async def decode(self, req, metadata):
        codes = codes_from_pb(req.grid)
        image = Image.new("RGB", (16 * codes.shape[1], 16 * codes.shape[0]), "gray")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        key = self.store.request_layout(req.request_id, req.tenant).image(req.index)
        ref = self.store.put(key, buf.getvalue(), "image/png", image.width, image.height)
        return stages_pb2.DecodeResponse(image=result_ref_to_pb(ref))


def make_gateway(root: Path, tok: TextTokenizer, context_length: int = 16384) -> Gateway:
    store = LocalResultStore(root / "results")
    stages = FakeStages(tok, store)
    return Gateway(tok, stages, store, context_length=context_length,
                   model=ServedModel(MODEL_NAME, str(root / "ckpt"), tok.vocab_size))


QUEUE_FULL = QueueFull("waiting queue full (2 requests)")
