"""Client retries (opt-in): idempotent calls and a Generate that failed before its first event
are repeated on UNAVAILABLE / RESOURCE_EXHAUSTED with backoff honouring the server's hint;
everything else fails at once."""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from emu35_client import (AsyncClient, Client, Finished, InvalidArgument, ResourceExhausted,
                          RetryPolicy, Unavailable)

FAST = RetryPolicy(retries=3, base=0.01, cap=0.05)
BUSY = (grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: waiting queue full", 300)
DOWN = (grpc.StatusCode.UNAVAILABLE, "a stage is unavailable", None)


def test_no_retries_unless_asked(gateway):
    gateway.failures = [DOWN]
    with Client(gateway.target) as client, pytest.raises(Unavailable):
        client.health()
    assert len(gateway.metadata) == 1


def test_idempotent_calls_are_retried(gateway):
    gateway.failures = [DOWN, DOWN]
    with Client(gateway.target, retries=FAST) as client:
        assert client.info().version == "0.1.0-fake"
        assert len(gateway.metadata) == 3
        gateway.failures = [DOWN] * 4
        with pytest.raises(Unavailable):  # 1 + 3 retries, then the error
            client.list_models()
    assert len(gateway.metadata) == 3 + 4


def test_the_servers_retry_hint_is_honoured(gateway):
    gateway.failures = [BUSY]
    with Client(gateway.target, retries=FAST) as client:
        start = time.monotonic()
        assert client.health().ready
        waited = time.monotonic() - start
    assert waited >= 0.3  # the hint (300 ms), not the policy's 10-50 ms


def test_the_hint_reaches_the_exception(gateway):
    gateway.failures = [BUSY]
    with Client(gateway.target) as client, pytest.raises(ResourceExhausted) as info:
        list(client.generate("t2i", "p"))
    assert info.value.retry_after_s == 0.3


def test_other_codes_are_not_retried(gateway):
    gateway.failures = [(grpc.StatusCode.INVALID_ARGUMENT, "prompt: bad", None)]
    with Client(gateway.target, retries=FAST) as client, pytest.raises(InvalidArgument):
        client.info()
    assert len(gateway.metadata) == 1


def test_generate_is_retried_only_when_asked_and_before_any_event(gateway):
    gateway.failures = [BUSY, DOWN]
    with Client(gateway.target, retries=FAST) as client:
        with pytest.raises(ResourceExhausted):  # the client's retries cover unary calls only
            list(client.generate("t2i", "p"))
        events = list(client.generate("t2i", "p", retries=FAST))
    assert isinstance(events[-1], Finished) and len(gateway.metadata) == 3


def test_generate_is_not_retried_after_an_event(gateway):
    with Client(gateway.target) as client:
        stream = client.generate("t2i", "abort:UNAVAILABLE:gone", retries=FAST)
        with pytest.raises(Unavailable):
            list(stream)
        assert len(gateway.metadata) == 4  # no event came: retried 3 times, then raised
        stream = client.generate("t2i", "late:UNAVAILABLE:gone", retries=FAST)
        assert next(stream).text == "partial"
        with pytest.raises(Unavailable):
            next(stream)
    assert len(gateway.metadata) == 5  # an event came: never started again


def test_async_client_retries(gateway):
    async def main():
        gateway.failures = [DOWN, BUSY]
        async with AsyncClient(gateway.target, retries=FAST) as client:
            assert (await client.health()).ready
            gateway.failures = [DOWN]
            events = [e async for e in client.generate("t2i", "p", retries=FAST)]
        return events
    assert isinstance(asyncio.run(main())[-1], Finished)
    assert len(gateway.metadata) == 3 + 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_retries_argument(gateway, bad):
    with pytest.raises(InvalidArgument, match="retries"):
        Client(gateway.target, retries=bad)
