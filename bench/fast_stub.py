"""A minimal, fast findings stub: asyncio protocol + httptools parser on uvloop.

The FastAPI stub (``gateway stub``) costs about as much CPU per request as a bare
proxy, so with it every proxy row would partly measure the stub. This stub
answers ``GET /engagements/{id}/findings`` with the same JSON the FastAPI stub
serves for ``acme-2026`` (its seeded findings, re-labelled with the requested
engagement), ``GET /_health`` with ``{"status":"ok"}``, and 404 otherwise.
It is also the tracing rows' OTLP/HTTP collector: ``POST /v1/traces`` gets an
empty 200 (an empty ``ExportTraceServiceResponse``), the body read and dropped.
HTTP/1.1 keep-alive; bodies are read by the parser and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import cast

import httptools
import orjson
import uvloop

from app.stubs.data import seed_findings

_FINDINGS_PATH = re.compile(rb"^/engagements/([a-z0-9][a-z0-9-]{1,62})/findings$")
_TEMPLATE_ENGAGEMENT = "acme-2026"


def findings_body(engagement: str, seed: int = 7) -> bytes:
    items = [{**item, "engagement_id": engagement} for item in seed_findings(seed)["acme-2026"]]
    return orjson.dumps({"engagement_id": engagement, "items": items, "count": len(items)})


def _response(status: bytes, body: bytes) -> bytes:
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


class StubProtocol(asyncio.Protocol):
    """One connection: parse requests with httptools, answer from a cache."""

    cache: dict[bytes, bytes] = {}  # noqa: RUF012 - one process-wide response cache

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path = self.url.partition(b"?")[0]
        self.url = b""
        answer = self.cache.get(path)
        if answer is None:
            answer = self._answer(path)
            if len(self.cache) < 4096:  # bounded: the load uses a fixed pool of paths
                self.cache[path] = answer
        if self.transport:
            self.transport.write(answer)
            if not self.parser.should_keep_alive():
                self.transport.close()

    @staticmethod
    def _answer(path: bytes) -> bytes:
        if path == b"/_health":
            return _response(b"200 OK", b'{"status":"ok"}')
        if path == b"/v1/traces":
            return _response(b"200 OK", b"")
        match = _FINDINGS_PATH.match(path)
        if match is None:
            return _response(b"404 Not Found", b'{"detail":"Not Found"}')
        return _response(b"200 OK", findings_body(match.group(1).decode()))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
