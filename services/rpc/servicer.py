"""Registration of the public Emu35 service with request parsing that never fails inside gRPC.

The generated ``add_Emu35Servicer_to_server`` parses requests in gRPC's deserializer, where a
malformed body becomes a status the servicer never sees (UNKNOWN or INTERNAL, no field). Here a
body that does not parse becomes a ``MalformedRequest`` that the gateway answers with
INVALID_ARGUMENT. Pass ``"services.rpc.servicer.add_emu35_servicer"`` to Serve's
``grpc_servicer_functions`` (or call it on a ``grpc.aio.server``) instead of the generated one.
"""
from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from emu35_proto.v1 import api_pb2

from .errors import InvalidArgument

SERVICE = "emu35.v1.Emu35"


@dataclass(frozen=True)
class MalformedRequest:
    """A request body that is not a valid protobuf of its type (picklable: Serve's proxy sends
    requests to replicas by value)."""

    message: str   # the expected message type, e.g. "GenerateRequest"
    reason: str    # the parser's short reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"request: not a valid {self.message} protobuf ({self.reason})")


def parse(cls, raw: bytes):
    """``cls.FromString(raw)``, or a MalformedRequest."""
    try:
        return cls.FromString(raw)
    except DecodeError as e:
        reason = "bad UTF-8 in a string field" if "UTF-8" in str(e) else "corrupt wire format"
        return MalformedRequest(cls.DESCRIPTOR.name, reason)
    except Exception:  # noqa: BLE001 - whatever the parser raises, the body is the caller's
        return MalformedRequest(cls.DESCRIPTOR.name, "unparsable")


def _lenient(cls):
    return lambda raw: parse(cls, raw)


def add_emu35_servicer(servicer, server) -> None:
    """Register ``servicer``'s Generate, Health, Info and ListModels on ``server``."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, request_deserializer=_lenient(api_pb2.GenerateRequest),
            response_serializer=api_pb2.GenerateEvent.SerializeToString),
        "Health": grpc.unary_unary_rpc_method_handler(
            servicer.Health, request_deserializer=_lenient(api_pb2.HealthRequest),
            response_serializer=api_pb2.HealthResponse.SerializeToString),
        "Info": grpc.unary_unary_rpc_method_handler(
            servicer.Info, request_deserializer=_lenient(api_pb2.InfoRequest),
            response_serializer=api_pb2.InfoResponse.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, request_deserializer=_lenient(api_pb2.ListModelsRequest),
            response_serializer=api_pb2.ListModelsResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register(SERVICE, handlers)
