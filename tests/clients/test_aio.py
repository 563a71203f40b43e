"""AsyncClient: the same behaviour as the sync client, driven by asyncio.run (no plugin)."""
from __future__ import annotations

import asyncio
import gc

import pytest
from emu35_client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    Emu35Error,
    ImageProgress,
    ImageStarted,
    InvalidArgument,
    Unauthenticated,
)

from .fake_gateway import REQUEST_ID
from .test_client import CODES, TRACEPARENT


def _run(coro_fn, gateway, **kwargs):
    async def main():
        async with AsyncClient(gateway.target, **kwargs) as client:
            return await coro_fn(client)
    return asyncio.run(main())


async def _collect(stream):
    return [event async for event in stream]


def test_events_match_the_sync_client(gateway):
    async def go(client):
        stream = client.generate("t2i", "images:2", seed=3)
        return await _collect(stream), stream.request_id

    events, request_id = _run(go, gateway)
    with Client(gateway.target) as client:
        assert events == list(client.generate("t2i", "images:2", seed=3))
    assert request_id == REQUEST_ID and events[-1].seed == 3
    assert sum(isinstance(e, ImageStarted) for e in events) == 2


def test_metadata_and_unary_calls(gateway):
    gateway.api_key = "k"

    async def go(client):
        await _collect(client.generate("t2i", "p", traceparent=TRACEPARENT))
        return (await client.health(traceparent=TRACEPARENT), await client.info(),
                await client.list_models())

    health, info, models = _run(go, gateway, api_key="k")
    assert health.ready and info.version == "0.1.0-fake" and models[0].name == "emu3.5"
    assert all(md["authorization"] == "Bearer k" for md in gateway.metadata)
    assert [md.get("traceparent") for md in gateway.metadata] == [TRACEPARENT, TRACEPARENT,
                                                                  None, None]


@pytest.mark.parametrize("code, cls", CODES, ids=[c.name for c, _ in CODES])
def test_status_maps_to_exception(gateway, code, cls):
    gateway.unary_error = (code, "unary says no")

    async def go(client):
        with pytest.raises(cls) as stream_err:
            await _collect(client.generate("t2i", f"abort:{code.name}:stream says no"))
        with pytest.raises(cls) as unary_err:
            await client.info()
        return stream_err.value, unary_err.value

    stream_err, unary_err = _run(go, gateway)
    assert type(stream_err) is cls and isinstance(stream_err, Emu35Error)
    assert (stream_err.code, stream_err.details) == (code, "stream says no")
    assert str(unary_err) == f"{code.name}: unary says no"


def test_unauthenticated_and_local_argument_errors(gateway):
    gateway.api_key = "k"

    async def go(client):
        with pytest.raises(Unauthenticated):
            await client.health()
        with pytest.raises(InvalidArgument, match="seed"):
            client.generate("t2i", "p", seed="7")

    _run(go, gateway)


def test_deadline_exceeded(gateway):
    gateway.unary_delay = 5

    async def go(client):
        with pytest.raises(DeadlineExceeded):
            await _collect(client.generate("t2i", "silent", timeout=0.2))
        with pytest.raises(DeadlineExceeded):
            await client.list_models()

    _run(go, gateway, default_timeout=0.2)


def test_task_cancel_cancels_the_rpc(gateway):
    async def go(client):
        started = asyncio.Event()

        async def consume():
            async for event in client.generate("t2i", "endless"):
                if isinstance(event, ImageProgress):
                    started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    _run(go, gateway)
    assert gateway.cancelled.wait(5)


def test_aclose_cancels_the_rpc_and_ends_iteration(gateway):
    async def go(client):
        stream = client.generate("t2i", "endless")
        assert isinstance(await stream.__anext__(), ImageStarted)
        await stream.aclose()
        return await _collect(stream)

    assert _run(go, gateway) == []
    assert gateway.cancelled.wait(5)


def test_async_with_block_cancels_on_break(gateway):
    async def go(client):
        async with client.generate("t2i", "endless") as stream:
            async for event in stream:
                if isinstance(event, ImageProgress) and event.rows_done >= 3:
                    break

    _run(go, gateway)
    assert gateway.cancelled.wait(5)


def test_break_out_of_a_dropped_stream_cancels_the_rpc(gateway):
    async def go(client):
        async for event in client.generate("t2i", "endless"):
            if isinstance(event, ImageProgress):
                break
        gc.collect()  # CPython drops the stream at once; other interpreters may need a collection

    _run(go, gateway)
    assert gateway.cancelled.wait(5)


def test_cancel_from_another_task_ends_the_reader_quietly(gateway):
    async def go(client):
        stream = client.generate("t2i", "endless")
        await stream.__anext__()
        reader = asyncio.create_task(_collect(stream))
        await asyncio.sleep(0.05)
        stream.cancel()
        events = await asyncio.wait_for(reader, 5)
        assert events and all(isinstance(e, ImageProgress) for e in events)

    _run(go, gateway)
    assert gateway.cancelled.wait(5)
