"""The gateway's own HTTP/1.1 client transport: asyncio protocol + llhttp, httpx API.

``Http1Transport`` is an ``httpx.AsyncBaseTransport``: callers build
``httpx.Request`` objects and get ``httpx.Response`` objects and httpx's
exception tree, exactly as with ``AiohttpTransport`` (``transport.py``, kept as
the ``transport: aiohttp`` option of a service). Underneath it is one
``asyncio.Protocol`` per connection and llhttp (Node.js's HTTP parser, through
``httptools``, which uvicorn already brings) for every byte of a response's
framing. What is ours is the part around the parser: the pool, the request
head, timeouts and flow control. Decision record 0003 of the transport,
``docs/decisions/0005-native-http1-transport.md``, weighs it against aiohttp
(about 4x less client CPU a request; measured by ``bench/micro_transport.py``).

Behaviour, and the httpx exception each failure is raised as::

    pool slot not free in time                  -> PoolTimeout   (never retried upstream)
    TCP connect too slow                        -> ConnectTimeout
    TCP connect refused/unreachable             -> ConnectError
    peer stops reading a request body in time   -> WriteTimeout
    no response byte within read                -> ReadTimeout   (gateway_head_received
                                                   set once any answer byte had arrived)
    peer closed before the head, malformed,
    oversized head, bytes nobody asked for      -> RemoteProtocolError
    peer closed mid-body                        -> RemoteProtocolError

- Framing is llhttp's, strict (no leniency flags): Content-Length, chunked,
  close-delimited bodies; a body in any other transfer coding (``gzip``, ``gzip,
  chunked``) is a RemoteProtocolError: nothing here decodes it, and relayed without
  its hop-by-hop field it would pass for plain bytes (``foreign_coding``); 1xx
  interim answers are skipped; HEAD answers end at their head; trailer fields are
  dropped. A request head whose fields hold CR,
  LF or NUL, whose method or field names are not RFC 9110 tokens, or whose
  Content-Length disagrees with an in-memory body is refused before a byte is
  sent (no header injection or desync, whatever a caller put in a field).
- A connection is reused only after a complete answer that allows keep-alive,
  with no stray byte; idle ones are dropped after ``keepalive_expiry`` and when
  more than ``max_keepalive`` are idle. A reused connection the peer had closed
  (the keep-alive race) is retried once on a fresh one for idempotent requests
  with an in-memory body, only when not one response byte had arrived.
- Bodies stream both ways: an async-iterable request body is sent chunked
  (or as declared by its Content-Length, which must then match; its last byte
  is held back until the body ended cleanly) with a write timeout on every wait
  for the socket, in-memory bodies included; a response body is read as it arrives,
  reading paused above ``HIGH_WATER`` unread bytes. ``gateway_buffered`` requests
  get the whole body read here, at most ``gateway_max_buffered_bytes`` of it
  (RemoteProtocolError beyond), and the connection freed at once; so do streamed
  requests whose answer declares a Content-Length of at most
  ``gateway_buffer_declared_bytes`` (a small answer costs no stream machinery).
  Nothing is decompressed: pass-through forwards bytes.
- An error raised by a streamed request body (bad digest, too large) aborts the
  connection, so the service never sees a complete request, and propagates as is.
  A service that answers and closes before taking the whole body gets no more of
  it: the answer is returned with the request marked ``BODY_UNSENT`` (the body's
  iterator was left before its end, or the end could not be written), for the
  caller to decide (pass-through never relays a success for it). Its answer counts
  even when a write failed first (the service reset the connection on the unread
  body, and the loop dropped it unread): what the kernel still holds is parsed
  (plain TCP; over TLS such an answer is lost, a RemoteProtocolError).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol, cast

import httptools
import httpx

from app.downstream.transport import (
    BODY_UNSENT,
    BUFFER_DECLARED,
    BUFFERED,
    HEAD_RECEIVED,
    MAX_BUFFERED,
    TOO_LARGE,
    acquire_slot,
    buffered_response,
    foreign_coding,
)

# Request extension: the inbound request's deadline (``app.downstream.deadline.Deadline``,
# anything with ``remaining()``). Every phase of the exchange ends by it: the pool wait,
# the connect and the upload within what is left, and the head and a buffered body by
# the read timer the exchange arms anyway; when it passes, that phase's timeout
# (``httpx.PoolTimeout``, ``ConnectTimeout``, ``WriteTimeout``, or ``ReadTimeout`` for
# the head and body). A streamed answer (not ``gateway_buffered``) is bounded up to its
# head: its body, small declared ones read here included, only per pause by the read
# timeout. No timer of its own: the client's ``asyncio.timeout`` around an attempt cost
# about 1.3% of a typed request (in instructions, e5e6c20), the read timer's next check
# nothing.
DEADLINE = "gateway_deadline"


class _Remaining(Protocol):
    def remaining(self) -> float: ...


def _phase(request: httpx.Request, timeouts: dict[str, float | None], name: str) -> float | None:
    """A phase's timeout (``pool``, ``connect``, ``write``), within the request's deadline."""
    timeout = timeouts.get(name)
    deadline: _Remaining | None = request.extensions.get(DEADLINE)
    if deadline is None:
        return timeout
    left = deadline.remaining()
    return left if timeout is None else min(timeout, left)


HIGH_WATER = 256 * 1024  # unread response bytes before reading pauses
LOW_WATER = 64 * 1024  # ...and resumes
MAX_HEAD_BYTES = 64 * 1024  # response head (status line and fields)
# Hop-by-hop request fields: the transport frames the body and manages the connection.
_DROP = frozenset({b"transfer-encoding", b"connection", b"keep-alive"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_HTTP11 = {"http_version": b"HTTP/1.1"}
# RFC 9110 section 5.6.2: methods and field names are tokens.
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN = re.compile(_TCHARS)
_BYTES_TOKEN = re.compile(_TCHARS.encode())
_Origin = tuple[bytes, str, int]
_ErrorKind = type[httpx.TransportError]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class _StopParsing(Exception):
    """Raised from a parser callback to end parsing (a HEAD answer's head is all of it)."""


class _Unexpected(ValueError):
    """Raised from a parser callback when a second answer starts: the connection is unusable."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one exchange at a time, state read by the transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.parser: httptools.HttpResponseParser | None = None
        self.limit: int | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._socket: _HasFileno | None = None  # plain TCP only: read after a failed write
        self._reset(False)

    def _reset(self, head_request: bool) -> None:
        self.head_request = head_request
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_received = 0  # every byte before the final head ends, interim answers too
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.any_byte = False
        self.close_delimited = False
        self.error: tuple[_ErrorKind, str] | None = None
        self.chunks: deque[bytes] = deque()
        self.pending = 0
        self.streaming = False
        self.reading_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.read_timeout: float | None = None
        self.deadline: _Remaining | None = None
        self.last_data = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # --- the exchange, driven by the transport ------------------------------------------

    def begin(self, head_request: bool, limit: int | None = None) -> None:
        self._reset(head_request)
        self.limit = limit  # the most body bytes a buffered answer may bring
        self.parser = httptools.HttpResponseParser(self)

    def finish(self) -> bool:
        """End the exchange; whether the connection may serve another one."""
        self.parser = None
        # The answer is its response's now (a buffered body was taken already): kept here,
        # every idle connection held its last body until its next exchange.
        self.chunks = deque()
        self.pending = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        reusable = (
            self.complete and self.keep_alive and not self.closed and self.error is None
        ) and not self.head_request
        if self.reading_paused and self.transport is not None and reusable:
            self.transport.resume_reading()
        return reusable

    def arm_read_timeout(self, timeout: float | None, deadline: _Remaining | None = None) -> None:
        """Fail with ReadTimeout when ``timeout`` passes without a byte from the peer, or
        once ``deadline`` (the inbound request's, ``DEADLINE``) has passed."""
        self.read_timeout = timeout
        self.deadline = deadline
        self.last_data = now = self.loop.time()
        if not self.complete:
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        """The next check: the read timeout's end or the deadline's, whichever is first."""
        at = None if self.read_timeout is None else self.last_data + self.read_timeout
        if self.deadline is not None:
            # On the deadline's own clock: the loop's may lag it, and an early check
            # just schedules the next one.
            end = now + self.deadline.remaining()
            at = end if at is None else min(at, end)
        if at is not None:
            self.timer = self.loop.call_at(at, self._check_timeout)

    def _check_timeout(self) -> None:
        self.timer = None
        if self.complete or self.error is not None:
            return
        if self.deadline is not None and self.deadline.remaining() <= 0:
            self.fail(httpx.ReadTimeout, "the request's deadline passed")
            return
        now = self.loop.time()
        if self.reading_paused:  # our reader is slow, not the peer
            self.last_data = now
        if self.read_timeout is not None and now >= self.last_data + self.read_timeout:
            self.fail(httpx.ReadTimeout, "no data from the service in time")
        else:
            self._schedule(now)

    def fail(self, kind: _ErrorKind, message: str) -> None:
        """Mark the exchange failed and drop the connection (its framing is unknown)."""
        if self.error is None and not self.complete:
            self.error = (kind, message)
        self.abort()
        self._wake()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something changes (head, a chunk, the end, a failure)."""
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def drain(self, write_timeout: float | None, request: httpx.Request) -> None:
        """Until the socket takes more bytes; WriteTimeout when the peer stops reading."""
        if not self._write_paused:
            return
        if self.closed:
            return
        self._drain = self.loop.create_future()
        try:
            async with asyncio.timeout(write_timeout):
                await self._drain
        except TimeoutError:
            self.abort()
            raise httpx.WriteTimeout("the service stopped reading", request=request) from None
        finally:
            self._drain = None

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        self.pending -= len(chunk)
        if self.reading_paused and self.pending <= LOW_WATER and self.transport is not None:
            self.reading_paused = False
            self.last_data = self.loop.time()
            self.transport.resume_reading()
        return chunk

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self.transport = cast(asyncio.Transport, transport)
        if transport.get_extra_info("sslcontext") is None:
            self._socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.complete:  # nobody asked: the connection is unusable
            self.fail(httpx.RemoteProtocolError, "unexpected data from the service")
            return
        self.any_byte = True
        self.last_data = self.loop.time()
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _StopParsing):
                self.fail(httpx.RemoteProtocolError, _reason(exc))
        except httptools.HttpParserError as exc:
            self.fail(httpx.RemoteProtocolError, _reason(exc))
        if not self.head_done:  # httptools holds an unfinished field in memory: bound it
            self.head_received += len(data)
            if self.head_received > MAX_HEAD_BYTES:
                self.fail(httpx.RemoteProtocolError, "response head too large")

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if exc is not None and self.parser is not None and not self.complete:
            self._read_left(exc)
        if self.parser is not None and not self.complete:
            if self.head_done and self.close_delimited and exc is None and self.error is None:
                self.complete = True  # the body ran to the end of the connection
                self.keep_alive = False
                self._wake()
            else:
                where = "mid-body" if self.head_done else "before answering"
                self.fail(httpx.RemoteProtocolError, f"the service closed the connection {where}")
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _read_left(self, exc: Exception) -> None:
        """Parse what the kernel still holds of the answer when the loop dropped it.

        A service that answers early (``413`` before reading the body) and closes
        resets the connection as more of the body arrives. A write that then fails
        makes the loop drop the connection at once, without reading the answer that
        had already arrived (the kernel keeps it readable, before the reset): read it
        here, non-blocking, while the socket is still open (the loop closes it after
        this callback). Plain TCP only: TLS records would need the TLS layer.
        """
        sock, self._socket = self._socket, None
        if sock is None or not isinstance(exc, OSError):
            return
        budget = MAX_HEAD_BYTES + HIGH_WATER
        while budget > 0 and self.parser is not None and not self.complete:
            try:
                data = os.read(sock.fileno(), min(budget, 65536))
            except OSError:  # nothing more (EAGAIN), the reset itself, or a closed socket
                return
            if not data:
                return
            budget -= len(data)
            self.data_received(data)
            if self.error is not None:
                return

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- llhttp callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second answer to one request
            raise _Unexpected("unexpected data after the answer")
        self.headers = []
        self.head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise ValueError("response head too large")
        if not self.head_done:  # trailer fields never join the head (RFC 9110 section 6.5.1)
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim answer: llhttp ends it with no body; the real one follows
            if status == 101:
                raise ValueError("protocol switch not supported")
            return
        self.status = status
        self.head_done = True
        if self.head_request:
            self.complete = True
            self._wake()
            raise _StopParsing
        if status in (204, 304):  # no body, whatever the fields say
            self._wake()
            return
        if foreign_coding(self.headers):
            raise ValueError("a transfer coding other than chunked")
        self.close_delimited = _close_delimited(self.headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.pending += len(body)
        if self.limit is not None and self.pending > self.limit:
            raise ValueError(TOO_LARGE)
        if self.streaming:
            if self.pending > HIGH_WATER and not self.reading_paused and self.transport:
                self.reading_paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:  # end of a 1xx interim answer
            return
        assert self.parser is not None
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake()


def _declares_at_most(headers: list[tuple[bytes, bytes]], limit: int) -> bool:
    """A Content-Length answer of at most ``limit`` bytes (llhttp refused conflicting ones)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return value.isdigit() and int(value) <= limit
    return False


def _close_delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    """Neither Content-Length nor Transfer-Encoding (only chunked gets this far): the
    body ends with the connection (RFC 9112 section 6.3)."""
    return not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


def _reason(exc: BaseException) -> str:
    context = exc.__context__
    if isinstance(context, ValueError):
        return str(context)
    return "malformed answer from the service"


class _Lost(Exception):
    """A reused connection closed before one response byte: safe to retry once."""


class StaleConnection(httpx.RemoteProtocolError):
    """A reused connection the service had closed, before one byte of answer (the
    keep-alive race), for a request that may be sent again at once; raised instead of
    re-sending when the transport is built with ``resend_stale=False`` (the caller
    re-sends, e.g. re-signed: the same bytes would repeat a signature's nonce)."""


class StreamedBodyTimeout(httpx.ReadTimeout):
    """A streamed answer's small declared body, read here whole, stalled past the read
    timeout: after its head, where the request's deadline (``DEADLINE``) ended, so the
    service's timeout and never the deadline's cut (the client must not report it so)."""


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read as it arrives; closing frees the connection and the slot."""

    def __init__(
        self, owner: Http1Transport, conn: _Connection, origin: _Origin, request: httpx.Request
    ) -> None:
        self._owner = owner
        self._conn: _Connection | None = conn
        self._origin = origin
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        while True:
            if self._conn is not conn:  # closed: the connection may serve another answer now
                raise httpx.StreamClosed()
            if conn.chunks:
                yield conn.take_chunk()
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error[0](conn.error[1], request=self._request)
            else:
                await conn.wait()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._owner._release(conn, self._origin)

    def __del__(self) -> None:
        # Dropped unclosed (e.g. the client went away before its body streamed): free the
        # slot on the loop's own thread, and never reuse a connection in an unknown state.
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to free
                conn.loop.call_soon_threadsafe(self._owner._abandon, conn)


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 connection pool per origin (http and https), llhttp-parsed."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_keepalive: int = 32,
        keepalive_expiry: float = 15,
        ssl_context: ssl.SSLContext | None = None,
        resend_stale: bool = True,
    ) -> None:
        self._resend_stale = resend_stale
        self._max_keepalive = max_keepalive
        self._keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        await acquire_slot(self._slots, request, _phase(request, timeouts, "pool"))
        try:
            return await self._exchange(request, timeouts)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}", request=request)
        origin = (scheme, url.host, url.port or (443 if scheme == b"https" else 80))
        body = _body(request)
        head, declared = _request_head(
            request, streamed=body is not None and not isinstance(body, bytes)
        )
        length = _declared_length(request, body, declared)
        retry_lost = not isinstance(body, AsyncIterable) and request.method in _IDEMPOTENT
        conn = self._idle_connection(origin)
        if conn is None:
            conn = await self._connect(origin, _phase(request, timeouts, "connect"), request)
        try:
            await self._send(conn, head, body, length, timeouts, request)
        except _Lost:
            if not retry_lost:
                raise httpx.RemoteProtocolError(
                    "the service closed the connection before answering", request=request
                ) from None
            if not self._resend_stale:
                # The service closed one idle connection: likely all (a restart), so the
                # caller's next send gets a fresh one, as this transport's own would.
                for idle in self._idle.pop(origin, []):
                    self._discard(idle)
                raise StaleConnection(
                    "the service had closed the reused connection", request=request
                ) from None
            conn = await self._connect(origin, _phase(request, timeouts, "connect"), request)
            await self._send(conn, head, body, length, timeouts, request)
        request.extensions[HEAD_RECEIVED] = True
        if request.extensions.get(BUFFERED):
            return await self._buffered(conn, origin, request)
        # A streamed answer's deadline ends at its head: its body (however long a download
        # takes) is bounded per pause by the read timer, which reschedules without it.
        conn.deadline = None
        small = request.extensions.get(BUFFER_DECLARED)
        if small is not None and _declares_at_most(conn.headers, small):
            conn.limit = small  # the framing holds it to the declared length anyway
            try:
                return await self._buffered(conn, origin, request)
            except httpx.ReadTimeout as exc:  # the read timer's alone: the deadline had ended
                raise StreamedBodyTimeout(str(exc), request=request) from None
        conn.streaming = True
        if conn.pending > HIGH_WATER and conn.transport is not None:
            conn.reading_paused = True
            conn.transport.pause_reading()
        return httpx.Response(
            status_code=conn.status,
            headers=conn.headers,
            stream=_ResponseStream(self, conn, origin, request),
            extensions=_HTTP11,
        )

    async def _send(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes | AsyncIterable[bytes] | None,
        length: int | None,
        timeouts: dict[str, float | None],
        request: httpx.Request,
    ) -> None:
        """Write the request and wait for the response head (or the exchange's failure)."""
        extensions = request.extensions
        conn.begin(
            request.method == "HEAD",
            extensions.get(MAX_BUFFERED) if extensions.get(BUFFERED) else None,
        )
        reused = conn.idle_since > 0  # a fresh connection has never been idle
        transport = conn.transport
        if conn.closed or transport is None:
            self._discard(conn)
            raise _Lost if reused else httpx.RemoteProtocolError("closed", request=request)
        try:
            if isinstance(body, bytes):
                transport.write(head + body)
                # a peer that does not read
                await conn.drain(_phase(request, timeouts, "write"), request)
            else:
                transport.write(head)
                if body is not None:
                    write = _phase(request, timeouts, "write")
                    await self._stream_body(conn, body, length, request, write)
            conn.arm_read_timeout(timeouts.get("read"), extensions.get(DEADLINE))
            while not conn.head_done and conn.error is None:
                await conn.wait()
        except BaseException:
            self._discard(conn)
            raise
        if conn.error is not None:
            self._discard(conn)
            kind, message = conn.error
            if reused and kind is httpx.RemoteProtocolError and not conn.any_byte:
                raise _Lost
            if conn.any_byte:  # the answer had begun: a timeout now is not retryable
                request.extensions[HEAD_RECEIVED] = True
            raise kind(message, request=request)

    async def _stream_body(
        self,
        conn: _Connection,
        body: AsyncIterable[bytes],
        length: int | None,
        request: httpx.Request,
        write_timeout: float | None,
    ) -> None:
        """Send a streamed body, chunked unless the request declared its ``length``."""
        remaining = length
        held = b""  # a declared body's last byte: sent only once the body ended without error
        try:
            async for chunk in body:
                if not chunk:
                    continue
                transport = conn.transport
                if conn.closed or transport is None or transport.is_closing():
                    # The answer (or the failure) is already in, or a write failed (the
                    # loop is closing the connection); stop sending. The body's end (and
                    # its check) is never reached here: say so to the caller.
                    request.extensions[BODY_UNSENT] = True
                    return
                if remaining is None:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    remaining -= len(chunk)
                    if remaining < 0:
                        raise httpx.LocalProtocolError(
                            "body longer than its Content-Length", request=request
                        )
                    if remaining == 0:
                        chunk, held = chunk[:-1], chunk[-1:]
                    transport.write(chunk)
                await conn.drain(write_timeout, request)
        except BaseException:
            conn.abort()  # the service must never see a complete request
            raise
        if remaining:
            conn.abort()
            raise httpx.LocalProtocolError("body shorter than its Content-Length", request=request)
        end = b"0\r\n\r\n" if remaining is None else held
        if not end:
            return
        transport = conn.transport
        if not (conn.closed or transport is None or transport.is_closing()):
            transport.write(end)
            if not transport.is_closing():  # a failed write closes it at once
                return
        request.extensions[BODY_UNSENT] = True  # the end could not be sent

    async def _buffered(
        self, conn: _Connection, origin: _Origin, request: httpx.Request
    ) -> httpx.Response:
        """Read the whole body and free the connection and the slot at once."""
        try:
            while not conn.complete and conn.error is None:
                await conn.wait()
        except BaseException:
            self._discard(conn)
            raise
        if conn.error is not None:
            self._discard(conn)
            raise conn.error[0](conn.error[1], request=request)
        chunks = conn.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status, headers = conn.status, conn.headers
        self._release(conn, origin)
        return buffered_response(status, headers, body)

    # --- the pool -----------------------------------------------------------------------

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_expiry:
                return conn
            self._discard(conn)
        return None

    async def _connect(
        self, origin: _Origin, connect_timeout: float | None, request: httpx.Request
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl is None:  # built once: loading the trust store costs milliseconds
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), host, port, ssl=tls
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("connect timed out", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(type(exc).__name__, request=request) from None
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection, origin: _Origin) -> None:
        """The exchange is over: keep the connection when it may serve another; free the slot."""
        if conn.finish():
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self._max_keepalive:
                conn.idle_since = asyncio.get_running_loop().time()
                idle.append(conn)
            else:
                self._discard(conn)
        else:
            self._discard(conn)
        self._slots.release()

    def _abandon(self, conn: _Connection) -> None:
        """A streamed answer dropped without ``aclose()``: close its connection, free its slot."""
        self._discard(conn)
        self._slots.release()

    def _discard(self, conn: _Connection) -> None:
        conn.finish()
        conn.abort()
        self._open.discard(conn)

    async def aclose(self) -> None:
        for conn in list(self._open):
            if conn.parser is not None:  # an answer in flight is cut short, not ended
                conn.fail(httpx.RemoteProtocolError, "the transport was closed")
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
        self._open.clear()
        self._idle.clear()


def _body(request: httpx.Request) -> bytes | AsyncIterable[bytes] | None:
    """Bytes when the request body is in memory, else its async stream."""
    try:
        return request.content or None
    except httpx.RequestNotRead:
        stream = request.stream
        assert isinstance(stream, AsyncIterable)
        return stream


def _declared_length(
    request: httpx.Request, body: bytes | AsyncIterable[bytes] | None, declared: bytes | None
) -> int | None:
    """A declared Content-Length is one number, an in-memory body's own length (no desync)."""
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()) or (
        not isinstance(body, AsyncIterable) and int(declared) != len(body or b"")
    ):
        raise httpx.LocalProtocolError("Content-Length unlike the body", request=request)
    return int(declared)


def _request_head(request: httpx.Request, *, streamed: bool) -> tuple[bytes, bytes | None]:
    """Request line and fields, and the Content-Length declared (copies joined, as httpx does).

    CR, LF or NUL inside any field, or a name not a token, is refused.
    """
    method = request.method
    if not _TOKEN.fullmatch(method):
        raise httpx.LocalProtocolError(f"invalid method {method!r}", request=request)
    lines = [b"%b %b HTTP/1.1" % (method.encode("ascii"), request.url.raw_path)]
    lengths: list[bytes] = []
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered in _DROP:
            continue
        if lowered == b"content-length":
            lengths.append(value)
        if not _BYTES_TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(f"invalid field name {name!r}", request=request)
        lines.append(b"%b: %b" % (name, value))
    if streamed and not lengths:
        lines.append(b"Transfer-Encoding: chunked")
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines) or b"\0" in head:
        raise httpx.LocalProtocolError("CR, LF or NUL in the request head", request=request)
    return head, b", ".join(lengths) if lengths else None
