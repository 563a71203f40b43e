"""Stage messages on Ray Serve's inter-deployment transport (issue 11 item 1).

The stages are no gRPC services on any port: the gateway calls them through Serve deployment
handles over Ray's gRPC transport between replicas, passing the *serialized* protobuf messages
(bytes in, bytes out). A stage's failure travels as ``StageFailure`` (a picklable status code
name and caller-safe details) and becomes a gRPC status again on the gateway's side.
"""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError, Message

from emu35_proto.v1 import stages_pb2

from .errors import InvalidArgument, status_of


class StageFailure(Exception):
    """A stage's non-OK answer: ``code`` is a grpc.StatusCode name, ``details`` safe to show."""

    def __init__(self, code: str, details: str, trailers: tuple = ()):
        super().__init__(code, details, trailers)
        self.code, self.details, self.trailers = code, details, tuple(trailers)

    def __str__(self) -> str:
        return f"{self.code}: {self.details}"


def failure_of(exc: BaseException) -> StageFailure:
    """The status a caller would see for ``exc`` (errors.status_for), as a StageFailure."""
    if isinstance(exc, StageFailure):
        return exc
    status = status_of(exc)  # its trailers carry a retry hint (RESOURCE_EXHAUSTED)
    return StageFailure(status.code.name, status.message, status.trailers)


def as_rpc_error(failure: StageFailure) -> grpc.aio.AioRpcError:
    """The gateway re-raises a stage's status as the RPC error status_for passes through."""
    code = getattr(grpc.StatusCode, failure.code, grpc.StatusCode.INTERNAL)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*failure.trailers),
                                failure.details)


def parse(cls: type[Message], data, what: str) -> Message:
    """Serialized bytes -> ``cls``; malformed bytes are the caller's error (INVALID_ARGUMENT)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"{what}: expected a serialized {cls.DESCRIPTOR.name}")
    try:
        return cls.FromString(bytes(data))
    except (DecodeError, ValueError):
        raise InvalidArgument(f"{what}: malformed {cls.DESCRIPTOR.name} protobuf message "
                              f"({len(data)} bytes)") from None


def encode_request(data) -> stages_pb2.EncodeRequest:
    return parse(stages_pb2.EncodeRequest, data, "EncodeRequest")


def generator_request(data) -> stages_pb2.GeneratorRequest:
    return parse(stages_pb2.GeneratorRequest, data, "GeneratorRequest")


def decode_request(data) -> stages_pb2.DecodeRequest:
    return parse(stages_pb2.DecodeRequest, data, "DecodeRequest")


def encode_response(data) -> stages_pb2.EncodeResponse:
    return parse(stages_pb2.EncodeResponse, data, "EncodeResponse")


def generator_event(data) -> stages_pb2.GeneratorEvent:
    return parse(stages_pb2.GeneratorEvent, data, "GeneratorEvent")


def decode_response(data) -> stages_pb2.DecodeResponse:
    return parse(stages_pb2.DecodeResponse, data, "DecodeResponse")
