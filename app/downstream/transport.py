"""An ``httpx.AsyncBaseTransport`` over one ``aiohttp.ClientSession`` per service.

The code keeps the httpx API (requests, responses, timeouts, exceptions) while
aiohttp's C-accelerated HTTP/1.1 client moves the bytes: stock httpcore costs
about 2 ms CPU a request here (``docs/decisions/0002-downstream-transport.md``,
``bench/micro_transport.py``). The transport maps aiohttp's failures back onto
httpx's exception tree so the retry and error mapping above it do not change:

    pool slot not free in time      -> httpx.PoolTimeout   (our own semaphore)
    TCP connect too slow            -> httpx.ConnectTimeout
    TCP connect refused/unreachable -> httpx.ConnectError
    no response byte within read    -> httpx.ReadTimeout
    peer closed, malformed answer   -> httpx.RemoteProtocolError / httpx.ReadError

aiohttp has no write timeout: a peer that stops reading our body is cut by the
read timeout, which runs from the moment the request is sent. Bodies stream both
ways (an async-iterable request body is sent chunked; the response body is read
as it arrives) and are never decompressed here, so pass-through forwards bytes; an
answer in a transfer coding other than chunked is refused (``foreign_coding``).
aiohttp stops writing a request body once the answer is complete (it cancels its
body writer): a service that answers early gets no more of it, and pass-through,
which checks a body's digest at its end, reads and checks the rest itself
(``app.workflows.passthrough.CheckedBody``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import httpx
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.tracing import Trace
from yarl import URL

# aiohttp adds these unless told not to; the gateway forwards only what it chose.
_SKIP_AUTO = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})
_DROP = frozenset({b"transfer-encoding", b"connection", b"keep-alive"})
_HTTP11 = {"http_version": b"HTTP/1.1"}
# Request extension: read the whole response body here (callers that do not stream it).
BUFFERED = "gateway_buffered"
HEAD_RECEIVED = "gateway_head_received"
# Request extension: the most bytes a buffered answer may have (RemoteProtocolError beyond).
MAX_BUFFERED = "gateway_max_buffered_bytes"
# Request extension on a streamed request: an answer whose Content-Length is at most this
# many bytes is read whole anyway, as if buffered (the native transport; others stream it).
BUFFER_DECLARED = "gateway_buffer_declared_bytes"
TOO_LARGE = "answer larger than the gateway accepts"
# Where a streamed request body's own failure (bad digest, too large) is kept for _send.
BODY_ERROR = "gateway_body_error"
# Set on a request whose streamed body a transport could not send whole although it
# returns an answer (the service answered and closed first): never a success for it.
BODY_UNSENT = "gateway_body_unsent"


def foreign_coding(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """A ``Transfer-Encoding`` other than ``chunked`` alone (``gzip``, ``gzip, chunked``).

    The gateway decodes no other transfer coding and the field is hop-by-hop: relayed,
    such a body would reach the caller still coded with nothing left to say so (a
    "PDF" that is gzip). RFC 9112 section 6.1 lets a client refuse what it cannot
    decode; the answer is a protocol error, a 502.
    """
    codings = [
        coding.strip().lower()
        for name, value in headers
        if name.lower() == b"transfer-encoding"
        for coding in value.split(b",")  # an empty element too: llhttp reads no chunks then
    ]
    return bool(codings) and codings != [b"chunked"]


def _map_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """aiohttp's failure as the httpx exception the error mapping expects."""
    message = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)


async def acquire_slot(
    slots: asyncio.Semaphore, request: httpx.Request, pool_timeout: float | None
) -> None:
    """One of a transport's connection slots, or ``httpx.PoolTimeout`` after ``pool_timeout``."""
    if not slots.locked():
        await slots.acquire()  # free slot: returns without suspending
        return
    try:
        async with asyncio.timeout(pool_timeout):
            await slots.acquire()
    except TimeoutError:
        raise httpx.PoolTimeout("no free connection", request=request) from None


class _ResponseStream(httpx.AsyncByteStream):
    """The aiohttp response body as httpx sees it; closing frees the pool slot."""

    def __init__(
        self, response: aiohttp.ClientResponse, request: httpx.Request, release: Callable[[], None]
    ) -> None:
        self._response = response
        self._request = request
        self._release: Callable[[], None] | None = release
        self._loop = asyncio.get_running_loop()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _FAILURES as exc:
            raise _map_error(exc, self._request) from exc

    async def aclose(self) -> None:
        self._response.release()
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        # Dropped unclosed: close the connection (aiohttp's pool would wait for it) and free
        # our slot, on the loop's own thread.
        release, self._release = self._release, None
        if release is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to free
                self._loop.call_soon_threadsafe(_abandon, self._response, release)


def _abandon(response: aiohttp.ClientResponse, release: Callable[[], None]) -> None:
    response.close()
    release()


class _StrayByteSafeConnector(aiohttp.TCPConnector):
    """aiohttp's connector, which never hands out a pooled connection bytes arrived on.

    aiohttp keeps reading an idle pooled connection and queues what arrives, and its
    pool reuses a connection that is still open: a service that sent an answer twice
    (or a body after a 204) had the stray copy read as the *next* caller's answer,
    and every answer after it on that connection went to the caller after its own
    (an audit saw engagements' reports handed to callers who may not see them). A
    connection whose protocol holds anything unread, or that aiohttp has marked to
    close, is closed here instead of reused: the native transport's rule (a
    connection is reused only with no stray byte). Relies on ``_get`` and ``_conns``,
    internal to aiohttp (3.12 to 3.14 keep them; tests cover the behaviour).
    """

    async def _get(
        self, key: ConnectionKey, traces: list[Trace]
    ) -> aiohttp.connector.Connection | None:
        idle = self._conns.get(key)
        if idle:
            for entry in [e for e in idle if e[0].should_close]:
                idle.remove(entry)
                entry[0].close()
        return await super()._get(key, traces)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over a pooled ``aiohttp.ClientSession``, created lazily on the running loop."""

    def __init__(
        self, *, max_connections: int = 100, max_keepalive: int = 32, keepalive_expiry: float = 15
    ) -> None:
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = _StrayByteSafeConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_expiry,
                force_close=self._max_keepalive == 0,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=_SKIP_AUTO,
            )
        return self._session

    def _timeout(self, timeouts: dict[str, float | None]) -> aiohttp.ClientTimeout:
        key = (timeouts.get("connect"), timeouts.get("read"))
        cached = self._timeouts.get(key)
        if cached is None:
            cached = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1])
            self._timeouts[key] = cached
        return cached

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        await acquire_slot(self._slots, request, timeouts.get("pool"))
        try:
            response = await self._send(request, timeouts)
            _refuse_foreign_coding(request, response)
            if request.extensions.get(BUFFERED):
                return await self._buffered(request, response)
        except BaseException:
            self._slots.release()
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response, request, self._slots.release),
            extensions=_HTTP11,
        )

    async def _buffered(
        self, request: httpx.Request, response: aiohttp.ClientResponse
    ) -> httpx.Response:
        """Read the whole body with aiohttp's own reader and free the pool slot at once."""
        request.extensions[HEAD_RECEIVED] = True  # a timeout from here on is not retryable
        try:
            body = await _read_capped(response, request.extensions.get(MAX_BUFFERED), request)
        except _FAILURES as exc:
            raise _map_error(exc, request) from exc
        finally:
            response.release()
        self._slots.release()
        return buffered_response(response.status, response.raw_headers, body)

    async def _send(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> aiohttp.ClientResponse:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in _DROP
        ]
        try:
            return await self._get_session().request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=_body(request),
                allow_redirects=False,
                timeout=self._timeout(timeouts),
                compress=None,
            )
        except BaseException as exc:
            body_error = request.extensions.get(BODY_ERROR)
            if body_error is not None:
                raise body_error from None  # the body's own failure, not the service's
            if isinstance(exc, _FAILURES):
                raise _map_error(exc, request) from exc
            raise

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _refuse_foreign_coding(request: httpx.Request, response: aiohttp.ClientResponse) -> None:
    """RemoteProtocolError for a body in a transfer coding other than chunked."""
    if (
        request.method != "HEAD"
        and response.status not in (204, 304)
        and foreign_coding(response.raw_headers)
    ):
        response.close()
        request.extensions[HEAD_RECEIVED] = True  # an answer, a wrong one: not retried
        raise httpx.RemoteProtocolError("a transfer coding other than chunked", request=request)


async def _read_capped(
    response: aiohttp.ClientResponse, limit: int | None, request: httpx.Request
) -> bytes:
    """The whole body; past ``limit`` bytes a RemoteProtocolError (the connection is closed)."""
    length = response.content_length
    if limit is None or (length is not None and length <= limit):
        return await response.read()  # framing bounds it: aiohttp's C reader, one call
    if length is not None:
        raise httpx.RemoteProtocolError(TOO_LARGE, request=request)
    chunks, total = [], 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
        if total > limit:
            response.close()
            raise httpx.RemoteProtocolError(TOO_LARGE, request=request)
        chunks.append(chunk)
    return b"".join(chunks)


def buffered_response(
    status: int, raw_headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> httpx.Response:
    """What ``httpx.Response(status, headers=..., content=body)`` builds, for less CPU.

    httpx reads a ``content=`` body through its decoder generators (about 17 µs a
    response); without a Content-Encoding there is nothing to decode, so the body
    is set as read. An encoded body takes httpx's own path, decoded as before.
    """
    response = httpx.Response(
        status_code=status, headers=raw_headers, stream=httpx.ByteStream(body), extensions=_HTTP11
    )
    if body:  # httpx's encode_content adds a length only for a non-empty body
        response.headers.setdefault("Content-Length", str(len(body)))
    if "content-encoding" in response.headers:
        response.read()
    else:
        response._content = body  # what read() stores; httpx has no public setter
    return response


def _body(request: httpx.Request) -> Any:
    """Bytes when the request body is in memory, else its async stream (sent chunked)."""
    try:
        return request.content or None
    except httpx.RequestNotRead:
        stream = request.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return _iterate(stream, request)


async def _iterate(stream: httpx.AsyncByteStream, request: httpx.Request) -> AsyncIterator[bytes]:
    """The request body; an error it raises is kept so ``_send`` re-raises it, unmapped.

    Before each chunk the loop runs twice: an answer that arrived meanwhile (a service
    that answers early, then closes) is read first, and a complete one stops aiohttp's
    writer. Writing on, a write fails on the service's reset and the loop drops the
    connection without reading that answer: a 502 instead of, say, the service's 413.
    This narrows the window; it cannot close it (the native transport reads what the
    kernel still holds after such a failure: ``app/downstream/http1.py``).
    """
    try:
        async for chunk in stream:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            yield chunk
    except Exception as exc:
        request.extensions[BODY_ERROR] = exc
        raise
