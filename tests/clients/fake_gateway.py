"""A FAKE emu35.v1.Emu35 gateway for the client's unit tests: the seam is the gRPC API itself.

Its Generate behaviour is picked by the prompt:
  "<anything>"            one scripted interleaved response (text, one image, text, Finished)
  "images:N"              the script with N images
  "corrupt"               an ImageReady whose sha256 does not match the stored bytes
  "abort:CODE:details"    fails with that status
  "late:CODE:details"     one text event, then fails with that status
  "endless"               image progress until the caller cancels (sets ``cancelled``)
  "silent"                sends nothing until the deadline or a cancel
Every call first takes the next entry of ``failures`` (code, details, retry-after ms or None),
if any, and fails with it: a server that is briefly unavailable or full.
"""
from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from emu35_proto.v1 import api_pb2, api_pb2_grpc, common_pb2

REQUEST_ID = "fake-req-1"
SERVER_SEED = 1234


class FakeGateway(api_pb2_grpc.Emu35Servicer):
    def __init__(self, store: Path):
        self.store = store
        self.store.mkdir(parents=True, exist_ok=True)
        self.requests: list[api_pb2.GenerateRequest] = []
        self.metadata: list[dict[str, str]] = []   # invocation metadata of every call
        self.cancelled = threading.Event()          # an "endless" call ended without finishing
        self.api_key: str | None = None             # when set, calls must carry it
        self.unary_error: tuple[grpc.StatusCode, str] | None = None
        self.unary_delay = 0.0
        self.ready = True
        self.http_base: str | None = None           # serve refs as presigned http URLs
        self.target = ""
        self.failures: list[tuple[grpc.StatusCode, str, int | None]] = []

    # ---- calls ------------------------------------------------------------------------------

    def Generate(self, request, context):
        self._admit(context)
        self.requests.append(request)
        mode, _, arg = request.prompt.partition(":")
        if mode == "abort":
            code, _, details = arg.partition(":")
            context.abort(grpc.StatusCode[code], details)
        if mode == "late":
            code, _, details = arg.partition(":")
            yield _event(REQUEST_ID, text=api_pb2.TextDelta(text="partial", channel="text"))
            context.abort(grpc.StatusCode[code], details)
        if mode == "endless":
            yield from self._endless(request, context)
        elif mode == "silent":
            while context.is_active():
                time.sleep(0.01)
        else:
            images = int(arg) if mode == "images" else 1
            yield from self._script(request, images, corrupt=mode == "corrupt")

    def Health(self, request, context):
        self._unary(context)
        return api_pb2.HealthResponse(ready=self.ready, stages={
            "encoder": True, "generator": self.ready, "decoder": True}, load=api_pb2.EngineLoad(
                replicas=2, waiting=1, running=3, kv_blocks_used=40, kv_blocks_total=8192,
                max_waiting=512))

    def Info(self, request, context):
        self._unary(context)
        return api_pb2.InfoResponse(version="0.1.0-fake", tasks=["t2i", "x2i", "howto"],
                                    max_prompt_chars=8192, max_images=3,
                                    max_image_bytes=20 << 20, context_length=9216)

    def ListModels(self, request, context):
        self._unary(context)
        return api_pb2.ListModelsResponse(models=[
            api_pb2.ModelInfo(name="emu3.5", checkpoint="/ckpt/Emu3.5", vocab_size=282926),
            api_pb2.ModelInfo(name="emu3.5-image", checkpoint="/ckpt/Emu3.5-Image",
                              vocab_size=282926)])

    # ---- behaviour ----------------------------------------------------------------------------

    def _admit(self, context) -> None:
        md = dict(context.invocation_metadata())
        self.metadata.append(md)
        if self.api_key and md.get("authorization") != f"Bearer {self.api_key}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: unknown API key")
        if self.failures:
            code, details, retry_ms = self.failures.pop(0)
            if retry_ms is not None:
                context.set_trailing_metadata((("retry-after-ms", str(retry_ms)),))
            context.abort(code, details)

    def _unary(self, context) -> None:
        self._admit(context)
        end = time.monotonic() + self.unary_delay
        while context.is_active() and time.monotonic() < end:
            time.sleep(0.01)
        if self.unary_error:
            context.abort(*self.unary_error)

    def _script(self, request, images: int, corrupt: bool):
        rid = request.request_id or REQUEST_ID
        yield _event(rid, text=api_pb2.TextDelta(text="Step one. ", channel="text"))
        yield _event(rid, text=api_pb2.TextDelta(text="thinking", channel="global_cot"))
        yield api_pb2.GenerateEvent(request_id=rid)  # an event kind this client does not know
        for i in range(images):
            yield _event(rid, image_started=api_pb2.ImageStarted(
                index=i, grid=common_pb2.ImageGrid(h=2, w=3)))
            for rows in (1, 2):
                yield _event(rid, image_progress=api_pb2.ImageProgress(
                    index=i, rows_done=rows, rows_total=2))
            ref = self.store_object(f"{rid}/{i:02d}.png", png_bytes(i), width=48, height=32,
                                    content_type="image/png")
            if corrupt:
                ref.sha256 = "0" * 64
            yield _event(rid, image_ready=api_pb2.ImageReady(index=i, image=ref))
        yield _event(rid, text=api_pb2.TextDelta(text="Done.", channel="text"))
        yield _event(rid, finished=api_pb2.Finished(
            reason=common_pb2.STOP,
            usage=common_pb2.Usage(prompt_tokens=40, uncond_prompt_tokens=20,
                                   generated_tokens=17, images=images, total_seconds=1.5),
            story=self.store_object(f"{rid}/story.pb", b"story"),
            manifest=self.store_object(f"{rid}/manifest.json", b"{}"),
            seed=request.seed if request.HasField("seed") else SERVER_SEED))

    def _endless(self, request, context):
        context.add_callback(lambda: self.cancelled.set() if not context.is_active() else None)
        yield _event(REQUEST_ID, image_started=api_pb2.ImageStarted(
            index=0, grid=common_pb2.ImageGrid(h=1000, w=1)))
        rows = 0
        while context.is_active():
            rows += 1
            yield _event(REQUEST_ID, image_progress=api_pb2.ImageProgress(
                index=0, rows_done=rows, rows_total=1000))
            time.sleep(0.005)

    def store_object(self, key: str, data: bytes, **fields) -> common_pb2.ResultRef:
        path = self.store / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        ref = common_pb2.ResultRef(uri=path.as_uri(), sha256=hashlib.sha256(data).hexdigest(),
                                   bytes=len(data), **fields)
        if self.http_base:
            ref.uri = f"s3://bucket/{key}"
            ref.presigned_url = f"{self.http_base}/{key}?X-Amz-Signature=secret"
        return ref


def png_bytes(i: int) -> bytes:
    """Stand-in image bytes (the client never decodes them)."""
    return b"\x89PNG\r\n\x1a\n" + f"fake image {i}".encode()


def _event(rid: str, **kind) -> api_pb2.GenerateEvent:
    return api_pb2.GenerateEvent(request_id=rid, **kind)


def start(fake: FakeGateway) -> grpc.Server:
    """Serve ``fake`` on 127.0.0.1 (an ephemeral port); sets ``fake.target``."""
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    api_pb2_grpc.add_Emu35Servicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.target = f"127.0.0.1:{port}"
    return server
