"""Reference images from a request: header checks (no pixel decoded), then a full decode whose
failure blames the caller's image (``images[i]``), never the server."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from .errors import InvalidArgument

FORMATS = ("BMP", "JPEG", "PNG", "WEBP")


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding it."""

    width: int
    height: int
    format: str


def check_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> ImageHeader:
    """Size, format and pixel count from the header; InvalidArgument naming ``field``."""
    if not data:
        raise InvalidArgument(f"{field}: empty image")
    if len(data) > max_bytes:
        raise InvalidArgument(f"{field}: {len(data)} bytes, the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:  # reads the header only
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError:
        raise InvalidArgument(f"{field}: too many pixels, the limit is {max_pixels} "
                              "(decompression-bomb guard)") from None
    except Exception:  # noqa: BLE001 - any failure to read a caller's header is the caller's
        raise InvalidArgument(f"{field}: not a readable image; send PNG, JPEG, WEBP or BMP "
                              f"of at most {max_pixels} pixels") from None
    if w < 1 or h < 1:
        raise InvalidArgument(f"{field}: {w}x{h} pixels, an image needs at least 1x1")
    if w * h > max_pixels:
        raise InvalidArgument(f"{field}: {w}x{h} pixels, the limit is {max_pixels} pixels")
    return ImageHeader(w, h, fmt)


def decode_image(data: bytes, field: str = "image") -> Image.Image:
    """Decode an image whose header passed :func:`check_image` fully (RGB); a truncated or
    corrupt body is InvalidArgument naming ``field``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                im.load()
                return im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or inconsistent caller data
        reason = "truncated" if "truncated" in str(e) else "corrupt"
        raise InvalidArgument(f"{field}: cannot be decoded (the {reason} data of a "
                              f"{_format(data)} image)") from None


def _format(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            return im.format or "?"
    except Exception:  # noqa: BLE001
        return "?"
