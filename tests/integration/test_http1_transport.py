"""Http1Transport against raw TCP servers on 127.0.0.1: exact bytes both ways, every failure."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import gzip
import re
import tracemalloc
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import SimpleNamespace, TracebackType
from typing import Any

import httpx
import pytest
import uvloop
from structlog.testing import capture_logs

from app.authn.keys import SigningKey
from app.core.config import ServiceSettings
from app.core.errors import DownstreamTimeout
from app.downstream import client as client_module
from app.downstream.client import DownstreamClient, end_stream
from app.downstream.deadline import Deadline, within
from app.downstream.http1 import DEADLINE, Http1Transport, StaleConnection
from app.downstream.transport import BODY_UNSENT, BUFFER_DECLARED, BUFFERED, HEAD_RECEIVED
from tests.conftest import free_port
from tests.integration.raw_http import RawService

pytestmark = pytest.mark.integration

TIMEOUTS = {"connect": 1.0, "read": 0.5, "write": 0.5, "pool": 0.2}
CLOSE = "close"  # answer step: close the connection
HANG = "hang"  # answer step: never write again (the connection stays open)
Answer = bytes | Sequence[bytes | str | float]  # a float step: pause that many seconds
Runner = Callable[[Coroutine[Any, Any, None]], None]
RUNNERS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


def ok(body: bytes = b"hello", *fields: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    extra = b"".join(field + b"\r\n" for field in fields)
    return b"%b\r\nContent-Length: %d\r\n%b\r\n%b" % (status, len(body), extra, body)


class RawServer:
    """Reads each request, answers with the next canned answer; records every byte it got."""

    def __init__(self, *answers: Answer, reads: bool = True) -> None:
        self.answers: deque[Answer] = deque(answers)
        self.reads = reads
        self.requests: list[bytes] = []  # complete requests, exactly as received
        self.partial: list[bytes] = []  # what arrived of a request the peer never completed
        self.connections = 0
        self.eofs = 0  # connections the peer ended between requests
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/r") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def settled(self) -> None:
        """Until every connection has ended (the client closed or aborted them)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # The client aborted, or the test is over: the task ends here either way.
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await self._converse(reader, writer)
        writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.reads:
            await asyncio.Event().wait()
        while (request := await self._read_request(reader)) is not None:
            self.requests.append(request)
            answer = self.answers.popleft()
            for step in [answer] if isinstance(answer, bytes) else answer:
                if step == CLOSE:
                    return
                if step == HANG:
                    await asyncio.Event().wait()
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    continue
                assert isinstance(step, bytes)
                writer.write(step)
                await writer.drain()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        got = bytearray()
        try:
            got += await reader.readuntil(b"\r\n\r\n")
            head = bytes(got).lower()
            if b"transfer-encoding: chunked" in head:
                size = -1
                while size != 0:
                    got += (line := await reader.readuntil(b"\r\n"))
                    size = int(line.split(b";")[0], 16)
                    got += await reader.readexactly(size + 2)
            elif length := re.search(rb"content-length: *(\d+)", head):
                got += await reader.readexactly(int(length[1]))
            return bytes(got)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError):  # a reset keeps what had arrived
                got += exc.partial
        if got:
            self.partial.append(bytes(got))
        else:
            self.eofs += 1
        return None


def on_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on asyncio's loop, or on the one its ``run`` parameter names."""

    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        kwargs.get("run", asyncio.run)(test(*args, **kwargs))

    return sync


def req(url: str, method: str = "GET", *, buffered: bool = False, **kwargs: Any) -> httpx.Request:
    extensions: dict[str, Any] = {"timeout": dict(kwargs.pop("timeouts", TIMEOUTS))}
    if buffered:
        extensions[BUFFERED] = True
    return httpx.Request(method, url, extensions=extensions, **kwargs)


async def fetch(transport: Http1Transport, request: httpx.Request) -> tuple[httpx.Response, bytes]:
    """Send and read the whole body (raw, from the stream, unless buffered)."""
    response = await transport.handle_async_request(request)
    try:
        if request.extensions.get(BUFFERED):
            return response, await response.aread()
        return response, b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


async def still_serves(transport: Http1Transport) -> None:
    """The transport's slots are free: a request to a healthy server succeeds."""
    async with RawServer(ok(b"fine")) as good:
        _, body = await fetch(transport, req(good.url()))
    assert body == b"fine"


async def body_of(*chunks: bytes, error: Exception | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if error is not None:
        raise error


# --- 1. framing ---------------------------------------------------------------------------

FRAMINGS = {
    "content-length": ok(b"hello world"),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\n5;x\r\nworld\r\n0\r\n\r\n"
    ),
    "close-delimited": [b"HTTP/1.1 200 OK\r\n\r\nhello", b" world", CLOSE],
    "chunked-spelled-loosely": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\n\r\nb\r\nhello world\r\n0\r\n\r\n"
    ),
}


@RUNNERS
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize("answer", FRAMINGS.values(), ids=FRAMINGS.keys())
@on_loop
async def test_body_framing(run: Runner, answer: Answer, buffered: bool) -> None:
    async with RawServer(answer) as server, Http1Transport() as transport:
        response, body = await fetch(transport, req(server.url(), buffered=buffered))
    assert (response.status_code, body) == (200, b"hello world")


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize("later", [False, True], ids=["same-write", "later-write"])
@on_loop
async def test_trailer_fields_never_join_the_headers(buffered: bool, later: bool) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    end = b"0\r\nX-Trailer: t\r\n\r\n"
    answer = [head, end] if later else [head + end]

    async with RawServer(answer, ok(b"next")) as server, Http1Transport() as transport:
        response, body = await fetch(transport, req(server.url(), buffered=buffered))
        assert (await fetch(transport, req(server.url())))[1] == b"next"
    assert body == b"hello"
    assert "x-trailer" not in response.headers
    assert server.connections == 1


# --- 2. keep-alive ------------------------------------------------------------------------


@RUNNERS
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@on_loop
async def test_sequential_requests_share_one_connection(run: Runner, buffered: bool) -> None:
    async with RawServer(ok(b"one"), ok(b"two")) as server, Http1Transport() as transport:
        bodies = [(await fetch(transport, req(server.url(), buffered=buffered)))[1]]
        bodies.append((await fetch(transport, req(server.url(), buffered=buffered)))[1])
    assert bodies == [b"one", b"two"]
    assert server.connections == 1


NOT_REUSED: dict[str, tuple[bytes, dict[str, Any], float]] = {
    "connection-close": (ok(b"one", b"Connection: close"), {}, 0.0),
    "http-1.0": (ok(b"one", status=b"HTTP/1.0 200 OK"), {}, 0.0),
    "max-keepalive-0": (ok(b"one"), {"max_keepalive": 0}, 0.0),
    "keepalive-expired": (ok(b"one"), {"keepalive_expiry": 0.05}, 0.15),
}


@pytest.mark.parametrize(("first", "options", "pause"), NOT_REUSED.values(), ids=NOT_REUSED.keys())
@on_loop
async def test_a_connection_is_not_reused_when_the_answer_or_pool_says_so(
    first: bytes, options: dict[str, Any], pause: float
) -> None:
    async with RawServer(first, ok(b"two")) as server, Http1Transport(**options) as t:
        assert (await fetch(t, req(server.url())))[1] == b"one"
        await asyncio.sleep(pause)
        assert (await fetch(t, req(server.url())))[1] == b"two"
    assert server.connections == 2


# --- 3-5. interim answers, HEAD, bodiless statuses ----------------------------------------


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@on_loop
async def test_interim_answers_are_skipped(buffered: bool) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + early + ok(b"final", b"X-Final: yes")

    async with RawServer(answer, ok(b"next")) as server, Http1Transport() as transport:
        response, body = await fetch(transport, req(server.url(), buffered=buffered))
        assert (await fetch(transport, req(server.url())))[1] == b"next"
    assert (response.status_code, body) == (200, b"final")
    assert [k for k, _ in response.headers.raw] == [b"Content-Length", b"X-Final"]
    assert server.connections == 1


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@on_loop
async def test_head_answer_ends_at_its_head(buffered: bool) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"

    async with RawServer(head, ok(b"after")) as server, Http1Transport() as transport:
        response, body = await fetch(transport, req(server.url(), "HEAD", buffered=buffered))
        assert (await fetch(transport, req(server.url())))[1] == b"after"
    assert (response.status_code, body) == (200, b"")
    assert response.headers["content-length"] == "1234"


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
@on_loop
async def test_bodiless_statuses_end_at_their_head_and_keep_the_connection(status: bytes) -> None:
    first = b"HTTP/1.1 %b\r\nContent-Length: 1234\r\n\r\n" % status  # no body all the same
    async with RawServer(first, ok(b"two")) as server, Http1Transport() as transport:
        response, body = await fetch(transport, req(server.url()))
        assert (await fetch(transport, req(server.url())))[1] == b"two"
    assert (response.status_code, body) == (int(status[:3]), b"")
    assert server.connections == 1


# --- 6. malformed answers -----------------------------------------------------------------

MALFORMED = {
    "not-http": b"garbage\r\n\r\n",
    "bad-version": b"HTPP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "bad-status": b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nx",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    "length-and-chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx",
    "four-digit-status": b"HTTP/1.1 1000 OK\r\nContent-Length: 0\r\n\r\n",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    "big-head": b"HTTP/1.1 200 OK\r\nX-Big: %b\r\nContent-Length: 0\r\n\r\n" % (b"a" * 70_000),
    "many-fields": b"HTTP/1.1 200 OK\r\n%b\r\n" % (b"X-F: 0123456789\r\n" * 4000),
    "endless-field": [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, HANG],
    "endless-interims": [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 3000, HANG],
    # Audit h32: a transfer coding the gateway does not decode was read to the close and
    # relayed without its (hop-by-hop) field: gzip bytes passed for the document.
    "gzip-coding": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzip.compress(b"hello"),
        CLOSE,
    ],
    "identity-coding": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhi", CLOSE],
    "gzip-then-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\n"
    ),
    "chunked-and-an-empty-element": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    ),
    "chunked-twice": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
@on_loop
async def test_malformed_answer_is_remote_protocol_error(answer: Answer, buffered: bool) -> None:
    async with RawServer(answer) as server, Http1Transport(max_connections=1) as transport:
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(transport, req(server.url(), buffered=buffered))
        await still_serves(transport)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize("later", [False, True], ids=["same-write", "later-write"])
@on_loop
async def test_bytes_after_a_complete_answer_spoil_the_connection(
    buffered: bool, later: bool
) -> None:
    stray = ok(b"stray")
    first = [ok(b"one"), b"", stray] if later else [ok(b"one") + stray]

    async with RawServer(first, ok(b"two")) as server, Http1Transport() as transport:
        assert (await fetch(transport, req(server.url(), buffered=buffered)))[1] == b"one"
        await asyncio.sleep(0.1)  # let a later stray write arrive while the connection idles
        assert (await fetch(transport, req(server.url())))[1] == b"two"
    assert server.connections == 2


# --- 7-9. the service closes or stalls ---------------------------------------------------


@RUNNERS
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize("when", ["after-request", "while-idle"])
@on_loop
async def test_a_reused_connection_the_service_closed_is_retried_for_get(
    run: Runner, buffered: bool, when: str
) -> None:
    answers: list[Answer] = [ok(b"one"), [CLOSE], ok(b"two")]
    if when == "while-idle":
        answers = [[ok(b"one"), CLOSE], ok(b"two")]

    async with RawServer(*answers) as server, Http1Transport(max_connections=1) as t:
        assert (await fetch(t, req(server.url())))[1] == b"one"
        assert (await fetch(t, req(server.url(), buffered=buffered)))[1] == b"two"
    assert server.connections == 2
    assert len(server.requests) == len(answers)


@on_loop
async def test_a_reused_connection_closed_after_a_response_byte_is_not_retried() -> None:
    async with (
        RawServer(ok(b"one"), [b"HTTP/1.1 2", CLOSE], ok()) as server,
        Http1Transport(max_connections=1) as t,
    ):
        assert (await fetch(t, req(server.url())))[1] == b"one"
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(t, req(server.url()))
        assert (len(server.requests), server.connections) == (2, 1)
        await still_serves(t)


@pytest.mark.parametrize("scheme", ["http", "ftp"])
@on_loop
async def test_a_request_that_never_connects_frees_its_slot(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/r"  # nobody listens there
    error = httpx.ConnectError if scheme == "http" else httpx.UnsupportedProtocol

    async with Http1Transport(max_connections=1) as transport:
        with pytest.raises(error):
            await fetch(transport, req(url))
        await still_serves(transport)


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "streamed"])
@on_loop
async def test_a_post_on_a_reused_connection_the_service_closed_is_not_retried(
    streamed: bool,
) -> None:
    async with RawServer(ok(b"one"), [CLOSE], ok()) as server, Http1Transport() as t:
        assert (await fetch(t, req(server.url())))[1] == b"one"
        content = body_of(b"data") if streamed else b"data"
        with pytest.raises(httpx.RemoteProtocolError):
            await fetch(t, req(server.url(), "POST", content=content))
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"POST"]
    assert server.connections == 1


# answer, error, answer begun (HEAD_RECEIVED), the head complete (a streamed call returns)
CUTS = {
    "no-answer": ([HANG], httpx.ReadTimeout, False, False),
    # Part of the head: the answer had begun, so the timeout is not a retryable one.
    "stall-mid-head": ([b"HTTP/1.1 200 OK\r\nContent-Le", HANG], httpx.ReadTimeout, True, False),
    "closed-before-answering": ([CLOSE], httpx.RemoteProtocolError, False, False),
    "stall-mid-body": ([ok(b"0123456789")[:-8], HANG], httpx.ReadTimeout, True, True),
    "closed-mid-length": ([ok(b"0123456789")[:-8], CLOSE], httpx.RemoteProtocolError, True, True),
    "closed-mid-chunked": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", CLOSE],
        httpx.RemoteProtocolError,
        True,
        True,
    ),
}


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@pytest.mark.parametrize(("answer", "error", "begun", "head"), CUTS.values(), ids=CUTS.keys())
@on_loop
async def test_a_cut_or_stalled_answer_fails_where_it_stops(
    answer: Answer, error: type[Exception], begun: bool, head: bool, buffered: bool
) -> None:
    async with RawServer(answer) as server, Http1Transport(max_connections=1) as transport:
        request = req(server.url(), buffered=buffered)
        if buffered or not head:
            with pytest.raises(error):
                await transport.handle_async_request(request)
        else:
            response = await transport.handle_async_request(request)
            with pytest.raises(error):
                await response.aread()
            await response.aclose()
        assert bool(request.extensions.get(HEAD_RECEIVED)) is begun
        assert server.connections == 1  # a fresh connection is never retried
        await still_serves(transport)


@RUNNERS
@on_loop
async def test_a_close_delimited_answer_that_stalls_is_a_timeout_not_an_end(run: Runner) -> None:
    # The read timeout aborts the connection; that close is ours, not the end of the body.
    answer = [b"HTTP/1.1 200 OK\r\n\r\nhello", HANG]
    async with RawServer(answer) as server, Http1Transport(max_connections=1) as transport:
        response = await transport.handle_async_request(req(server.url()))
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()
        await response.aclose()
        await still_serves(transport)


@RUNNERS
@on_loop
async def test_closing_the_transport_cuts_a_close_delimited_answer_as_an_error(
    run: Runner,
) -> None:
    answer = [b"HTTP/1.1 200 OK\r\n\r\nhello", HANG]
    async with RawServer(answer) as server:
        transport = Http1Transport(max_connections=1)
        response = await transport.handle_async_request(req(server.url()))
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"hello"
        await transport.aclose()
        with pytest.raises(httpx.RemoteProtocolError):
            await anext(chunks)
        await response.aclose()


@RUNNERS
@pytest.mark.parametrize("status", [b"413 Payload Too Large", b"201 Created"])
@on_loop
async def test_an_answer_before_the_body_survives_a_write_that_fails_on_the_reset(
    run: Runner, status: bytes
) -> None:
    """Audit h32: a service that answered ``413`` after the head and closed, the body
    unread, was sometimes a 502: the next body write failed on its reset and the loop
    dropped the connection without reading the answer already in the kernel's buffer.
    Here the loop is held while the service answers and closes (the answer arrives
    unread), then the body is written on without a pause: the answer is still read."""
    answer = b"HTTP/1.1 %b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno" % status

    with RawService(lambda sock, head: sock.sendall(answer)) as service:

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            assert service.closed.wait(5)  # blocks the loop: nothing of the answer is read
            for _ in range(8):
                yield b"x" * 65536

        request = req(f"{service.url}/r", "POST", content=body(), timeouts={**TIMEOUTS, "read": 2})
        async with Http1Transport() as transport:
            response, got = await fetch(transport, request)
    assert (response.status_code, got) == (int(status[:3]), b"no")
    assert request.extensions[BODY_UNSENT] is True


# --- 10. write timeout -------------------------------------------------------------------


async def _huge_body() -> AsyncIterator[bytes]:
    chunk = b"x" * 65536
    for _ in range(1024):  # 64 MiB
        yield chunk


@RUNNERS
@on_loop
async def test_a_service_that_stops_reading_is_write_timeout(run: Runner) -> None:
    async with RawServer(reads=False) as server, Http1Transport(max_connections=1) as t:
        timeouts = {**TIMEOUTS, "write": 0.3}
        with pytest.raises(httpx.WriteTimeout):
            await fetch(t, req(server.url(), "PUT", content=_huge_body(), timeouts=timeouts))
        await still_serves(t)


@on_loop
async def test_an_in_memory_body_the_service_never_reads_is_write_timeout() -> None:
    async with RawServer(reads=False) as server, Http1Transport(max_connections=1) as t:
        timeouts = {**TIMEOUTS, "write": 0.3, "read": 5.0}
        with pytest.raises(httpx.WriteTimeout):
            await fetch(t, req(server.url(), "PUT", content=b"x" * (64 << 20), timeouts=timeouts))
        await still_serves(t)


@on_loop
async def test_any_token_method_is_sent_as_is() -> None:
    async with RawServer(ok()) as server, Http1Transport() as transport:
        await fetch(transport, req(server.url(), "M-SEARCH"))
    assert server.requests[0].startswith(b"M-SEARCH /r HTTP/1.1\r\n")


# --- 11-13. what the service receives -----------------------------------------------------


@RUNNERS
@on_loop
async def test_request_heads_and_bodies_are_framed_exactly(run: Runner) -> None:
    async with RawServer(*[ok()] * 5) as server, Http1Transport() as transport:
        url, host = server.url("/r?q=a%20b"), b"Host: 127.0.0.1:%d\r\n" % server.port
        await fetch(transport, req(url))
        await fetch(transport, req(url, "POST", content=b"hello"))
        await fetch(transport, req(url, "POST", content=body_of(b"ab", b"", b"cdefghijklm")))
        sized = body_of(b"abcd", b"e")
        await fetch(transport, req(url, "PUT", content=sized, headers={"Content-Length": "5"}))
        hop = {"Connection": "close", "Keep-Alive": "timeout=9", "Transfer-Encoding": "gzip"}
        await fetch(transport, req(url, "POST", content=b"xy", headers=hop))
    assert server.requests == [
        b"GET /r?q=a%20b HTTP/1.1\r\n" + host + b"\r\n",
        b"POST /r?q=a%20b HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhello",
        b"POST /r?q=a%20b HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\nb\r\ncdefghijklm\r\n0\r\n\r\n",
        b"PUT /r?q=a%20b HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nabcde",
        b"POST /r?q=a%20b HTTP/1.1\r\n" + host + b"Content-Length: 2\r\n\r\nxy",
    ]
    assert server.connections == 1


BAD_LENGTHS = {
    "bytes-shorter": (b"abc", "10"),
    "bytes-longer": (b"abc", "1"),  # the surplus would open the service's next request
    "no-body": (None, "5"),
    "not-a-number": (b"ab", "abc"),
    "streamed-not-a-number": ("stream", "abc"),
    "duplicated": (b"ab", "2, 2"),
}


@pytest.mark.parametrize(("content", "declared"), BAD_LENGTHS.values(), ids=BAD_LENGTHS.keys())
@on_loop
async def test_a_content_length_unlike_the_body_is_refused_before_sending(
    content: bytes | str | None, declared: str
) -> None:
    body = body_of(b"ab") if content == "stream" else content
    async with RawServer(ok()) as server, Http1Transport(max_connections=1) as transport:
        request = req(server.url(), "POST", content=body, headers={"Content-Length": declared})
        with pytest.raises(httpx.LocalProtocolError):
            await fetch(transport, request)
        assert server.connections == 0  # refused before connecting
        await fetch(transport, req(server.url()))
    assert server.requests == [b"GET /r HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port]


LENGTH_MISMATCH = {
    "shorter": (b"ab",),
    "longer-mid-chunk": (b"abc", b"def"),
    "longer-after-exact": (b"abcd", b"e"),
}


@pytest.mark.parametrize("chunks", LENGTH_MISMATCH.values(), ids=LENGTH_MISMATCH.keys())
@on_loop
async def test_a_body_unlike_its_content_length_is_never_complete(
    chunks: tuple[bytes, ...],
) -> None:
    async with RawServer(ok()) as server, Http1Transport(max_connections=1) as transport:
        body = body_of(*chunks)
        request = req(server.url(), "PUT", content=body, headers={"Content-Length": "4"})
        with pytest.raises(httpx.LocalProtocolError):
            await fetch(transport, request)
        await server.settled()
        assert server.requests == []
        assert len(server.partial) == 1
        await still_serves(transport)


class BodyBroken(Exception):
    """What a request body's own check raises (a bad digest, say)."""


@pytest.mark.parametrize("declared", [None, "4"], ids=["chunked", "content-length"])
@on_loop
async def test_a_failing_body_propagates_and_the_request_stays_incomplete(
    declared: str | None,
) -> None:
    async with RawServer(ok()) as server, Http1Transport(max_connections=1) as transport:
        body = body_of(b"ab", b"cd", error=BodyBroken("digest mismatch"))
        headers = {"Content-Length": declared} if declared else {}
        with pytest.raises(BodyBroken, match="digest mismatch"):
            await fetch(transport, req(server.url(), "PUT", content=body, headers=headers))
        await server.settled()
        assert server.requests == []
        assert server.partial[0].endswith(b"ab\r\n2\r\ncd\r\n" if declared is None else b"abc")
        await still_serves(transport)


HEAD_INJECTIONS = {
    "crlf-in-value": [(b"X-A", b"v\r\nX-Evil: 1")],
    "lf-in-value": [(b"X-A", b"v\nX-Evil: 1")],
    "cr-in-name": [(b"X-A\rB", b"v")],
    "nul-in-value": [(b"X-A", b"v\0w")],
    "colon-in-name": [(b"X-A: evil", b"v")],
    "space-in-name": [(b"X A", b"v")],
    "empty-name": [(b"", b"v")],
}


@pytest.mark.parametrize("headers", HEAD_INJECTIONS.values(), ids=HEAD_INJECTIONS.keys())
@on_loop
async def test_control_characters_in_the_head_are_refused_before_sending(
    headers: list[tuple[bytes, bytes]],
) -> None:
    async with RawServer(ok()) as server, Http1Transport(max_connections=1) as transport:
        with pytest.raises(httpx.LocalProtocolError):
            await fetch(transport, req(server.url(), headers=headers))
        with pytest.raises(httpx.LocalProtocolError):
            await fetch(transport, req(server.url(), "GE T"))
        assert server.connections == 0  # refused before connecting
        await fetch(transport, req(server.url()))  # the slot is free
    assert server.requests == [b"GET /r HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port]
    assert server.connections == 1


# --- 14-16. pool, flow control, close -----------------------------------------------------


@on_loop
async def test_an_open_streamed_response_holds_the_only_slot() -> None:
    async with (
        RawServer(ok(b"one"), ok(b"two")) as server,
        Http1Transport(max_connections=1) as transport,
    ):
        first = await transport.handle_async_request(req(server.url()))
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(req(server.url()))
        assert await first.aread() == b"one"
        await first.aclose()
        assert (await fetch(transport, req(server.url())))[1] == b"two"
    assert len(server.requests) == 2


@pytest.mark.parametrize(("size", "whole"), [(5, True), (1024, True), (1025, False)])
@on_loop
async def test_a_streamed_request_gets_a_small_declared_answer_already_read(
    size: int, whole: bool
) -> None:
    """At most ``BUFFER_DECLARED`` bytes declared: read whole, slot freed; more: streamed."""
    async with (
        RawServer(ok(b"x" * size), ok(b"two")) as server,
        Http1Transport(max_connections=1) as transport,
    ):
        small = req(server.url())
        small.extensions[BUFFER_DECLARED] = 1024
        first = await transport.handle_async_request(small)
        if whole:  # the only slot is free already: the answer is in memory
            assert (await fetch(transport, req(server.url())))[1] == b"two"
        else:
            with pytest.raises(httpx.PoolTimeout):
                await transport.handle_async_request(req(server.url()))
        assert await first.aread() == b"x" * size
        await first.aclose()


@pytest.mark.parametrize("size", [5, 1 << 20], ids=["all-arrived", "half-read"])
@on_loop
async def test_a_response_closed_unread_never_leaks_into_the_next(size: int) -> None:
    async with RawServer(ok(b"x" * size), ok(b"two")) as server, Http1Transport() as t:
        first = await t.handle_async_request(req(server.url()))
        if size > 5:
            await anext(aiter(first.aiter_raw()))
        else:
            await asyncio.sleep(0.05)  # the whole answer is in, still unread
        await first.aclose()
        assert (await fetch(t, req(server.url())))[1] == b"two"
    assert server.connections == (1 if size == 5 else 2)


@on_loop
async def test_a_closed_response_never_reads_the_next_answer_on_its_connection() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    )
    async with RawServer(chunked, ok(b"SECRET")) as server, Http1Transport() as transport:
        first = await transport.handle_async_request(req(server.url()))
        (conn,) = transport._open
        for _ in range(500):  # until the whole answer is in: closing sends the connection idle
            if conn.complete:
                break
            await asyncio.sleep(0.01)
        chunks = first.aiter_raw()
        assert await anext(chunks) == b"one"
        await first.aclose()
        second = await transport.handle_async_request(req(server.url()))
        with pytest.raises(httpx.StreamClosed):
            await anext(chunks)
        assert await second.aread() == b"SECRET"
        await second.aclose()
    assert server.connections == 1


@on_loop
async def test_a_cancelled_request_frees_its_slot() -> None:
    async with RawServer([HANG]) as server, Http1Transport(max_connections=1) as transport:
        request = req(server.url(), timeouts={**TIMEOUTS, "read": 5.0})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fetch(transport, request), 0.2)
        await still_serves(transport)


@on_loop
async def test_concurrent_requests_share_the_pool_limit() -> None:
    async with RawServer(*[ok()] * 12) as server, Http1Transport(max_connections=3) as t:
        timeouts = {**TIMEOUTS, "pool": 5.0}
        answers = await asyncio.gather(
            *[fetch(t, req(server.url(), timeouts=timeouts)) for _ in range(12)]
        )
    assert [body for _, body in answers] == [b"hello"] * 12
    assert 1 <= server.connections <= 3


@RUNNERS
@on_loop
async def test_a_large_answer_read_slowly_arrives_whole(run: Runner) -> None:
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB

    async with RawServer(ok(payload), ok(b"next")) as server, Http1Transport() as transport:
        response = await transport.handle_async_request(req(server.url()))
        received = bytearray()
        async for chunk in response.aiter_raw():
            received += chunk
            # Slower than the read timeout once: a paused reader is not a silent service.
            await asyncio.sleep(0.8 if len(received) == len(chunk) else 0.001)
        await response.aclose()
        assert (await fetch(transport, req(server.url())))[1] == b"next"
    assert received == payload
    assert server.connections == 1


@on_loop
async def test_closing_the_transport_closes_idle_connections() -> None:
    async with RawServer(ok(), ok()) as server:
        transport = Http1Transport()
        await fetch(transport, req(server.url()))
        await fetch(transport, req(server.url()))
        await transport.aclose()
        await server.settled()
        assert (server.connections, server.eofs) == (1, 1)


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "small-declared"])
@on_loop
async def test_a_pooled_connection_holds_nothing_of_its_last_answer(streamed: bool) -> None:
    """A connection kept for reuse once held its last buffered answer's body until its
    next exchange: a burst of large answers stayed in memory, the pool's idle
    connections each holding one, long after every response had gone."""
    size = 4 * 1024 * 1024
    async with RawServer(ok(b"x" * size)) as server, Http1Transport() as transport:
        request = req(server.url(), buffered=not streamed)
        if streamed:  # read whole by the transport: it declares no more than this
            request.extensions[BUFFER_DECLARED] = size
        tracemalloc.start()
        try:
            response, body = await fetch(transport, request)
            assert len(body) == size
            del response, body, request
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sum(len(idle) for idle in transport._idle.values()) == 1  # kept for reuse
    assert held < size // 4, f"{held} bytes still held after the answer was dropped"


# --- the keep-alive race, re-sent by the gateway's client, re-signed -------------------


@on_loop
async def test_a_transport_that_leaves_the_resend_to_its_caller_raises_stale_connection() -> None:
    async with (
        RawServer(ok(b"one"), ok(b"spare"), [CLOSE], ok(b"two")) as server,
        Http1Transport(resend_stale=False) as t,
    ):
        first, second = await asyncio.gather(*(fetch(t, req(server.url())) for _ in range(2)))
        assert {first[1], second[1]} == {b"one", b"spare"}  # two idle connections now
        with pytest.raises(StaleConnection):
            await fetch(t, req(server.url()))
        assert (await fetch(t, req(server.url())))[1] == b"two"
    assert server.connections == 3  # the other idle one was dropped, not tried stale


@RUNNERS
def test_the_client_resends_a_request_lost_to_the_race_with_a_new_nonce(run: Runner) -> None:
    """An audit's service read each request and closed: the transport re-sent the same
    bytes (the same nonce: a replay to a service that checks) and nothing logged it."""

    async def scenario() -> None:
        settings = ServiceSettings(url="http://127.0.0.1:1", retry={"attempts": 1})
        async with RawServer(ok(b"one"), [CLOSE], ok(b"two")) as server:
            settings = settings.model_copy(update={"url": server.url("")})
            key = SigningKey("gateway-test", b"transport-test-secret-0123456789abcdef")
            client = DownstreamClient("findings", settings, signing_key=key)
            try:
                assert (await client.call("GET", "/r")).content == b"one"
                with capture_logs() as logs:
                    assert (await client.call("GET", "/r")).content == b"two"
            finally:
                await client.aclose()
        nonces = [re.search(rb'nonce="([^"]+)"', r).group(1) for r in server.requests]  # type: ignore[union-attr]
        assert len(nonces) == 3
        assert len(set(nonces)) == 3, "every send carries its own nonce"
        outcomes = [e["outcome"] for e in logs if e.get("event") == "downstream_call"]
        assert outcomes[0] == "stale_connection"

    run(scenario())


# --- the inbound request's deadline --------------------------------------------------------

# Each byte well within the read timeout (0.5 s), the whole body 5 s: only a bound on the
# whole exchange ends it.
DRIP: list[bytes | str | float] = [b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"]
DRIP += [step for _ in range(50) for step in (b"x", 0.1)]


# The head itself drips: a field of 50 bytes, each well within the read timeout.
DRIP_HEAD: list[bytes | str | float] = [b"HTTP/1.1 200 OK\r\nX-Slow: "]
DRIP_HEAD += [step for _ in range(50) for step in (b"x", 0.1)]
DRIP_HEAD += [b"\r\nContent-Length: 2\r\n\r\nok"]


@RUNNERS
@on_loop
async def test_a_dripping_buffered_answer_ends_at_the_request_deadline(run: Runner) -> None:
    """The read timer the exchange arms anyway also ends it at ``DEADLINE``: no timer of
    the client's own around the attempt (``app.downstream.deadline``)."""
    async with RawServer(DRIP) as server, Http1Transport(max_connections=1) as transport:
        request = req(server.url(), buffered=True)
        request.extensions[DEADLINE] = Deadline.after(0.3)
        with pytest.raises(httpx.ReadTimeout, match="deadline"):
            await fetch(transport, request)
        assert request.extensions.get(HEAD_RECEIVED)  # cut mid-body: not retryable
        await still_serves(transport)


@RUNNERS
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "streamed"])
@on_loop
async def test_a_dripping_head_ends_at_the_request_deadline(run: Runner, buffered: bool) -> None:
    """Streamed or not, the head is bounded by ``DEADLINE``; the connection cut mid-head
    is dropped, never pooled, and its slot freed (``max_connections=1``)."""
    async with RawServer(DRIP_HEAD) as server, Http1Transport(max_connections=1) as transport:
        request = req(server.url(), buffered=buffered)
        request.extensions[DEADLINE] = Deadline.after(0.3)
        with pytest.raises(httpx.ReadTimeout, match="deadline"):
            await fetch(transport, request)
        assert request.extensions.get(HEAD_RECEIVED)  # the answer had begun: not retryable
        assert not transport._idle  # the cut connection went nowhere near the pool
        await still_serves(transport)


@RUNNERS
@pytest.mark.parametrize("declared", [None, 64], ids=["streamed", "small-declared"])
@on_loop
async def test_a_streamed_answer_body_outlives_the_request_deadline(
    run: Runner, declared: int | None
) -> None:
    """The deadline of a streamed answer ends at its head: a download that takes longer
    (each pause within the read timeout) is read whole, a small declared one too."""
    async with RawServer(DRIP, ok(b"next")) as server, Http1Transport() as transport:
        request = req(server.url())
        if declared is not None:
            request.extensions[BUFFER_DECLARED] = declared
        request.extensions[DEADLINE] = Deadline.after(0.3)
        response, body = await fetch(transport, request)
        assert (response.status_code, body) == (200, b"x" * 50)
        _, again = await fetch(transport, req(server.url()))
    assert again == b"next"
    assert server.connections == 1, "the connection went back to the pool whole"


@RUNNERS
@on_loop
async def test_a_phase_waits_no_longer_than_the_deadline_leaves(run: Runner) -> None:
    """The pool wait (as the connect and the upload) is bounded by what is left, not by
    its own, longer timeout."""
    async with RawServer([HANG]) as server, Http1Transport(max_connections=1) as transport:
        held = asyncio.ensure_future(transport.handle_async_request(req(server.url())))
        await asyncio.sleep(0.05)  # the only slot is taken, its answer never comes
        waiting = req(server.url(), timeouts={**TIMEOUTS, "pool": 30.0})
        waiting.extensions[DEADLINE] = Deadline.after(0.2)
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(waiting)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)


@RUNNERS
def test_the_client_maps_a_cut_by_the_native_transport_to_the_deadline(run: Runner) -> None:
    async def scenario() -> None:
        async with RawServer(DRIP, ok(b"fine")) as server:
            settings = ServiceSettings(url=server.url(""), read_timeout=0.5)
            client = DownstreamClient("findings", settings)
            try:
                with capture_logs() as logs, within(0.3), pytest.raises(DownstreamTimeout) as cut:
                    await client.call("GET", "/r")
                assert "deadline" in cut.value.detail
                assert (await client.call("GET", "/r")).content == b"fine"
            finally:
                await client.aclose()
        assert len(server.requests) == 2  # the cut attempt was not retried
        cuts = [e for e in logs if e.get("event") == "downstream_deadline"]
        assert [(e["attempt"], e["sent"]) for e in cuts] == [(1, True)]

    run(scenario())


@RUNNERS
def test_a_streamed_call_is_bounded_to_its_head_by_the_transport_not_a_timer(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass-through's ``call(stream=True)`` on the native transport hands the deadline to
    the transport (``DEADLINE``), as a buffered call does: no ``asyncio.timeout`` of the
    client's per attempt. A head past the deadline is its 504, counted by the breaker as
    a buffered call's cut is; a body past it is read whole."""

    def no_timer(delay: float | None) -> Any:
        raise AssertionError("the client armed a timer of its own")

    monkeypatch.setattr(client_module, "asyncio", SimpleNamespace(timeout=no_timer))

    async def scenario() -> None:
        async with RawServer(DRIP_HEAD, DRIP_HEAD, DRIP) as server:
            settings = ServiceSettings(url=server.url(""), read_timeout=0.5)
            client = DownstreamClient("reports", settings)
            try:
                with capture_logs() as logs:
                    with within(0.3), pytest.raises(DownstreamTimeout) as cut:
                        await client.call("GET", "/r", stream=True)
                    assert "deadline" in cut.value.detail
                    assert client.breaker.snapshot().failures == 1
                    with within(0.3), pytest.raises(DownstreamTimeout):
                        await client.call("GET", "/r")  # buffered: the typed routes' way
                assert client.breaker.snapshot().failures == 2
                with within(0.3):
                    response = await client.call("GET", "/r", stream=True)
                assert await response.aread() == b"x" * 50  # 5 s of body, past the deadline
                await end_stream(response)
            finally:
                await client.aclose()
        assert len(server.requests) == 3  # the cut attempts were not retried
        cuts = [e for e in logs if e.get("event") == "downstream_deadline"]
        assert [(e["attempt"], e["sent"]) for e in cuts] == [(1, True), (1, True)]

    run(scenario())


# A small declared answer (read by the transport) whose body stalls after its head.
STALLED_SMALL: list[bytes | str | float] = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", HANG]


@RUNNERS
def test_a_body_stall_after_a_timely_head_is_not_the_deadline(run: Runner) -> None:
    """A streamed call's deadline ends at its head (``app.downstream.deadline``): a small
    declared body the transport reads whole, stalling past ``read_timeout`` once the
    deadline passed, is the service's timeout, not the deadline's (no
    ``downstream_deadline`` line, no "deadline" detail)."""

    async def scenario() -> None:
        async with RawServer(STALLED_SMALL) as server:
            settings = ServiceSettings(url=server.url(""), read_timeout=0.5)
            client = DownstreamClient("reports", settings)
            try:
                with capture_logs() as logs, within(0.2), pytest.raises(DownstreamTimeout) as cut:
                    await client.call("GET", "/r", stream=True, buffer_declared=64)
            finally:
                await client.aclose()
        assert "deadline" not in cut.value.detail
        assert [e for e in logs if e.get("event") == "downstream_deadline"] == []

    run(scenario())
