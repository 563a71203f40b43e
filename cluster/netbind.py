"""Local mode listens on loopback only (DESIGN.md §7): Ray's own servers and Serve's proxies.

Ray's internal servers (GCS, raylet node manager and object manager, core-worker RPC in the
driver and every worker, dashboard agent HTTP/gRPC and metrics export, runtime-env agent,
autoscaler and dashboard-head metrics) all bind to 127.0.0.1 when, and only when, the node's IP
address *is* 127.0.0.1; otherwise they bind 0.0.0.0 / [::]. Ray 2.60's C++ servers take
``listen_to_localhost_only = (node_ip_address == "127.0.0.1")`` (gcs_server.cc,
core_worker.cc, node_manager.cc -> GrpcServer::Run), and its Python agents pick
``get_localhost_ip() if is_localhost(node_ip) else <all interfaces>`` (dashboard/agent.py,
dashboard/head.py, autoscaler/_private/monitor.py, runtime_env/agent/main.py).

But ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: ray.init passes it through
``services.resolve_ip_for_localhost``, which swaps a loopback address for the machine's
routable IP unless ``ray_constants.ENABLE_RAY_CLUSTER`` is false. That flag comes from
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (default true on Linux); setting it to 0 declares a
single-node cluster, which local mode is, and then the node IP stays 127.0.0.1.

Ray Serve binds two gRPC servers to ``[::]`` (every interface) with no option to change it:
its gRPC proxy (grpc_util.py: ``add_grpc_address(server, f"[::]:{port}")``) and, in every
replica, the inter-deployment server (replica.py: ``add_port_to_grpc_server(self._server,
"[::]:0")``). The worker setup hook ``bind_serve_grpc`` (installed through the job's
runtime_env) rebinds the proxy to the requested host, and in local mode the replicas' servers
to loopback, inside every Ray worker process.

The same hook (``setup_worker``) also shapes Serve's public gRPC server (proxy.py), all for
Ray 2.60 (pinned; each patch names the Serve internals it relies on):

- ``grpc.max_receive_message_length`` just above the largest legal request
  (``max_request_bytes``) instead of Serve's 2 GiB (constants.DEFAULT_GRPC_SERVER_OPTIONS,
  read by grpc_util.gRPCGenericServer): gRPC refuses a larger message from its length prefix
  with RESOURCE_EXHAUSTED naming both sizes, before buffering it.
- requests reach the ingress as raw bytes (the method handlers' request deserializer removed in
  ``gRPCGenericServer._override_method_handler``): the gateway parses them and answers
  malformed protobuf with INVALID_ARGUMENT, where gRPC's own deserializer failure is a bare
  UNKNOWN/INTERNAL.
- a cancelled call always cancels the replica's work (``mend_stream_close``, the cause found
  for issue 11 item 2, and ``mend_response_cancel``, a smaller window): see there.
- the proxy's own statuses carry no Ray internals (``mend_public_statuses``): a lost gateway
  replica is UNAVAILABLE (retryable), an unexpected error INTERNAL with the request id only.
"""
from __future__ import annotations

import contextvars
import ipaddress
import os
import sys

ENV = "EMU35_GRPC_BIND_HOST"
MENDED_RAY = "2.60.0"  # the Ray whose Serve internals the mends below were written against
MAX_MESSAGE_ENV = "EMU35_GRPC_MAX_MESSAGE_BYTES"
REPLICA_MESSAGE_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"  # Serve's, between replicas
MESSAGE_SLACK = 64 << 10  # field tags, lengths, sampling and size fields, metadata
RAY_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keep_ray_on_loopback() -> None:
    """Make the Ray node started next (ray.init) use 127.0.0.1 as its IP, so every Ray listener
    binds loopback. Call before ray.init; the variable also reaches Ray's child processes."""
    os.environ[RAY_SINGLE_NODE_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray was imported already: the flag was read at import time
        constants.ENABLE_RAY_CLUSTER = False


def max_request_bytes(limits) -> int:
    """The largest legal GenerateRequest (services.rpc.validation.Limits) plus slack: every
    image at its byte limit and the prompt at its character limit in 4-byte UTF-8."""
    return limits.max_images * limits.max_image_bytes + 4 * limits.max_prompt_chars + MESSAGE_SLACK


def setup_worker() -> None:
    """Worker setup hook (every Ray worker of the job, Serve's proxy included)."""
    bind_serve_grpc()
    shape_public_server()
    mend_stream_close()
    mend_response_cancel()
    mend_public_statuses()


def shape_public_server() -> None:
    """Serve's public gRPC server: the message size bound, and raw request bytes."""
    from ray.serve._private import grpc_util

    limit = int(os.environ.get(MAX_MESSAGE_ENV, "0"))
    if limit > 0:
        grpc_util.DEFAULT_GRPC_SERVER_OPTIONS = [
            (k, limit if k == "grpc.max_receive_message_length" else v)
            for k, v in grpc_util.DEFAULT_GRPC_SERVER_OPTIONS]
    cls = grpc_util.gRPCGenericServer
    if getattr(cls, "_emu35_raw_requests", False):
        return
    override = cls._override_method_handler

    def raw_requests(self, service_method, method_handler):
        return override(self, service_method, method_handler)._replace(request_deserializer=None)

    cls._override_method_handler = raw_requests
    cls._emu35_raw_requests = True


_TRACKED = contextvars.ContextVar("emu35_proxy_responses", default=None)


def mend_stream_close() -> None:
    """Ray 2.60's gRPC proxy forgets a stream the client cancels between two messages.

    The proxy's streaming handler (proxy.py ``gRPCProxy.send_request_to_replica``) is an async
    generator that grpc.aio iterates, writing each message it yields. When the client cancels
    while the handler is suspended at ``yield result`` (after a message, before the next
    read), grpc.aio closes the generator: GeneratorExit at that yield, not CancelledError
    inside the read. Only the read (ProxyResponseGenerator.__anext__) cancels the replica's
    response on CancelledError; the ``except BaseException`` around the yield just logs
    "Request failed due to unexpected error ... GeneratorExit". So the ingress replica (our
    gateway, and through it the generator) is never cancelled and generates to the end:
    measured as 5 of 30 cancellations 0.2-0.35 s after the start lost, each logged with that
    GeneratorExit and no CANCELLED access-log line. The mend wraps the handler: the
    responses it opens are tracked, and if it ends other than by running out (closed,
    cancelled, failed), the unfinished ones are cancelled.
    """
    from ray.serve._private import proxy

    if getattr(proxy.gRPCProxy, "_emu35_close_mended", False):
        return

    class TrackedResponseGenerator(proxy.ProxyResponseGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened = _TRACKED.get()
            if opened is not None:
                opened.append(self)

    proxy.ProxyResponseGenerator = TrackedResponseGenerator
    proxy.gRPCProxy.send_request_to_replica = cancel_on_close(proxy.gRPCProxy.send_request_to_replica)
    proxy.gRPCProxy._emu35_close_mended = True


def cancel_on_close(send):
    """``send`` (an async generator function) whose unfinished responses are cancelled when
    it stops early. The list lives in a context variable: an async generator runs in the
    context of the task that iterates it, so the responses it creates find it."""

    async def send_cancelling_on_close(*args, **kwargs):
        opened: list = []
        _TRACKED.set(opened)
        ran_out = False
        inner = send(*args, **kwargs)
        try:
            async for message in inner:
                yield message
            ran_out = True
        finally:
            if not ran_out:
                for response in opened:
                    if not response._done and not response.cancelled():
                        response._response.cancel()
                try:  # Ray's handler yields a status after GeneratorExit; nobody reads it
                    await inner.aclose()
                except RuntimeError:
                    pass

    return send_cancelling_on_close


def mend_public_statuses() -> None:
    """Ray 2.60's proxy answers a lost ingress replica (RayActorError) and any unexpected error
    with INTERNAL and ``str(exc)``: actor ids, pids, addresses and tracebacks reach the client
    (grpc_util.get_grpc_response_status, used by name in proxy.py). Keep Serve's statuses
    otherwise (timeouts, cancels, back-pressure, the gateway's own statuses)."""
    import grpc
    from ray.exceptions import RayActorError
    from ray.serve._private import proxy
    from ray.serve._private.proxy_request_response import ResponseStatus
    from ray.serve.exceptions import gRPCStatusError

    serve_status = proxy.get_grpc_response_status
    if getattr(serve_status, "_emu35", False):
        return

    def public_status(exc, request_timeout_s, request_id):
        if isinstance(exc, gRPCStatusError) and exc.grpc_code not in (
                grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            # The gateway's own answer to a caller error or overload: pass it on without
            # Serve's traceback log line, which under a burst of refusals costs the proxy
            # more than the refusals themselves.
            return ResponseStatus(code=exc.grpc_code, is_error=True,
                                  message=(exc.grpc_details or exc.grpc_code.name)[:4096])
        status = serve_status(exc, request_timeout_s, request_id)
        cause = exc.original_exception if isinstance(exc, gRPCStatusError) else exc
        if isinstance(cause, RayActorError):
            return ResponseStatus(code=grpc.StatusCode.UNAVAILABLE, is_error=True,
                                  message="gateway unavailable (its replica was lost); retry "
                                          "the request")
        if status.code == grpc.StatusCode.INTERNAL and not isinstance(exc, gRPCStatusError):
            return ResponseStatus(code=grpc.StatusCode.INTERNAL, is_error=True,
                                  message=f"internal error (request {request_id})")
        return status

    public_status._emu35 = True
    proxy.get_grpc_response_status = public_status


def mend_response_cancel() -> None:
    """Ray 2.60 loses a cancel that lands between assignment and first read (issue 11 item 2).

    In Serve's proxy the router runs on the caller's loop. ``_DeploymentResponseBase.cancel``
    (serve/handle.py) then cancels ``_replica_result_future`` and, only when it is already
    stored, ``_replica_result``. But the result is stored lazily, by whoever next awaits the
    response (``_fetch_future_result_async``), and the proxy's streaming read
    (proxy_response_generator.py ``_get_next_streaming_result``) leaves that read running when
    the client goes away. A cancel after the router has assigned the request (the future is
    done, so cancelling it does nothing) but before the read stored the result cancels
    nothing: the replica (the gateway, and so the generator) keeps generating to the end.
    The mend: when cancel finds no stored result, cancel the result the future holds or will
    hold. Harmless when the original cancel already reached it (cancelling twice is a no-op).
    """
    from ray.serve import handle

    cls = handle._DeploymentResponseBase
    if getattr(cls, "_emu35_cancel_mended", False):
        return
    cancel = cls.cancel

    def cancel_assigned_too(self) -> None:
        first = not self._cancelled
        cancel(self)
        if first and self._replica_result is None and not self._is_router_running_in_separate_loop:
            self._replica_result_future.add_done_callback(_cancel_assigned)

    cls.cancel = cancel_assigned_too
    cls._emu35_cancel_mended = True


def _cancel_assigned(future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().cancel()


def bind_serve_grpc() -> None:
    """Worker setup hook: Serve's gRPC proxy on ``$EMU35_GRPC_BIND_HOST``; in local mode the
    replicas' inter-deployment servers on 127.0.0.1, the node IP other replicas dial."""
    host = os.environ.get(ENV, "127.0.0.1")
    from ray.serve._private import default_impl, replica

    def on(bind_host: str, address: str) -> str:
        port = address.rsplit(":", 1)[1]
        return f"[{bind_host}]:{port}" if ":" in bind_host else f"{bind_host}:{port}"

    def add_grpc_address(grpc_server, server_address: str) -> None:
        grpc_server.add_insecure_port(on(host, server_address))

    default_impl.add_grpc_address = add_grpc_address
    if is_loopback(host):  # otherwise Ray's default bind stays, matching its node IP
        add_port = replica.add_port_to_grpc_server  # keeps Ray's TLS handling (RAY_USE_TLS)
        replica.add_port_to_grpc_server = lambda server, addr: add_port(server,
                                                                        on("127.0.0.1", addr))
