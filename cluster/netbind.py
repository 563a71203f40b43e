"""Keep Ray Serve's gRPC proxy on loopback in local mode.

Ray Serve 2.x binds its gRPC proxy to ``[::]:port`` (every interface) with no option to change
it; local mode must listen on 127.0.0.1 only. This worker setup hook, installed through the
job's runtime_env, rebinds the proxy's listening address inside every Ray worker process.
"""
from __future__ import annotations

import os

ENV = "EMU35_GRPC_BIND_HOST"


def bind_loopback() -> None:
    host = os.environ.get(ENV, "127.0.0.1")
    from ray.serve._private import default_impl

    def add_grpc_address(grpc_server, server_address: str) -> None:
        port = server_address.rsplit(":", 1)[1]
        grpc_server.add_insecure_port(f"{host}:{port}")

    default_impl.add_grpc_address = add_grpc_address
