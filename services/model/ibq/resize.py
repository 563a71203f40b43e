"""Reference-image resizing before IBQ encoding (spec §3.3).

The target keeps the aspect ratio, has roughly ``area`` pixels, and has sides that are
multiples of ``factor`` (the tokenizer's 16 px per code). There is no crop or padding;
small images are upscaled.
"""

from __future__ import annotations

from PIL import Image


def smart_resize_size(width: int, height: int, area: int, factor: int = 16) -> tuple[int, int]:
    """Target (width, height) for an image of ``width x height`` pixels.

    ``new_h = int(sqrt(area / ar))``, ``new_w = int(new_h * ar)`` with ``ar = W / H``, then
    each side is rounded to the nearest multiple of ``factor``, halves up.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if area <= 0 or factor <= 0:
        raise ValueError(f"area and factor must be positive, got area={area} factor={factor}")
    aspect = width / height
    # `** 0.5` (libm pow), exactly as the reference computes it, rather than math.sqrt.
    new_h = int((area / aspect) ** 0.5)
    new_w = int(new_h * aspect)
    new_h = ((new_h + factor // 2) // factor) * factor
    new_w = ((new_w + factor // 2) // factor) * factor
    if new_h == 0 or new_w == 0:
        # The reference would hand PIL a zero-sized target and fail obscurely.
        raise ValueError(
            f"image {width}x{height} is too elongated for area {area}: "
            f"a side rounds to 0 (factor {factor})"
        )
    return new_w, new_h


def smart_resize(image: Image.Image, area: int, factor: int = 16) -> Image.Image:
    """Convert ``image`` to RGB and resize it (BICUBIC) to :func:`smart_resize_size`."""
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    size = smart_resize_size(rgb.width, rgb.height, area, factor)
    return rgb.resize(size, Image.BICUBIC)
