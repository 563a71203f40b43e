"""Client tests run against the source tree's clients/ (the package is installed separately
from emu35-serve), a fake gateway on 127.0.0.1 and a local HTTP file server."""
from __future__ import annotations

import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
if str(CLIENTS) not in sys.path:
    sys.path.insert(0, str(CLIENTS))

from .fake_gateway import FakeGateway, start


@pytest.fixture
def gateway(tmp_path):
    fake = FakeGateway(tmp_path / "store")
    server = start(fake)
    yield fake
    server.stop(None)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_store(gateway):
    """Serve the gateway's store over HTTP; refs then carry presigned http URLs."""
    handler = functools.partial(_QuietHandler, directory=str(gateway.store))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    gateway.http_base = f"http://127.0.0.1:{server.server_address[1]}"
    yield gateway
    server.shutdown()
    server.server_close()
