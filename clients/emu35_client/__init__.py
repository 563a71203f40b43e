"""Python client for the emu35-serve gRPC API (package ``emu35.v1``): sync ``Client``,
asyncio ``AsyncClient``, typed events and typed exceptions, ``download`` for stored results.

    from emu35_client import Client, ImageReady, TextDelta, download

    with Client("127.0.0.1:9000") as client:
        for event in client.generate("t2i", "a red fox in the snow", size="16:9", seed=7):
            if isinstance(event, TextDelta):
                print(event.text, end="")
            elif isinstance(event, ImageReady):
                download(event.ref, f"out/{event.index:02d}.png")
"""
from .aio import AsyncClient, AsyncEventStream
from .client import Client, EventStream
from .download import download
from .retry import RetryPolicy
from .errors import (
    Cancelled,
    DeadlineExceeded,
    Emu35Error,
    IntegrityError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .types import (
    EngineLoad,
    Event,
    Finished,
    Guidance,
    Health,
    ImageProgress,
    ImageReady,
    ImageStarted,
    ModelInfo,
    ResultRef,
    Sampling,
    ServerInfo,
    TextDelta,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncEventStream",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "Emu35Error",
    "EngineLoad",
    "Event",
    "EventStream",
    "Finished",
    "Guidance",
    "Health",
    "ImageProgress",
    "ImageReady",
    "ImageStarted",
    "IntegrityError",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ResultRef",
    "RetryPolicy",
    "Sampling",
    "ServerInfo",
    "TextDelta",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "download",
]
