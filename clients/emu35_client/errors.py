"""Typed exceptions: one class per gRPC status code a caller is expected to handle.

Every error the client raises is an ``Emu35Error`` with ``.code`` (a ``grpc.StatusCode``) and
``.details`` (the server's message, naming the field at fault); ``str(e)`` is
``"CODE: details"``. Bad arguments caught before any RPC raise ``InvalidArgument`` too.
"""
from __future__ import annotations

import grpc


class Emu35Error(Exception):
    """Base class; also raised as is for status codes without a class of their own."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None,
                 retry_after_s: float | None = None):
        super().__init__(details)
        self.details = details
        self.retry_after_s = retry_after_s  # the server's hint (``retry-after-ms``), if any
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgument(Emu35Error, ValueError):
    """A request field is invalid (also raised locally, before the RPC)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(Emu35Error):
    """The server's queue is full or a limit was hit; retry later with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(Emu35Error):
    """A download answered HTTP 401. Reserved for API keys: the server does not check them yet."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(Emu35Error):
    """Refused: e.g. an expired presigned URL (HTTP 403)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(Emu35Error):
    """A named model, job or object does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class Unimplemented(Emu35Error):
    """A valid value the server does not serve yet (e.g. ``decode_mode="dida"``)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(Emu35Error):
    """The server (or a stage behind it) cannot be reached; usually transient."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(Emu35Error):
    """The call's deadline (``timeout``) passed before it finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(Emu35Error):
    """The call was cancelled by the server side (a cancel by this caller ends quietly)."""

    code = grpc.StatusCode.CANCELLED


class Internal(Emu35Error):
    """A server fault; the details carry an error id to quote (the cause is in its log)."""

    code = grpc.StatusCode.INTERNAL


class IntegrityError(Emu35Error):
    """A downloaded object's bytes do not match its ResultRef's sha256 or size."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[Emu35Error]] = {
    cls.code: cls for cls in (InvalidArgument, ResourceExhausted, Unauthenticated,
                              PermissionDenied, NotFound, Unimplemented, Unavailable,
                              DeadlineExceeded, Cancelled, Internal)
}


RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata the server sets with its retry hint


def error_from_rpc(error: grpc.RpcError) -> Emu35Error:
    """The typed exception for a failed call (``grpc.RpcError``, sync or aio)."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    code = code or grpc.StatusCode.UNKNOWN
    details = (error.details() if callable(getattr(error, "details", None)) else None) or code.name
    return _BY_CODE.get(code, Emu35Error)(details, code, _retry_after_s(error))


def _retry_after_s(error: grpc.RpcError) -> float | None:
    trailing = getattr(error, "trailing_metadata", None)
    try:
        md = trailing() if callable(trailing) else None
        for key, value in md or ():
            if key == RETRY_AFTER_KEY:
                ms = int(value)
                return ms / 1000 if 0 < ms <= 3_600_000 else None
    except (TypeError, ValueError):
        pass
    return None
