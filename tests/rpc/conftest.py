"""Fixtures of the rpc tests: a synthetic tokenizer and a Gateway over fake stages."""
from __future__ import annotations

import asyncio

import pytest

from .fake_gateway_stages import make_gateway, tokenizer


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    return tokenizer(tmp_path_factory.mktemp("vocab"))


@pytest.fixture
def gateway(tmp_path, tok):
    return make_gateway(tmp_path, tok)


def run(gateway, pb, metadata=()):
    """All events of one Generate call (raises what the gateway raises)."""
    async def collect():
        return [ev async for ev in gateway.generate(pb, metadata)]
    return asyncio.run(collect())
