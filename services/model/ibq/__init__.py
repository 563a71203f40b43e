"""IBQ vision tokenizer (spec §7): images <-> 16x16-pixel code grids.

Pure torch; the public entry point is :class:`VisionTokenizer`::

    tok = VisionTokenizer.from_dir("/models/Emu3.5-VisionTokenizer", device="cuda:0")
    codes = tok.encode([image], area=1024 * 1024)   # [LongTensor [h, w]]
    pixels = tok.decode(codes[0][None])             # uint8 [1, 16h, 16w, 3]

Modules: ``config`` (config.yaml), ``modules`` (Encoder/Decoder), ``model`` (IBQ and the
memory-bounded quantizer), ``checkpoint`` (safe strict loading), ``resize``
(smart_resize), ``tokenizer`` (the API), ``tiny`` (random test tokenizers).
"""

from .checkpoint import IBQCheckpointError
from .config import IBQConfig, IBQConfigError
from .model import IBQ, quantize_argmax
from .resize import smart_resize, smart_resize_size
from .tiny import write_tiny_vision_tokenizer
from .tokenizer import VisionTokenizer

__all__ = [
    "IBQ",
    "IBQCheckpointError",
    "IBQConfig",
    "IBQConfigError",
    "VisionTokenizer",
    "quantize_argmax",
    "smart_resize",
    "smart_resize_size",
    "write_tiny_vision_tokenizer",
]
