"""Both downstream transports against real stub servers: errors map onto httpx's tree.

Every test runs on the native transport (the default) and on the aiohttp-backed one
(``services.<name>.transport: aiohttp``): the error mapping above them relies on both
raising the same httpx exceptions. Protocol edge cases of the native one are in
``test_http1_transport.py``.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from app.core.config import ServiceSettings
from app.core.errors import DownstreamError, DownstreamTimeout
from app.downstream.client import DownstreamClient
from app.downstream.http1 import Http1Transport
from app.downstream.transport import BUFFERED, HEAD_RECEIVED, MAX_BUFFERED, AiohttpTransport
from app.stubs.data import report_chunks
from app.stubs.faults import FaultConfig
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, free_port
from tests.integration.raw_http import RawService

pytestmark = pytest.mark.integration

Transport = Http1Transport | AiohttpTransport
MakeTransport = Callable[..., Transport]
E = TypeVar("E", bound=Exception)


@pytest.fixture(params=[Http1Transport, AiohttpTransport], ids=["native", "aiohttp"])
def make_transport(request: pytest.FixtureRequest) -> MakeTransport:
    kind: MakeTransport = request.param
    return kind


TIMEOUTS = httpx.Timeout(connect=1.0, read=0.3, write=1.0, pool=0.2).as_dict()
BUFFERED_X = {"timeout": TIMEOUTS, BUFFERED: True}


def request(url: str, timeouts: dict[str, Any] = TIMEOUTS) -> httpx.Request:
    return httpx.Request("GET", url, extensions={"timeout": timeouts})


async def send(transport: Transport, req: httpx.Request) -> httpx.Response:
    try:
        response = await transport.handle_async_request(req)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response
    finally:
        await transport.aclose()


def call_error(service: str, settings: ServiceSettings, path: str, error: type[E]) -> E:
    """The ``error`` one ``DownstreamClient.call`` of ``GET path`` must raise."""

    async def scenario() -> E:
        client = DownstreamClient(service, settings)
        try:
            with pytest.raises(error) as caught:
                await client.call("GET", path)
            return caught.value
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def stub(live_server: Callable[[FastAPI], LiveServer], name: str, **faults: Any) -> LiveServer:
    return live_server(create_stub_app(name, faults=FaultConfig(**faults)))


def test_refused_connection_is_connect_error(make_transport: MakeTransport) -> None:
    url = f"http://127.0.0.1:{free_port()}/engagements/acme-2026"
    with pytest.raises(httpx.ConnectError):
        asyncio.run(send(make_transport(), request(url)))


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connect hangs until it times out.

    With the queue full Linux drops further SYNs (net.ipv4.tcp_abort_on_overflow=0),
    so the connect is neither accepted nor refused: a connect timeout on loopback.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_connect_that_hangs_is_connect_timeout(
    unaccepting_port: int, make_transport: MakeTransport
) -> None:
    url = f"http://127.0.0.1:{unaccepting_port}/engagements/acme-2026"
    with pytest.raises(httpx.ConnectTimeout):
        asyncio.run(send(make_transport(), request(url, {**TIMEOUTS, "connect": 0.2})))


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
def test_connect_timeout_is_a_504_after_retries(unaccepting_port: int, kind: str) -> None:
    settings = ServiceSettings.model_validate(
        {
            "url": f"http://127.0.0.1:{unaccepting_port}",
            "connect_timeout": 0.1,
            "transport": kind,
            "retry": {"attempts": 2, "backoff_initial_seconds": 0.01},
        }
    )

    with capture_logs() as logs:
        error = call_error("engagements", settings, "/engagements/acme-2026", DownstreamTimeout)
    assert (error.status_code, error.service) == (504, "engagements")
    attempts = [e["attempt"] for e in logs if e["event"] == "downstream_call"]
    assert attempts == [1, 2]


def test_no_answer_in_time_is_read_timeout(
    live_server: Callable[[FastAPI], LiveServer], make_transport: MakeTransport
) -> None:
    server = stub(live_server, "engagements", hang=True, hang_max_seconds=2)
    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(send(make_transport(), request(server.url + "/engagements/acme-2026")))


def test_no_free_pooled_connection_is_pool_timeout(
    live_server: Callable[[FastAPI], LiveServer], make_transport: MakeTransport
) -> None:
    server = stub(live_server, "engagements", latency_ms=1000)
    patient = {**TIMEOUTS, "read": 5.0}

    async def scenario() -> None:
        transport = make_transport(max_connections=1)
        url = server.url + "/engagements/acme-2026"
        try:
            slow = asyncio.create_task(transport.handle_async_request(request(url, patient)))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await transport.handle_async_request(request(url))
            response = await slow
            await response.aread()
            await response.aclose()
        finally:
            await transport.aclose()

    asyncio.run(scenario())


def test_dropped_connection_is_a_transport_error(
    live_server: Callable[[FastAPI], LiveServer], make_transport: MakeTransport
) -> None:
    server = stub(live_server, "engagements", reset=True)
    with pytest.raises(httpx.TransportError):
        asyncio.run(send(make_transport(), request(server.url + "/engagements/acme-2026")))


def test_response_body_streams_in_chunks(
    live_server: Callable[[FastAPI], LiveServer], make_transport: MakeTransport
) -> None:
    server = stub(live_server, "reports")
    size = 3 * 1024 * 1024
    url = f"{server.url}/engagements/acme-2026/reports/R-0001/content?size={size}"

    async def scenario() -> tuple[int, str]:
        transport = make_transport()
        chunks, digest = 0, hashlib.sha256()
        try:
            response = await transport.handle_async_request(request(url))
            async for chunk in response.aiter_raw():
                chunks += 1
                digest.update(chunk)
            await response.aclose()
        finally:
            await transport.aclose()
        return chunks, digest.hexdigest()

    chunks, digest = asyncio.run(scenario())
    assert chunks > 1
    assert digest == hashlib.sha256(b"".join(report_chunks("R-0001", size))).hexdigest()


def test_a_streamed_answer_dropped_unclosed_frees_its_pool_slot(
    live_server: Callable[[FastAPI], LiveServer], make_transport: MakeTransport
) -> None:
    """A caller that loses a streamed response (a client gone before its body) leaks no slot."""
    server = stub(live_server, "reports")
    url = f"{server.url}/engagements/acme-2026/reports/R-0001/content?size={1 << 20}"

    async def scenario() -> bytes:
        transport = make_transport(max_connections=1)
        try:
            dropped = await transport.handle_async_request(request(url))
            assert dropped.status_code == 200
            del dropped  # never read, never closed
            gc.collect()
            await asyncio.sleep(0.05)  # the slot is freed on the loop, by a callback
            answer = await transport.handle_async_request(
                httpx.Request("GET", url.replace(str(1 << 20), "16"), extensions=BUFFERED_X)
            )
            return answer.content
        finally:
            await transport.aclose()

    assert len(asyncio.run(scenario())) == 16


@pytest.mark.parametrize(
    ("path", "limit", "fits"),
    [
        ("/engagements/acme-2026/reports/R-0001/content?size=262144", 65536, False),  # chunked
        ("/engagements/acme-2026/reports/R-0001/content?size=262144", 262144, True),
        ("/engagements/acme-2026", 10, False),  # Content-Length above the cap
    ],
)
def test_a_buffered_answer_larger_than_its_cap_is_refused(
    live_server: Callable[[FastAPI], LiveServer],
    make_transport: MakeTransport,
    path: str,
    limit: int,
    fits: bool,
) -> None:
    server = stub(live_server, "reports" if "reports" in path else "engagements")
    extensions = {**BUFFERED_X, MAX_BUFFERED: limit}

    async def scenario() -> int:
        transport = make_transport(max_connections=1)
        try:
            if fits:
                answer = await transport.handle_async_request(
                    httpx.Request("GET", server.url + path, extensions=extensions)
                )
                return len(answer.content)
            with pytest.raises(httpx.RemoteProtocolError, match="larger than the gateway"):
                await transport.handle_async_request(
                    httpx.Request("GET", server.url + path, extensions=extensions)
                )
            roomy = {**BUFFERED_X, MAX_BUFFERED: 1 << 20}  # and the slot was freed
            answer = await transport.handle_async_request(
                httpx.Request("GET", server.url + path, extensions=roomy)
            )
            assert answer.status_code == 200
            return -1
        finally:
            await transport.aclose()

    assert asyncio.run(scenario()) == (262144 if fits else -1)


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
def test_a_service_answer_over_max_answer_bytes_is_a_502_not_retried(
    live_server: Callable[[FastAPI], LiveServer], kind: str
) -> None:
    server = stub(live_server, "findings")
    settings = ServiceSettings.model_validate(
        {"url": server.url, "max_answer_bytes": 64, "transport": kind}
    )

    error = call_error("findings", settings, "/engagements/acme-2026/findings", DownstreamError)
    assert (error.status_code, error.service) == (502, "findings")
    faults = server.server.config.app.state.faults  # type: ignore[attr-defined]
    assert faults.requests == 1


def test_request_body_streams_from_an_async_iterator(
    live_server: Callable[[FastAPI], LiveServer], make_transport: MakeTransport
) -> None:
    server = stub(live_server, "findings")
    parts = [bytes([n]) * 65536 for n in range(16)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def scenario() -> dict[str, Any]:
        transport = make_transport()
        req = httpx.Request(
            "POST",
            server.url + "/engagements/acme-2026/evidence",
            content=body(),
            extensions={"timeout": TIMEOUTS, BUFFERED: True},
        )
        try:
            response = await transport.handle_async_request(req)
        finally:
            await transport.aclose()
        return dict(response.json())

    answer = asyncio.run(scenario())
    assert answer["bytes"] == 16 * 65536
    assert answer["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"identity"])
def test_an_answer_in_a_transfer_coding_other_than_chunked_is_refused(
    make_transport: MakeTransport, coding: bytes, buffered: bool
) -> None:
    """Audit h32: ``Transfer-Encoding: gzip`` was read to the close and relayed as a plain
    200 body (the field is hop-by-hop, so nothing told the caller it was gzip)."""
    data = gzip.compress(b"%PDF-1.7 " * 100)
    if coding.endswith(b"chunked"):
        data = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n"
    answer += b"Transfer-Encoding: %b\r\nConnection: close\r\n\r\n%b" % (coding, data)

    with RawService(lambda sock, head: sock.sendall(answer)) as service:
        req = httpx.Request(
            "GET", service.url + "/content", extensions={"timeout": TIMEOUTS, BUFFERED: buffered}
        )
        with pytest.raises(httpx.RemoteProtocolError):
            asyncio.run(send(make_transport(), req))
    assert req.extensions[HEAD_RECEIVED] is True  # an answer, a wrong one: never retried


def test_an_early_answer_is_read_before_the_body_write_fails_on_the_reset(
    make_transport: MakeTransport,
) -> None:
    """Audit h32: a service's ``413`` sent right after the head (then a close, the body
    unread) was sometimes a 502: a body write failed on the service's reset and the loop
    dropped the connection without reading the answer. Here the loop is held while the
    service answers and closes, then the body goes on: the 413 is what comes back."""
    answer = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    with RawService(lambda sock, head: sock.sendall(answer)) as service:

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            assert service.closed.wait(5)  # blocks the loop: nothing of the answer is read
            for _ in range(8):
                yield b"x" * 65536

        async def scenario() -> int:
            transport = make_transport()
            req = httpx.Request(
                "POST", service.url + "/evidence", content=body(), extensions={"timeout": TIMEOUTS}
            )
            try:
                return (await send(transport, req)).status_code
            except httpx.TransportError as exc:
                pytest.fail(f"{type(exc).__name__}: {exc}")

        assert asyncio.run(scenario()) == 413


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
def test_a_stall_after_the_first_byte_is_a_timeout_that_is_not_retried(
    live_server: Callable[[FastAPI], LiveServer], kind: str
) -> None:
    server = stub(live_server, "findings", slow_body_ms=600, slow_chunk_bytes=64)
    settings = ServiceSettings.model_validate(
        {
            "url": server.url,
            "read_timeout": 0.3,
            "transport": kind,
            "retry": {"backoff_initial_seconds": 0.01},
        }
    )

    call_error("findings", settings, "/engagements/acme-2026/findings", DownstreamTimeout)
    faults = server.server.config.app.state.faults  # type: ignore[attr-defined]
    assert faults.requests == 1


def echoing_twice() -> Callable[[socket.socket, bytes], None]:
    """A keep-alive service (a ``RawService`` answer): each request gets its number in
    the order served, and the first answer is sent a second time, 0.3 s later, while
    its connection idles."""
    served = itertools.count(1)

    def converse(sock: socket.socket, head: bytes) -> None:
        buffer = b""
        while True:
            number = next(served)
            body = f"answer {number}".encode()
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            sock.sendall(answer)
            if number == 1:
                time.sleep(0.3)
                sock.sendall(answer)  # the stray copy, on the idle connection
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            _, _, buffer = buffer.partition(b"\r\n\r\n")

    return converse


def test_a_stray_answer_on_an_idle_connection_never_reaches_the_next_caller(
    make_transport: MakeTransport,
) -> None:
    """aiohttp queued the stray copy and handed it to the next request on the pooled
    connection (every later answer then went one caller late)."""

    async def scenario(url: str) -> list[bytes]:
        transport = make_transport()
        bodies = []
        try:
            for number in range(3):
                response = await transport.handle_async_request(request(f"{url}/{number}"))
                try:
                    bodies.append(await response.aread())
                finally:
                    await response.aclose()
                await asyncio.sleep(0.6)  # the stray copy arrives while the connection idles
        finally:
            await transport.aclose()
        return bodies

    with RawService(echoing_twice()) as service:
        bodies = asyncio.run(scenario(service.url))
    assert bodies == [b"answer 1", b"answer 2", b"answer 3"]
