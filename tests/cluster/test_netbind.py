"""Local mode's loopback decision (the listeners themselves: test_serve_e2e.py)."""
from __future__ import annotations

import os
import sys

import pytest

from cluster import netbind


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("example.org", False),
])
def test_is_loopback(host, loopback):
    assert netbind.is_loopback(host) is loopback


def test_keep_ray_on_loopback_sets_the_single_node_flag(monkeypatch):
    """Before ray is imported the variable does it; after, the already-read flag is set too
    (ray.init would otherwise swap 127.0.0.1 for the machine's routable address)."""
    monkeypatch.delenv(netbind.RAY_SINGLE_NODE_ENV, raising=False)
    constants = pytest.importorskip("ray._private.ray_constants")
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", True)
    netbind.keep_ray_on_loopback()
    assert os.environ[netbind.RAY_SINGLE_NODE_ENV] == "0"
    assert sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER is False
    from ray._private import services
    assert services.get_node_ip_address() == "127.0.0.1"


def test_cancel_reaches_a_request_assigned_but_not_yet_read():
    """Ray 2.60's same-loop cancel (Serve's proxy) cancels nothing when the router has
    assigned the request but no read has stored the result yet; mended in the setup hook."""
    import asyncio

    from ray.serve.handle import DeploymentResponseGenerator

    netbind.mend_response_cancel()

    class Result:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    async def scenario() -> bool:
        future, result = asyncio.get_running_loop().create_future(), Result()
        future.set_result(result)  # assigned: the request runs on a replica
        response = DeploymentResponseGenerator(future, request_metadata=None,
                                               _is_router_running_in_separate_loop=False)
        response.cancel()  # the client went away before any read stored the result
        await asyncio.sleep(0)
        return result.cancelled

    assert asyncio.run(scenario())


def test_a_stream_closed_between_messages_cancels_its_response():
    """Ray 2.60's gRPC proxy handler closed at ``yield`` (the client cancelled between two
    messages) left the replica's response running; mended in the setup hook."""
    import asyncio

    from ray.serve._private import proxy

    netbind.mend_stream_close()

    class Response:
        cancelled_ = False

        def cancel(self):
            self.cancelled_ = True

        def cancelled(self):
            return self.cancelled_

    response = Response()

    async def handler():  # the shape of gRPCProxy.send_request_to_replica
        stream = proxy.ProxyResponseGenerator(response)
        try:
            for i in range(10):
                yield i
        except BaseException:
            pass  # Ray logs "unexpected error" here and never cancels `stream`
        _ = stream

    async def client_cancels_after_one_message():
        gen = netbind.cancel_on_close(handler)()
        assert await gen.__anext__() == 0
        await gen.aclose()  # grpc.aio closes the handler when the client cancels

    asyncio.run(client_cancels_after_one_message())
    assert response.cancelled_


def test_the_serve_mends_match_the_installed_ray():
    """The setup hook patches Serve internals of one Ray version: a Ray upgrade must review
    them (and drop those its Serve fixed) before this passes again."""
    import ray

    assert ray.__version__ == netbind.MENDED_RAY
