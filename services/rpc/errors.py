"""Domain errors -> gRPC status codes, in one place. Messages name the field; no stack traces
ever reach a caller."""
from __future__ import annotations

import logging

import grpc

from services.engine.request import RequestError
from services.engine.scheduler import QueueFull

log = logging.getLogger(__name__)


class InvalidArgument(ValueError):
    """A request field is invalid (message names the field)."""


class Unavailable(RuntimeError):
    """A stage behind the gateway cannot be reached."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a caller sees for an exception."""
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}"
    if isinstance(exc, (InvalidArgument, RequestError, ValueError)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):  # a stage's status passes through unchanged
        return exc.code(), exc.details() or exc.code().name
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if type(exc).__name__ == "AlreadyExists":  # services.storage: a request_id used again
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    if type(exc).__name__ == "ObjectNotFound":
        return grpc.StatusCode.NOT_FOUND, str(exc)
    log.exception("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"


def apply_status(context, exc: BaseException) -> None:
    """Set the status on a servicer context (grpc.aio or Ray Serve's gRPC context)."""
    code, message = status_for(exc)
    context.set_code(code)
    context.set_details(message)
