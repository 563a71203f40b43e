"""The bad-input catalogue of the public Emu35 API: malformed and hostile GenerateRequests with
the status each must get and a substring of the message that names the field.

Run in-process against the Gateway over fake stages (test_bad_inputs.py) and through a real
`emu35 serve --tiny` cluster with raw gRPC stubs (tests/cluster/test_bad_inputs_cluster.py).
Every case is one fault in an otherwise valid request.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

from emu35_proto.v1 import api_pb2, common_pb2

INVALID = "INVALID_ARGUMENT"
UNIMPLEMENTED = "UNIMPLEMENTED"
NOT_FOUND = "NOT_FOUND"
MB = 1 << 20
NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Case:
    name: str
    request: api_pb2.GenerateRequest | bytes  # bytes: a raw body, sent as is
    code: str                                  # the grpc.StatusCode name
    field: str                                 # a substring of the details naming the field
    context_below: int | None = None           # only a fault while the context is below this
    big: bool = False                          # a body of megabytes (a server may refuse it
                                               # by size first: RESOURCE_EXHAUSTED)


# ---- images ---------------------------------------------------------------------------------

def encoded(w: int, h: int, fmt: str = "PNG", mode: str = "RGB", noise: bool = False) -> bytes:
    if noise:
        im = Image.frombytes(mode, (w, h), bytes((i * 97 + i // 7) % 256 for i in range(w * h * 3)))
    else:
        im = Image.new(mode, (w, h), "red" if mode == "RGB" else 1)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def png_header(w: int, h: int, bit_depth: int = 8, color: int = 2) -> bytes:
    """A PNG that is only a header claiming w x h pixels (and an empty IEND)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, bit_depth, color, 0, 0, 0)
    iend = b"IEND"
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            + struct.pack(">I", 0) + iend + struct.pack(">I", zlib.crc32(iend)))


def corrupt(data: bytes) -> bytes:
    """Flip bytes in the middle of the compressed data (the header stays valid)."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 64]) + data[mid + 64:]


def bomb() -> bytes:
    """A real decompression bomb: a 1-bit 16384x16384 PNG of a few KB (268 megapixels)."""
    return encoded(16384, 16384, mode="1")


GOOD = encoded(32, 32)
NOISE = encoded(64, 64, noise=True)
NOISE_JPEG = encoded(64, 64, "JPEG", noise=True)


# ---- requests -------------------------------------------------------------------------------

def req(task=common_pb2.T2I, prompt="a red fox", images=(), **fields) -> api_pb2.GenerateRequest:
    pb = api_pb2.GenerateRequest(task=task, prompt=prompt,
                                 images=[api_pb2.InputImage(data=d) for d in images])
    for name, value in fields.items():
        target = getattr(pb, name) if hasattr(value, "DESCRIPTOR") else None
        if target is not None:
            target.CopyFrom(value)
        else:
            setattr(pb, name, value)
    return pb


def x2i(*images: bytes, **fields) -> api_pb2.GenerateRequest:
    """An x2i request with a small output (8*8), so one reference image fits any context."""
    fields.setdefault("size", common_pb2.ImageSize(grid=common_pb2.ImageGrid(h=8, w=8)))
    return req(common_pb2.X2I, "make it blue", images, **fields)


def story(*images: bytes) -> api_pb2.GenerateRequest:
    """A story with references at its smaller area (518,400 pixels: two fit an 8k context)."""
    return req(common_pb2.STORY, "a story", images, max_new_tokens=100,
               size=common_pb2.ImageSize(grid=common_pb2.ImageGrid(h=8, w=8)))


def size(**kw) -> common_pb2.ImageSize:
    if "h" in kw:
        return common_pb2.ImageSize(grid=common_pb2.ImageGrid(h=kw["h"], w=kw["w"]))
    return common_pb2.ImageSize(**kw)


def sampling(**kw) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(**kw)


def guidance(**kw) -> common_pb2.Guidance:
    return common_pb2.Guidance(**kw)


def raw(pb: api_pb2.GenerateRequest, extra: bytes) -> bytes:
    return pb.SerializeToString() + extra


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(name, request, field, code=INVALID, **kw):
        c.append(Case(name, request, code, field, **kw))

    # task
    for value in (common_pb2.TASK_UNSPECIFIED, 7, 99, -1, 2**31 - 1):
        add(f"task={value}", req(task=value), "task")
    # prompt
    add("prompt empty", req(prompt=""), "prompt")
    add("prompt blank", req(prompt="  \n\t "), "prompt")
    add("prompt 8193 chars", req(prompt="a" * 8193), "prompt: 8193 characters")
    add("prompt 1 MB", req(prompt="x" * MB), "prompt", big=True)
    for special in ("<|extra_203|>", "<|extra_204|>", "<|extra_100|>", "<|image start|>",
                    "<|image token|>", "<|visual token 000000|>", "<|endoftext|>",
                    "<|extra_50|>"):
        add(f"prompt special {special}", req(prompt=f"a fox {special} in snow"), "prompt")
    add("prompt fills the context", req(prompt="雪" * 8000), "prompt", context_below=24000)
    # request_id
    for rid in (".hidden", "-dash", "_under", "a" * 65, "has space", "a/b", "a.b", "../etc",
                "ü", "nul\x00", "line\n", "x" * MB):
        add(f"request_id {rid[:12]!r}", req(request_id=rid), "request_id", big=len(rid) > 1000)
    # model and decode mode
    for model in ("emu3.5", "x" * MB, "../../etc/passwd", " ", "EMU3.5-TINY"):
        add(f"model {model[:12]!r}", req(model=model), "model", NOT_FOUND, big=len(model) > 1000)
    add("decode_mode DIDA", req(decode_mode=api_pb2.DIDA), "decode_mode", UNIMPLEMENTED)
    add("decode_mode FLASHAR", req(decode_mode=api_pb2.FLASHAR), "decode_mode", UNIMPLEMENTED)
    for value in (99, -5, 2**31 - 1):
        add(f"decode_mode={value}", req(decode_mode=value), "decode_mode")
    # max_new_tokens and stop
    for value in (0, -1, -(2**31)):
        add(f"max_new_tokens={value}", req(max_new_tokens=value), "max_new_tokens")
    add("max_new_tokens 2^31-1", req(max_new_tokens=2**31 - 1), "max_new_tokens")
    add("max_new_tokens over the context", req(max_new_tokens=40000), "max_new_tokens",
        context_below=40000)
    for task in (common_pb2.HOWTO, common_pb2.STORY, common_pb2.EXPLORE, common_pb2.VLA):
        add(f"stop_at_image_end task {task}", req(task=task, stop_at_image_end=True),
            "stop_at_image_end")
    # size
    for preset in ("5:4", "", "auto", "4:3:1", "16x9", "1:1!", "1:1;drop", "x" * MB):
        add(f"size.preset {preset[:10]!r}", req(size=size(preset=preset)), "size",
            big=len(preset) > 1000)
    for h, w in ((0, 3), (3, 0), (-1, 5), (257, 1), (1, 257), (2**31 - 1, 1), (0, 0)):
        add(f"size.grid {h}*{w}", req(size=size(h=h, w=w)), "size")
    add("size.auto false", req(size=size(auto=False)), "size")
    add("size 256*256 over the budget", req(size=size(h=256, w=256)), "size")
    add("size 99*99 over t2i's default budget", req(size=size(h=99, w=99)), "size")
    add("size 64*64 over max_new_tokens", req(size=size(h=64, w=64), max_new_tokens=100), "size")
    # sampling
    for which in ("text_sampling", "image_sampling"):
        for key, value in (("top_p", 0.0), ("top_p", -0.1), ("top_p", 1.5), ("top_p", NAN),
                           ("top_p", INF), ("top_p", -INF), ("temperature", 0.0),
                           ("temperature", -1.0), ("temperature", NAN), ("temperature", INF),
                           ("temperature", -INF), ("temperature", 1e-9),
                           ("temperature", 1e9)):
            add(f"{which}.{key}={value}", req(**{which: sampling(**{key: value})}),
                f"{which}.{key}")
    # guidance
    for mode in (99, -1, 2**31 - 1):
        add(f"guidance.mode={mode}", req(guidance=guidance(mode=mode)), "guidance.mode")
    add("guidance.mode NO_TEXT_IMG_CFG", req(guidance=guidance(mode=common_pb2.NO_TEXT_IMG_CFG)),
        "guidance.mode", UNIMPLEMENTED)
    for scale in (NAN, INF, -INF, -1.0, 1e9):
        add(f"guidance.scale={scale}", req(guidance=guidance(scale=scale)), "guidance.scale")
    add("guidance.scale with mode NONE", req(guidance=guidance(mode=common_pb2.NONE, scale=2.0)),
        "guidance.scale")
    add("guidance.image_scale (3-way only)", req(guidance=guidance(image_scale=2.0)),
        "guidance.image_scale")
    add("guidance.image_scale NaN", req(guidance=guidance(image_scale=NAN)),
        "guidance.image_scale")
    # images
    add("x2i without images", x2i(), "images")
    add("4 images", x2i(GOOD, GOOD, GOOD, GOOD), "images: 4 given")
    add("1000 images", x2i(*[GOOD] * 1000), "images: 1000 given")
    add("empty image", x2i(b""), "images[0]")
    add("empty third image", x2i(GOOD, GOOD, b""), "images[2]")
    add("garbage bytes", x2i(b"\x00\x01garbage" * 10), "images[0]")
    add("text as image", x2i(b"hello, this is not an image\n" * 4), "images[0]")
    add("svg", x2i(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'), "images[0]")
    for fmt in ("GIF", "TIFF", "ICO", "PPM", "TGA", "PCX"):
        add(f"{fmt} (unsupported format)", x2i(encoded(16, 16, fmt)), "images[0]")
    add("truncated PNG", x2i(NOISE[:len(NOISE) // 2]), "images[0]")
    add("truncated PNG second", story(GOOD, NOISE[: len(NOISE) - 40]), "images[1]")
    add("corrupt PNG", x2i(corrupt(NOISE)), "images[0]")
    add("truncated JPEG", x2i(NOISE_JPEG[:len(NOISE_JPEG) // 2]), "images[0]")
    add("corrupt JPEG", x2i(corrupt(NOISE_JPEG)[:-2]), "images[0]")
    add("PNG header only", x2i(png_header(32, 32)), "images[0]")
    add("PNG 0x0", x2i(png_header(0, 0)), "images[0]")
    add("PNG 0x5", x2i(png_header(0, 5)), "images[0]")
    add("PNG bad bit depth", x2i(png_header(8, 8, bit_depth=3)), "images[0]")
    add("PNG 16777216x1", x2i(png_header(16777216, 1)), "images[0]")
    add("PNG 1x16777216", x2i(png_header(1, 16777216)), "images[0]")
    add("PNG 5000x5000 (over the pixel limit)", x2i(png_header(5000, 5000)), "images[0]")
    add("PNG 100000x100000 header", x2i(png_header(100_000, 100_000)), "images[0]")
    add("PNG 2^31-1 a side", x2i(png_header(2**31 - 1, 2**31 - 1)), "images[0]")
    add("decompression bomb", x2i(bomb()), "images[0]")
    add("image over 20 MB", x2i(GOOD + b"\0" * (20 * MB)), "images[0]", big=True)
    add("bad image on t2i", req(images=[b"nope"]), "images[0]")
    add("three 4096x4096 references over the context",
        req(common_pb2.X2I, "edit", [png_header(4096, 4096)] * 3), "images: ",
        context_below=16700)
    # unknown or mistyped fields, malformed bodies
    add("unknown field 111", raw(req(), b"\xf8\x06\x05"), "request")
    add("task as bytes", raw(req(), b"\x0a\x01x"), "request")
    add("unknown guidance field", raw(req(), b"\x3a\x03\xf8\x06\x01"), "guidance")
    add("unknown image field", raw(x2i(GOOD), b"\x1a\x02\x10\x01"), "images[1]")
    add("unknown size field", raw(req(), b"\x22\x02\x28\x01"), "size")
    add("unknown sampling field", raw(req(), b"\x2a\x02\x40\x01"), "text_sampling")
    for name, body in (("0xff", b"\xff"), ("truncated varint", b"\x08"),
                       ("overlong varint", b"\x08" + b"\xff" * 11),
                       ("length past the end", b"\x12\x10abc"),
                       ("bad UTF-8 prompt", b"\x08\x01\x12\x02\xc3\x28"),
                       ("group start", b"\x0b"), ("field number 0", b"\x00\x01"),
                       ("huge length", b"\x12\xff\xff\xff\xff\x0f"),
                       ("truncated image", req(images=[GOOD]).SerializeToString()[:-5]),
                       ("end group", b"\x0c")):
        add(f"malformed body: {name}", body, "request")
    return c


CASES = _cases()
