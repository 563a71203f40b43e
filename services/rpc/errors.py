"""Domain errors -> gRPC status codes, in one place. Caller errors name the public field;
internal errors say only "internal error" with an id to quote, and their cause is logged
under that id. No stack trace, pid, path or actor id ever reaches a caller."""
from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

import grpc

from services.engine.request import RequestError
from services.engine.scheduler import QueueFull

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"   # trailing metadata: how long to wait before retrying
DEFAULT_RETRY_AFTER_S = 1.0          # when the engine gives no hint
QUOTE_CHARS = 40                     # at most this much of a bad value is quoted back

# Exception class names (anywhere in the MRO) that mean a stage replica went away: retryable.
_UNAVAILABLE_NAMES = frozenset({"RayActorError", "ActorDiedError", "ActorUnavailableError",
                                "DeploymentUnavailableError", "WorkerCrashedError",
                                "NodeDiedError", "ObjectLostError"})
# Codes whose details a stage writes for the caller (they name public fields). UNAVAILABLE,
# CANCELLED and DEADLINE_EXCEEDED keep their code with a plain message (a channel's details
# name internal addresses); any other code (UNKNOWN, INTERNAL, ...) becomes INTERNAL.
_PASS_THROUGH = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED,
                           grpc.StatusCode.ALREADY_EXISTS})
_PLAIN = {grpc.StatusCode.CANCELLED: "cancelled",
          grpc.StatusCode.DEADLINE_EXCEEDED: "a stage did not answer in time"}


class InvalidArgument(ValueError):
    """A request field is invalid (the message names the public field)."""


class NotFound(LookupError):
    """A named thing (a model) does not exist here (the message names the field)."""


class Unimplemented(Exception):
    """A valid value the server does not serve yet (the message names the field)."""


class Unavailable(RuntimeError):
    """A stage behind the gateway cannot be reached."""


class StageFailed(RuntimeError):
    """A stage ended a request with an error (e.g. an engine Finished with reason "error");
    the message is internal: it is logged, never sent."""


@dataclass(frozen=True)
class Status:
    """What a caller sees: code, message and trailing metadata (a retry hint)."""

    code: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, str], ...] = ()


class PublicError(Exception):
    """An exception already turned into its public status (raised by the gateway, so the
    stage shim and the tests apply it as is)."""

    def __init__(self, status: Status):
        super().__init__(status.message)
        self.status = status

    def __reduce__(self):  # Ray sends exceptions between processes by pickle
        return PublicError, (self.status,)


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a short prefix of a bad value: never echo a megabyte back."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"
    return repr(value)


# The engine's record names -> the public fields (a message names what the caller sent).
_PUBLIC_NAMES = (("text.", "text_sampling."), ("image.", "image_sampling."),
                 ("stop:", "stop_at_image_end:"), ("output_grid:", "size:"))


def public_names(message: str) -> str:
    """A message that starts with an engine field name starts with the public one."""
    for inner, public in _PUBLIC_NAMES:
        if message.startswith(inner):
            return public + message[len(inner):]
    return message


def retry_after_s(exc: BaseException) -> float:
    """The engine's retry hint (``QueueFull.retry_after_s``), or the default."""
    hint = getattr(exc, "retry_after_s", None)
    if isinstance(hint, (int, float)) and math.isfinite(hint) and hint > 0:
        return float(hint)
    return DEFAULT_RETRY_AFTER_S


def status_of(exc: BaseException, request_id: str = "") -> Status:
    """The public status for an exception raised while serving ``request_id``."""
    if isinstance(exc, PublicError):
        return exc.status
    if isinstance(exc, QueueFull):
        wait = retry_after_s(exc)
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"server busy: {exc}; retry in {wait:.1f} s",
                      ((RETRY_AFTER_KEY, str(max(1, round(wait * 1000)))),))
    if type(exc).__name__ == "AlreadyExists":  # services.storage: a request_id used again
        return Status(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, InvalidArgument):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, RequestError):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, public_names(str(exc)))
    if isinstance(exc, NotFound):
        return Status(grpc.StatusCode.NOT_FOUND, str(exc.args[0]) if exc.args else "not found")
    if isinstance(exc, Unimplemented):
        return Status(grpc.StatusCode.UNIMPLEMENTED, str(exc))
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
    if code in _PASS_THROUGH:
        return Status(code, public_names(exc.details() or code.name), _retry_trailers(exc))
    if code in _PLAIN:
        return Status(code, _PLAIN[code])
    if (isinstance(exc, Unavailable) or code == grpc.StatusCode.UNAVAILABLE
            or _names(exc) & _UNAVAILABLE_NAMES):
        return _unavailable(exc, request_id)
    if type(exc).__name__ == "ObjectNotFound":
        return Status(grpc.StatusCode.NOT_FOUND, str(exc))
    return internal(exc, request_id)


def internal(exc: BaseException, request_id: str = "") -> Status:
    """INTERNAL with an error id; the cause is logged under the same id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s (request %s): %s: %s", error_id, request_id or "-",
              type(exc).__name__, _stage_details(exc), exc_info=exc)
    where = f"request {request_id}, " if request_id else ""
    return Status(grpc.StatusCode.INTERNAL, f"internal error ({where}error id {error_id})")


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) of :func:`status_of` (no request id)."""
    status = status_of(exc)
    return status.code, status.message


def public_error(exc: BaseException, request_id: str = "") -> PublicError:
    """``exc`` as its public status, logged once if internal."""
    return exc if isinstance(exc, PublicError) else PublicError(status_of(exc, request_id))


def apply_status(context, exc: BaseException, request_id: str = "") -> None:
    """Set the status on a servicer context (grpc.aio or Ray Serve's gRPC context)."""
    status = status_of(exc, request_id)
    context.set_code(status.code)
    context.set_details(status.message)
    if status.trailers and hasattr(context, "set_trailing_metadata"):
        context.set_trailing_metadata(list(status.trailers))


def _unavailable(exc: BaseException, request_id: str) -> Status:
    log.warning("stage unavailable (request %s): %s: %s", request_id or "-",
                type(exc).__name__, exc)
    return Status(grpc.StatusCode.UNAVAILABLE, "a stage of the server is unavailable; retry "
                  "later", ((RETRY_AFTER_KEY, "1000"),))


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _retry_trailers(exc: grpc.aio.AioRpcError) -> tuple[tuple[str, str], ...]:
    md = exc.trailing_metadata() or ()
    return tuple((k, v) for k, v in md if k == RETRY_AFTER_KEY and isinstance(v, str))


def _stage_details(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
