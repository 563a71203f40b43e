"""``StageClients`` over Ray Serve deployment handles (the gateway's side of the stage calls).

Each call sends the serialized request over Serve's gRPC transport between replicas
(``_by_reference=False``) and parses the serialized answer. What the caller sees:

- a stage's own status (``StageFailure``) passes through unchanged (as an RPC error);
- a lost replica (actor died or unreachable, the transport broke mid-stream) is UNAVAILABLE,
  retryable, without Ray's internals in the message;
- Serve's router refusing more work is RESOURCE_EXHAUSTED.

A call the gateway stops waiting for (the client cancelled, an error elsewhere) is cancelled
on the stage too: the response is cancelled in a ``finally``, which for Generate aborts the
engine request and frees its KV.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from services.rpc import stage_wire as wire
from services.rpc.errors import Unavailable
from services.rpc.gateway import StageClients

log = logging.getLogger(__name__)


def _transport_options(handle, method: str, stream: bool = False):
    return handle.options(method_name=method, stream=stream, _by_reference=False)


class HandleStages(StageClients):
    def __init__(self, encoder, generator, decoder):
        self._encode = _transport_options(encoder, "Encode")
        self._generate = _transport_options(generator, "Generate", stream=True)
        self._decode = _transport_options(decoder, "Decode")

    async def encode(self, req, metadata):
        data = await _unary("encoder", self._encode, req.SerializeToString(), tuple(metadata))
        return wire.encode_response(data)

    async def decode(self, req, metadata):
        data = await _unary("decoder", self._decode, req.SerializeToString(), tuple(metadata))
        return wire.decode_response(data)

    async def generate(self, req, metadata):
        response = self._generate.remote(req.SerializeToString(), tuple(metadata))
        finished = False
        try:
            with translated("generator"):
                async for data in response:
                    event = wire.generator_event(data)
                    finished = event.HasField("finished")
                    yield event
        finally:
            if not finished:  # the client went away or failed: abort on the generator
                response.cancel()


async def _unary(stage: str, handle, *args):
    response = handle.remote(*args)
    done = False
    try:
        with translated(stage):
            result = await response
        done = True
        return result
    finally:
        if not done:
            response.cancel()


@contextlib.contextmanager
def translated(stage: str):
    """Map what a stage call raises to what the gateway answers (see the module doc)."""
    from ray import exceptions as ray_errors
    from ray.serve import exceptions as serve_errors

    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except serve_errors.RequestCancelledError:
        raise asyncio.CancelledError() from None
    except wire.StageFailure as e:  # also Ray's wrapper of it (a subclass of both)
        raise wire.as_rpc_error(wire.StageFailure(e.code, e.details)) from None
    except serve_errors.BackPressureError:
        raise wire.as_rpc_error(wire.StageFailure(
            "RESOURCE_EXHAUSTED", f"server busy: the {stage} stage is at capacity; retry later"
        )) from None
    except (ray_errors.RayActorError, ray_errors.ActorUnavailableError,
            serve_errors.DeploymentUnavailableError, grpc.RpcError) as e:
        log.warning("%s stage call lost its replica: %s", stage, type(e).__name__)
        raise Unavailable(f"{stage} stage unavailable (its replica was lost); retry the "
                          "request") from None
    except ray_errors.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, wire.StageFailure):
            raise wire.as_rpc_error(cause) from None
        log.error("%s stage failed: %s", stage, e)
        raise wire.as_rpc_error(wire.StageFailure(
            "INTERNAL", f"internal error in the {stage} stage")) from None
