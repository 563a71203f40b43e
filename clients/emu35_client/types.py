"""Typed records of the emu35.v1 API: what a caller sends (Sampling, Guidance) and what it gets
back (events, ResultRef, Usage, Health, ServerInfo, ModelInfo). Frozen dataclasses; protobuf
stays in ``convert``."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampling:
    """Sampling of one modality; a field left None takes the task's default on the server."""

    top_k: int | None = None          # <= 0 disables; 1 is greedy
    top_p: float | None = None        # in (0, 1]; 1 disables
    temperature: float | None = None  # > 0


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance; ``generate(cfg=3.0)`` is short for ``Guidance(scale=3.0)``."""

    scale: float | None = None        # s in u + s(c - u); None: the task's default
    mode: str | None = None           # "no_text" (default), "no_text_img_cfg" or "none"
    image_scale: float | None = None  # a in the 3-way formula (mode "no_text_img_cfg")


@dataclass(frozen=True)
class ResultRef:
    """A stored result object (image, story, manifest); fetch it with ``download``."""

    uri: str                  # "s3://bucket/key" or "file:///path"
    presigned_url: str = ""   # time-limited HTTP GET URL; empty for local files
    sha256: str = ""          # hex SHA-256 of the object's bytes
    bytes: int = 0            # object size
    width: int = 0            # pixels, for images
    height: int = 0           # pixels, for images
    content_type: str = ""    # e.g. "image/png"


@dataclass(frozen=True)
class Usage:
    """Token and time accounting of one request."""

    prompt_tokens: int = 0
    uncond_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    images: int = 0
    queue_seconds: float = 0.0
    first_token_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True)
class TextDelta:
    """New text (incremental, UTF-8 complete) on a channel: "text", "global_cot" or "image_cot"."""

    text: str
    channel: str = "text"


@dataclass(frozen=True)
class ImageStarted:
    """Image ``index`` (0-based) began: h rows of w tokens (16h x 16w pixels)."""

    index: int
    h: int
    w: int


@dataclass(frozen=True)
class ImageProgress:
    """Token rows of image ``index`` generated so far."""

    index: int
    rows_done: int
    rows_total: int


@dataclass(frozen=True)
class ImageReady:
    """Image ``index`` is stored as a PNG."""

    index: int
    ref: ResultRef


@dataclass(frozen=True)
class Finished:
    """The last event of a successful stream."""

    reason: str                   # "stop", "length", "aborted" or "error"
    usage: Usage
    story: ResultRef | None       # reference-compatible emu3p5.story.Story protobuf
    manifest: ResultRef | None    # JSON manifest, written last
    incomplete_image: bool        # the budget ran out inside an image (not returned)
    seed: int                     # the seed used (the server's pick when none was sent)


Event = TextDelta | ImageStarted | ImageProgress | ImageReady | Finished


@dataclass(frozen=True)
class EngineLoad:
    """The generator's load now, summed over its replicas."""

    replicas: int          # generator replicas reporting
    waiting: int           # requests queued, not admitted yet
    running: int           # requests generating
    kv_blocks_used: int    # paged-KV blocks held by running requests
    kv_blocks_total: int   # paged-KV blocks of all replicas
    max_waiting: int       # queue bound: beyond it Generate raises ResourceExhausted


@dataclass(frozen=True)
class Health:
    """Readiness of the gateway and of each stage behind it, and the generator's load."""

    ready: bool
    stages: Mapping[str, bool] = field(default_factory=dict)
    load: EngineLoad | None = None  # None: the server could not read it (or is older)


@dataclass(frozen=True)
class ServerInfo:
    """What a deployment serves, and its request limits."""

    version: str
    tasks: tuple[str, ...]
    max_prompt_chars: int
    max_images: int
    max_image_bytes: int
    context_length: int
    load: EngineLoad | None = None  # None: the server could not read it (or is older)


@dataclass(frozen=True)
class ModelInfo:
    """One served model; pass ``name`` as ``generate(model=...)``."""

    name: str
    checkpoint: str
    vocab_size: int
