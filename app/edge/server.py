"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, bounded against slow clients.

uvicorn 0.54 has no header-read timeout: its keep-alive timer runs only between
requests and is cancelled by the first byte of the next one, and nothing is armed
when a connection opens, so a client that sends its head one byte a second (or
nothing at all) holds a connection for ever. ``GatewayHttpProtocol`` adds one:

- armed when a connection opens and when the first byte of a later request on it
  arrives; cancelled once the request head is complete;
- when it fires, a connection that sent part of a head gets a ``408`` problem and
  is closed; one that sent nothing is just closed (answering an idle, pre-opened
  connection confuses browsers); one whose previous answer is still being written
  (a pipelined head dribbling in) is closed after that answer, as on shutdown.

uvicorn also keeps reading (and discarding) the rest of a body the app answered
without reading (a 401 before the upload, a 413 on a declared length), and every
byte of it cancels the keep-alive timer: a client that dribbles that body held
the connection for ever. The protocol gives the rest ``body_timeout`` seconds from
the answer, then closes (nginx's ``lingering_time``); once the rest is in, the idle
connection gets the keep-alive timer its bytes cancelled. While the app reads a
body, the edge middleware bounds its pace (``app.edge.correlation.body_wait``).

Nothing bounded a client that stops *reading*: uvicorn's ``send`` waits for the
transport to drain for ever, and a pass-through stream keeps its service connection
(one of the pool's) checked out meanwhile, so a few slow readers could exhaust a
service's pool. The protocol arms ``send_timeout`` when the transport's buffer goes
over its high-water mark and disarms it when it drains; when it fires the connection
is dropped (nginx's ``send_timeout``): the app sees a disconnect, the stream stops
and its service connection is released. An answer that fits the buffer never arms it.

uvicorn's ``limit_concurrency`` caps connections and in-flight requests per
process; above it uvicorn answers with its plain-text 503. The protocol serves
the gateway's ``503 unavailable`` problem instead (the probes and ``/metrics``
are still served, a few at once, on a connection then closed: ``PROBE_PATHS``),
and a ``400 bad_request`` problem where uvicorn would answer a request httptools
cannot parse in plain text, so every error stays problem+json. The choice, weighed against an ASGI
middleware and a proxy in front, is recorded in ``app/api/docs/operations.md``
("Slow clients").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, cast

import orjson
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.ids import uuid4_hex
from app.core.logging import flush_log_lines, get_logger
from app.core.problems import PROBLEM_CONTENT_TYPE, problem_body, problem_response
from app.core.scope import SERVER_ANSWERED_KEY
from app.edge.correlation import request_corr_id
from app.ops.metrics import UNMATCHED_ROUTE, observe_request

log = get_logger("gateway.edge")


class Refusal(NamedTuple):
    """An answer the HTTP layer gives before any stage runs; the connection is closed.

    Each is rendered when given, with a fresh corr_id in its problem and ``X-Request-ID``
    and on its one log line (``event``): a client that reports the refusal can be found
    in the log, although no request (hence no decision) was made of its bytes.
    """

    status: int
    reason: bytes
    code: str
    title: str
    detail: str
    event: str

    def answer(self, corr_id: str) -> bytes:
        body = orjson.dumps(problem_body(self.status, self.code, self.title, self.detail, corr_id))
        head = (
            b"HTTP/1.1 %d %b\r\n"
            b"content-type: %b\r\n"
            b"connection: close\r\n"
            b"x-request-id: %b\r\n"
            b"content-length: %d\r\n\r\n"
            % (self.status, self.reason, _PROBLEM_TYPE, corr_id.encode("latin-1"), len(body))
        )
        return head + body


_PROBLEM_TYPE = PROBLEM_CONTENT_TYPE.encode()
_FRAMING = "framing_refused"

TIMEOUT_ANSWER = Refusal(
    408,
    b"Request Timeout",
    "request_timeout",
    "Request timeout",
    "The request head was not received in time.",
    "header_timeout",
)
# What httptools cannot parse (a bad request line, a raw octet above 0x7f in the
# target, a malformed field): uvicorn answered text/plain; the gateway answers this.
MALFORMED_ANSWER = Refusal(
    400,
    b"Bad Request",
    "bad_request",
    "Bad request",
    "The request is not valid HTTP/1.1.",
    "request_malformed",
)
# A request head (request line and fields) larger than this is refused before it is
# parsed whole: httptools builds a field value by concatenation (a 64 MiB field held the
# event loop for seconds) and keeps every field. nginx's default is 4 buffers of 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
# (1.0 has no chunked coding; a 1.0 intermediary in front may have framed the body by
# Content-Length or by the close), so it is refused and the connection closed, before
# the body is read either way: two readings of one body are request smuggling.
HTTP10_TRANSFER_ENCODING_ANSWER = Refusal(
    400,
    b"Bad Request",
    "bad_request",
    "Bad request",
    "An HTTP/1.0 request cannot carry Transfer-Encoding.",
    _FRAMING,
)
# RFC 9112 section 6.3: a request whose Transfer-Encoding does not end in chunked has
# no length a recipient can find (it waited for the close: a hang, then a 408); and
# section 6.1: a transfer coding the server does not know SHOULD be a 501 (the
# gateway decodes none but chunked; "gzip, chunked" sent the service gzip bytes).
TRANSFER_ENCODING_NOT_CHUNKED_ANSWER = Refusal(
    400,
    b"Bad Request",
    "bad_request",
    "Bad request",
    "A request's Transfer-Encoding must be chunked (RFC 9112 section 6.3).",
    _FRAMING,
)
TRANSFER_CODING_UNSUPPORTED_ANSWER = Refusal(
    501,
    b"Not Implemented",
    "not_implemented",
    "Not implemented",
    "The gateway decodes no transfer coding but chunked.",
    _FRAMING,
)
# Requests queued on one connection behind the one being answered (HTTP/1.1 pipelining).
# The one after them is refused once the queued ones are answered, and the connection
# closed: the client sends the rest again, on a new connection.
MAX_PIPELINED = 64
# llhttp ends a request that asks to upgrade (Upgrade, and "upgrade" in Connection) at
# its head, whatever its Content-Length or Transfer-Encoding say; with no protocol to
# switch to, uvicorn then parsed the body's bytes as the next request: two readings
# of one body (a front proxy that keeps the connection would get two answers for one
# request). Such a request with a body is refused; without one it is served as HTTP/1.1.
UPGRADE_WITH_BODY_ANSWER = Refusal(
    400,
    b"Bad Request",
    "bad_request",
    "Bad request",
    "A request that asks to upgrade the protocol cannot carry a body here.",
    _FRAMING,
)
PIPELINE_FULL_ANSWER = Refusal(
    503,
    b"Service Unavailable",
    "unavailable",
    "Service unavailable",
    f"More than {MAX_PIPELINED} requests were pipelined on one connection; the rest were "
    "not read: send them again on a new connection.",
    "pipeline_full",
)
FRAGMENT_ANSWER = Refusal(
    400,
    b"Bad Request",
    "invalid_path",
    "Invalid request path",
    "The request target carries a fragment (#); send the path and query only.",
    "fragment_refused",
)
# A running request's chunked body that is not valid chunked coding (logged where found).
BODY_MALFORMED_ANSWER = Refusal(
    400,
    b"Bad Request",
    "bad_request",
    "Bad request",
    "The request body is not valid HTTP/1.1 framing (chunked coding).",
    "body_malformed",
)
HEAD_TOO_LARGE_ANSWER = Refusal(
    431,
    b"Request Header Fields Too Large",
    "request_header_fields_too_large",
    "Request header fields too large",
    f"The request head exceeds {MAX_HEAD_BYTES} bytes.",
    "head_too_large",
)


# Served above the cap too (each on a connection closed after its answer, at most
# MAX_PROBES_OVER_CAP at once): the probes and the metrics are how an operator sees an
# overloaded gateway, and cost no downstream call.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


# At most this many probe answers run at once above the cap; more get the 503.
MAX_PROBES_OVER_CAP = 4


class ProbeOverCap:
    """A probe served above the cap, while fewer than ``MAX_PROBES_OVER_CAP`` run.

    Counted when it starts (one event loop: no two start at once), so however many
    connections ask, the tasks above the cap stay bounded; the others get the 503.
    """

    running = 0

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if ProbeOverCap.running >= MAX_PROBES_OVER_CAP:
            await overloaded(scope, receive, send)
            return
        _log_over_cap(scope, served=True)
        ProbeOverCap.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            ProbeOverCap.running -= 1


# uvicorn's own warning above the cap: "over_capacity" replaces it (below).
UVICORN_OVER_CAP_MESSAGE = "Exceeded concurrency limit."
# uvicorn's warning before send_400_response: the refusal's own line (with its corr_id
# and the reason) replaces it.
UVICORN_INVALID_MESSAGE = "Invalid HTTP request received."
# uvicorn's error line for an exception out of the app (a cancelled request's too).
UVICORN_APP_EXCEPTION_MESSAGE = "Exception in ASGI application"


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a head declares a body (a Transfer-Encoding, or a length other than 0)."""
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
        for name, value in headers
    )


class _UvicornContextFreeFilter(logging.Filter):
    """Drop uvicorn's context-free warnings above the cap and for a request it cannot
    parse (the edge logs ``over_capacity`` and the refusal's line, with a corr_id), and
    its error traceback for a request that graceful shutdown cancelled: the edge has
    answered it 503 and logged ``request_cancelled`` with its corr_id; the traceback
    (some 40 frames, at error level, per request, on every rollout) said nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in (UVICORN_OVER_CAP_MESSAGE, UVICORN_INVALID_MESSAGE):
            return False
        cancelled = record.exc_info is not None and isinstance(
            record.exc_info[1], asyncio.CancelledError
        )
        return not (cancelled and str(record.msg).startswith(UVICORN_APP_EXCEPTION_MESSAGE))


# On the logger uvicorn's protocol writes to (a logger's filters survive the gateway's
# handler set-up); once per process, when the protocol is first imported.
logging.getLogger("uvicorn.error").addFilter(_UvicornContextFreeFilter())


def _log_over_cap(scope: Any, served: bool) -> str:
    """One ``over_capacity`` line; the request's corr_id (a served probe's edge keeps it)."""
    corr_id = request_corr_id(scope)
    # The target as sent (printable ASCII: httptools refuses anything else), not yet
    # normalised by the edge; bounded, as it is not yet checked either.
    raw: bytes = scope.get("raw_path") or b""
    log.warning(
        "over_capacity",
        corr_id=corr_id,
        method=scope["method"],
        path=raw[:256].decode("latin-1"),
        served=served,
    )
    return corr_id


async def overloaded(scope: Any, receive: Any, send: Any) -> None:
    """The answer above ``limit_concurrency``: problem+json, and the connection closed.

    Counted as a request (route ``<unmatched>``: none was matched) so that an alert on
    the 5xx rate sees the gateway shedding load.
    """
    started = time.perf_counter()
    corr_id = _log_over_cap(scope, served=False)
    response = problem_response(
        503,
        "unavailable",
        "Service unavailable",
        "The gateway is serving as many connections as it may; retry later.",
        corr_id,
        headers={"retry-after": "1", "connection": "close", "x-request-id": corr_id},
    )
    await response(scope, receive, send)
    observe_request(UNMATCHED_ROUTE, scope["method"], 503, time.perf_counter() - started)


# A tick's writes above this many bytes go out at once (bounded memory, flow control).
COALESCE_LIMIT = 64 * 1024


class CoalescingTransport:
    """A connection's transport whose writes within one loop tick leave in one call.

    uvicorn writes a response's head and its body with two ``transport.write``
    calls; uvloop sends each at once, so every small answer cost two ``send``
    system calls and two TCP segments (each waking the client), and on loopback
    the sender's call also runs the receiver's side of the stack. Here the writes
    of one tick are joined and sent by one callback at the end of that tick (or
    at once past ``COALESCE_LIMIT`` bytes, and before a close), in the order they
    were made: the protocol's own writes (100 Continue, 400, 408) share the queue.
    Everything else is the wrapped transport's.
    """

    __slots__ = ("_loop", "_on_backlog", "_pending", "_size", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        on_backlog: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        # Called when a close leaves bytes unsent: the close then waits for the client.
        self._on_backlog = on_backlog

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size > COALESCE_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send what this tick wrote (nothing once the connection is closing).

        The log lines queued so far are written first (``flush_log_lines``): a
        request's decision line is on stderr before its answer is on the socket,
        whether the answer leaves at the end of the tick or at once (past the limit).
        """
        if not self._pending:
            return
        flush_log_lines()
        pending, self._pending, self._size = self._pending, [], 0
        if self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.flush()
        self._transport.close()
        if self._on_backlog is not None and self._transport.get_write_buffer_size():
            self._on_backlog()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _FaultyFraming(Exception):
    """Raised in a parser callback: the request's framing cannot be trusted."""


class GatewayHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol``: header, unread-body and send timeouts, problem+json 400 and
    503, joined writes."""

    def __init__(
        self,
        *args: Any,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        send_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False
        self._rest_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._lost = False
        # Between on_message_begin and on_message_complete; the head's bytes so far.
        self._in_message = False
        self._in_head = True
        self._head_size = 0
        # The head as parsed (target and fields): a head that arrived whole in one read
        # was parsed before the read's size could be weighed against the limit.
        self._parsed_head = 0
        self._events = 0  # messages begun and completed: which reads carried a request
        self._refusal = MALFORMED_ANSWER  # what send_400_response answers
        # A refusal waits for the answers still owed on the connection (a pipelined
        # request before the refused one): written, then the close, after the last.
        self._refused = False
        self._pending_refusal: bytes | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control keeps the real transport (its buffer, its pause/resume).
        self.transport = cast(
            asyncio.Transport, CoalescingTransport(transport, self.loop, self._closed_with_backlog)
        )
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # nothing after a refused head is read (nor parsed)
            return
        if self._in_head:
            self._head_size += len(data)
        events = self._events
        super().data_received(data)
        # Still in the head (a completed head reset the count; body bytes in the same
        # read are not the head's): past the limit, refused before another byte is fed.
        # Not twice: a head that came whole in this read was refused when it completed.
        over = self._in_head and self._head_size > MAX_HEAD_BYTES
        if over and not self._lost and not self._refused:
            self._refuse_head()
            return
        # A read that began and ended no message outside one (blank lines between
        # requests) cancelled uvicorn's keep-alive timer and armed nothing: a client
        # sending "\r\n" every few seconds held the connection for ever. Such bytes
        # start the header timeout now (a read that carried a request arms nothing).
        if (
            events == self._events
            and not self._in_message
            and self._header_timer is None
            and not self._lost
        ):
            self._arm()

    def on_message_begin(self) -> None:
        # A request begun in the same read as the end of an answered body: not idle.
        self._unset_keepalive_if_required()
        super().on_message_begin()
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._arm()
        self._head_bytes = True
        self._in_message = True
        self._events += 1

    def on_url(self, url: bytes) -> None:
        self._parsed_head += len(url)
        if b"#" in url:
            # A request target has no fragment (RFC 9112 section 3.2); httptools drops
            # it, so the signature over the path as sent could not match the path routed.
            self._refusal = FRAGMENT_ANSWER
            raise _FaultyFraming
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Fields after the head are a chunked body's trailer: uvicorn appended them to
        # the scope's headers, where the stages read them as the (signed) head's. They
        # are discarded (RFC 9110 section 6.5.1 allows it); nothing here uses trailers.
        if not self._in_head:
            return
        self._parsed_head += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        parsed, self._parsed_head = self._parsed_head, 0
        if parsed > MAX_HEAD_BYTES:  # it came whole in one read: refused all the same
            self._refusal = HEAD_TOO_LARGE_ANSWER
            raise _FaultyFraming
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # httptools takes "HTTP/0.9" and "HTTP/2.0" request lines and frames them as
            # 1.1 (a chunked body too); a proxy in front would not: refused, as malformed.
            raise _FaultyFraming
        codings = [v for name, v in self.headers if name == b"transfer-encoding"]
        if codings and version == "1.0":
            # Raised inside the parser's callback: httptools stops this read and uvicorn
            # answers with send_400_response, which closes the connection.
            self._refusal = HTTP10_TRANSFER_ENCODING_ANSWER
            raise _FaultyFraming
        if codings:
            refusal = _transfer_coding_refusal(codings)
            if refusal is not None:
                self._refusal = refusal
                raise _FaultyFraming
        if self.parser.should_upgrade() and _declares_body(self.headers):  # llhttp's own test
            self._refusal = UPGRADE_WITH_BODY_ANSWER
            raise _FaultyFraming
        if len(self.pipeline) >= MAX_PIPELINED:
            # Every request of a read is parsed and queued at once (a 256 KiB read holds
            # ~7,000 small ones): unbounded, one connection grew the process by 700 MB.
            self._refusal = PIPELINE_FULL_ANSWER
            raise _FaultyFraming
        self._in_head = False
        self._head_size = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        self._in_head = True
        self._events += 1
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self._rest_timer is not None:
            # The rest of an answered request's body has arrived. Every byte of it
            # cancelled uvicorn's keep-alive timer, and nothing re-arms it: the idle
            # connection would be held for ever. It is idle now, as after an answer.
            self._cancel_rest_timer()
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        super().on_message_complete()

    def on_response_complete(self) -> None:
        refusal = self._pending_refusal
        if refusal is not None and not self.pipeline and not self.transport.is_closing():
            self._pending_refusal = None  # the last answer owed is out: now the refusal
            self.transport.write(refusal)
            self.transport.close()
        super().on_response_complete()
        cycle = self.cycle
        # This request's answer is out (not a pipelined successor's) but its body is not
        # all here: the rest gets body_timeout, not the keep-alive timer it keeps resetting.
        if (
            cycle is not None
            and cycle.response_complete
            and cycle.more_body
            and not self.transport.is_closing()
        ):
            self._rest_timer = self.loop.call_later(self.body_timeout, self._rest_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm()
        self._cancel_rest_timer()
        self._cancel_send_timers()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The transport's buffer is over its high-water mark: the client is not reading.
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        if self._send_timer is not None:  # the drain timer of a closing connection stays
            self._send_timer.cancel()
            self._send_timer = None
        super().resume_writing()

    def _refuse_head(self) -> None:
        self._disarm()
        self._in_head = False
        self._refuse(HEAD_TOO_LARGE_ANSWER)

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn warned twice for every request that asks to upgrade ("Unsupported
        # upgrade request." and a hint to install a WebSocket library), without a
        # corr_id: log noise any client could make. ``ws="none"`` is the gateway's
        # choice; the request is served as HTTP/1.1 and logged by the edge like any other.
        return

    def send_400_response(self, msg: str) -> None:
        # Called by uvicorn (after its own log line) for a request httptools rejects, or
        # one this protocol refused while parsing (``_refusal``).
        self._refuse(self._refusal)

    @property
    def _peer(self) -> str | None:
        """The client's address, for log lines."""
        return self.client[0] if self.client else None

    def _logged_answer(self, refusal: Refusal) -> bytes:
        """``refusal`` rendered with a fresh corr_id, logged once with it."""
        corr_id = uuid4_hex()
        log.info(refusal.event, corr_id=corr_id, status=refusal.status, client=self._peer)
        return refusal.answer(corr_id)

    def _refuse(self, refusal: Refusal) -> None:
        """``answer`` and the close, after the answers still owed on this connection.

        A pipelined request before the refused one is answered first (in order, as
        HTTP/1.1 requires), then the refusal; nothing after the refused head is read.
        """
        self._refused = True
        cycle = self.cycle
        if cycle is not None and self._in_message and not self._in_head:
            # The newest request's own body cannot be parsed (a bad chunk size, a chunk
            # line without CR): it never arrives whole, so its app would wait for it.
            queued = next((entry for entry in self.pipeline if entry[0] is cycle), None)
            if queued is not None:
                self.pipeline.remove(queued)  # never run; refused after the answers owed
            elif not cycle.response_complete:
                self._refuse_body(cycle)
                return
            elif not self.pipeline:  # answered already (a 401 before its body): no second
                scope: Any = cycle.scope
                log.info("body_malformed", corr_id=request_corr_id(scope), response_started=True)
                self.transport.close()
                return
        answer = self._logged_answer(refusal)
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            self._pending_refusal = answer  # written by on_response_complete
            self.flow.pause_reading()
            return
        self.transport.write(answer)
        self.transport.close()

    def _refuse_body(self, cycle: Any) -> None:
        """A running request whose body's framing broke: its 400 now (if its answer has
        not begun), the app told the client is gone, the connection closed."""
        # The edge's corr_id, or the one it will take (the app may not have run yet).
        corr_id = request_corr_id(cycle.scope)
        state = cycle.scope["state"]
        log.info("body_malformed", corr_id=corr_id, response_started=cycle.response_started)
        if not cycle.response_started:
            state[SERVER_ANSWERED_KEY] = 400
            self.transport.write(BODY_MALFORMED_ANSWER.answer(corr_id))
        cycle.disconnected = True  # its receive gets http.disconnect, its sends are dropped
        cycle.message_event.set()
        self.transport.close()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn picks its text/plain ``service_unavailable`` above limit_concurrency.
        if app is service_unavailable:
            scope = cycle.scope
            if scope["path"] in PROBE_PATHS and scope["method"] in ("GET", "HEAD"):
                # Served, then the connection closed: a liveness probe that failed while
                # the gateway was merely busy would have the pod restarted under load.
                cycle.keep_alive = False
                app = ProbeOverCap(self.app)
            else:
                app = overloaded
        super()._start_asgi_task(cycle, app)

    def _arm(self) -> None:
        self._head_bytes = False
        self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_rest_timer(self) -> None:
        if self._rest_timer is not None:
            self._rest_timer.cancel()
            self._rest_timer = None

    def _cancel_send_timers(self) -> None:
        for timer in (self._send_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._send_timer = self._drain_timer = None

    def _closed_with_backlog(self) -> None:
        # uvloop's close waits, without a limit, for the buffer to drain: the client gets
        # send_timeout for all of it (not reset by a partial drain, as the send timer is).
        if self._drain_timer is None and not self._lost:
            self._drain_timer = self.loop.call_later(self.send_timeout, self._send_timed_out)

    def _send_timed_out(self) -> None:
        self._cancel_send_timers()
        if self._lost:
            return
        # The request whose answer was being written (the newest: answers go in order).
        scope: Any = self.cycle.scope if self.cycle is not None else None
        corr_id = request_corr_id(scope) if scope is not None else None
        log.info("send_timeout", corr_id=corr_id, client=self._peer)
        # abort, not close: close would wait for the very buffer the client is not reading
        # (and a connection already closing is just such a wait).
        self.transport.abort()

    def _rest_timed_out(self) -> None:
        self._rest_timer = None
        if not self.transport.is_closing():
            log.info("body_timeout", after_answer=True, client=self._peer)
            self.transport.close()

    def _timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            log.info("header_timeout", client=self._peer)
            self.cycle.keep_alive = False  # close once the answer in progress is written
            return
        if self._head_bytes:  # part of a head: answered, and the answer has a corr_id
            self.transport.write(self._logged_answer(TIMEOUT_ANSWER))
        else:  # an idle connection: just closed, nothing to find it by
            log.info("header_timeout", client=self._peer)
        self.transport.close()


def _transfer_coding_refusal(fields: list[bytes]) -> Refusal | None:
    """The answer for a request's ``Transfer-Encoding`` fields, or ``None`` for chunked."""
    codings = [c.strip().lower() for field in fields for c in field.split(b",")]
    if codings[-1] != b"chunked":
        return TRANSFER_ENCODING_NOT_CHUNKED_ANSWER
    if len(codings) > 1:
        return TRANSFER_CODING_UNSUPPORTED_ANSWER
    return None
