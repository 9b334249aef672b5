"""The edge: a pure ASGI middleware that opens and closes every request.

It binds ``corr_id`` into the log context (``app.core.logcontext``; every line
logged while the request runs, downstream calls included, carries it), echoes
``X-Request-ID``, caps the request body and bounds how slowly it may arrive, logs
one summary line, and turns an unexpected exception into a 500 problem+json without
internals. A client that disconnects mid-request (Starlette's ``ClientDisconnect``)
is not an error of ours: one ``client_disconnected`` line, no answer, status 499 in
the summary and metrics.
It is pure ASGI rather than ``BaseHTTPMiddleware`` so the context bound here is
seen by the endpoint task.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import logcontext
from app.core.errors import (
    BadRequest,
    GatewayError,
    InvalidPath,
    PayloadTooLarge,
    RequestTimeout,
    ResponseAborted,
    ServiceUnavailable,
)
from app.core.ids import uuid4_hex
from app.core.logging import get_logger
from app.core.problems import problem_response
from app.core.scope import SERVER_ANSWERED_KEY, SIGNED_PATH_KEY
from app.edge.paths import normalize_request_path
from app.ops.metrics import observe_request, route_label

log = get_logger("gateway.edge")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = REQUEST_ID_HEADER.encode("ascii")
# nginx's "client closed request": counted and logged, never answered (nobody is there).
CLIENT_CLOSED_REQUEST = 499
# Accepted incoming ids: 8-128 visible, log-safe characters (uuid, ulid, trace ids).
_WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
# A path the edge refused (never normalised) is logged cut to this many characters.
REFUSED_PATH_CHARS = 256


def incoming_request_id(scope: Scope) -> str | None:
    """Return the caller's X-Request-ID if it is well-formed, else ``None``."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _WELL_FORMED_ID.fullmatch(text) else None
    return None


def request_corr_id(scope: Scope) -> str:
    """The request's corr_id, kept in its scope's state: the one it already has, else its
    well-formed X-Request-ID, else a new one. The protocol may take it before the edge
    runs (a broken body, a request above the connection cap); the edge then keeps it."""
    state = scope.setdefault("state", {})
    corr_id: str = state.get("corr_id") or incoming_request_id(scope) or uuid4_hex()
    state["corr_id"] = corr_id
    return corr_id


def _check_head(scope: Scope, max_body_bytes: int) -> None:
    """The head's framing, in one pass over its fields: one Host, a body within the cap.

    RFC 9112 section 3.2: an HTTP/1.1 request with no Host field, or with several, is a
    400 (``@authority``, which a signature may cover, and forwarded headers read it;
    with two, the gateway and a proxy in front of it may each read another). A
    declared ``Content-Length`` over ``max_body_bytes`` is a 413 before any is read.
    """
    hosts = 0
    declared: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name == b"host":
            hosts += 1
        elif name == b"content-length" and declared is None:
            declared = value
    if hosts != 1 and scope.get("http_version") == "1.1":
        raise BadRequest("An HTTP/1.1 request carries exactly one Host field.")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            return
        if length > max_body_bytes:
            raise PayloadTooLarge(f"The request body exceeds {max_body_bytes} bytes.")


def refused_path(scope: Scope) -> str:
    """The path of a request refused before it was normalised, for its log line and span:
    as sent (percent-escapes kept; httptools admits printable ASCII only), at most
    ``REFUSED_PATH_CHARS`` characters. uvicorn's ``path`` is decoded (``%0A`` a newline)
    and as long as the head allows (64 KiB)."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
    return str(raw.decode("latin-1").partition("?")[0][:REFUSED_PATH_CHARS])


def with_request_id(
    headers: Iterable[tuple[bytes, bytes]], request_id: bytes
) -> list[tuple[bytes, bytes]]:
    """The response's fields with ``x-request-id`` set to ``request_id`` (any copy replaced)."""
    fields = [(name, value) for name, value in headers if name.lower() != _REQUEST_ID]
    fields.append((_REQUEST_ID, request_id))
    return fields


def body_wait(received: int, waited: float, timeout: float, min_rate: int) -> float:
    """Seconds the edge still waits for a body's next piece (0 or less: time is up).

    Each wait is at most ``timeout``; all the waits of one body together at most
    ``timeout + received / min_rate`` (Apache mod_reqtimeout's ``MinRate``): a client
    keeps its connection while it sends at least ``min_rate`` bytes a second on
    average, without a pause above ``timeout``. ``waited`` counts only time spent
    waiting for the client, not time the gateway spent elsewhere (a pass-through
    body is read as fast as the service takes it). ``min_rate`` 0 bounds pauses only.
    """
    if min_rate == 0:
        return timeout
    return min(timeout, timeout + received / min_rate - waited)


class EdgeMiddleware:
    """Correlation id, body cap and pace, request summary and last-resort 500.

    Body limits apply while the app reads the body (``receive``); a GET costs none of
    it. What a client sends after an answer that did not wait for its body is
    bounded by the HTTP protocol (``app.edge.server``), which sees those bytes.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        body_timeout: float = 30.0,
        body_min_rate: int = 1024,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        corr_id = request_corr_id(scope)
        logcontext.clear()
        logcontext.bind(corr_id=corr_id)
        started_at = time.perf_counter()
        status = {"code": 500, "started": False}

        request_id = corr_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message["headers"] = with_request_id(message.get("headers", ()), request_id)
            await send(message)

        try:
            await self._dispatch(scope, receive, send_with_id, corr_id)
        except ClientDisconnect:
            # The client went away mid-request: nothing to answer, nobody to blame here.
            # The upstream request, if any, was aborted by the body iterator's exception.
            answered = scope["state"].get(SERVER_ANSWERED_KEY)
            if answered is None:
                log.info("client_disconnected", response_started=status["started"])
            if not status["started"]:
                status["code"] = answered or CLIENT_CLOSED_REQUEST
        except ResponseAborted as exc:
            log.warning("response_aborted", service=exc.service, reason=exc.reason)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when graceful shutdown runs out
            # (ops.graceful_shutdown_seconds); it would answer a plain-text 500. Nothing
            # else cancels a request task (a client that leaves is ClientDisconnect).
            log.warning("request_cancelled", response_started=status["started"])
            if not status["started"]:
                status["code"] = 503
                response = problem_response(
                    503,
                    ServiceUnavailable.code,
                    ServiceUnavailable.title,
                    "The gateway stopped before it could answer; retry the request.",
                    corr_id,
                    headers={"retry-after": "1", "connection": "close"},
                )
                await response(scope, receive, send_with_id)
            raise
        except Exception:
            log.exception("unhandled_error")
            if not status["started"]:
                response = problem_response(
                    500, "internal", "Internal error", "An unexpected error occurred.", corr_id
                )
                await response(scope, receive, send_with_id)
        finally:
            log.info(
                "request_completed",
                method=scope["method"],
                path=scope["path"],
                status=status["code"],
                duration_ms=round((time.perf_counter() - started_at) * 1000, 3),
            )
            logcontext.clear()
            elapsed = time.perf_counter() - started_at
            observe_request(route_label(scope), scope["method"], int(status["code"]), elapsed)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, corr_id: str) -> None:
        try:
            _check_head(scope, self.max_body_bytes)
            self._normalize(scope)
        except GatewayError as err:
            scope["path"] = refused_path(scope)  # what the summary line and the span show
            response = problem_response(err.status_code, err.code, err.title, err.detail, corr_id)
            await response(scope, receive, send)
            return
        refused: list[GatewayError] = []
        await self.app(scope, self._capped(receive, refused), self._send_refusal_if(refused, send))

    @staticmethod
    def _send_refusal_if(refused: list[GatewayError], send: Send) -> Send:
        """Answer 413 or 408 once the body broke a limit, whatever the app made of it.

        FastAPI turns any exception raised while it reads a body parameter into a
        400 "error parsing the body"; the client must still see why: 413 or 408.
        """

        async def send_or_refusal(message: Message) -> None:
            if not refused:
                await send(message)
            elif message["type"] == "http.response.start":
                err = refused[0]
                corr_id = logcontext.current().get("corr_id")
                response = problem_response(
                    err.status_code, err.code, err.title, err.detail, corr_id, headers=err.headers
                )
                await response({"type": "http"}, _no_receive, send)

        return send_or_refusal

    @staticmethod
    def _normalize(scope: Scope) -> None:
        """Route, decide and forward on one canonical path; keep the raw one for authn."""
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_text = raw.decode("latin-1").partition("?")[0]
        canonical = normalize_request_path(raw_text)
        if not canonical:
            raise InvalidPath()
        scope["state"][SIGNED_PATH_KEY] = raw_text
        scope["path"] = canonical
        scope["raw_path"] = canonical.encode("ascii")

    def _capped(self, receive: Receive, refused: list[GatewayError]) -> Receive:
        """Count body bytes as they arrive (a chunked body cannot exceed the cap) and
        bound each wait for them (``body_wait``); once the body is whole, ``receive``
        (waiting for a disconnect) is the server's own."""
        seen = 0
        waited = 0.0
        whole = False
        limit, timeout, min_rate = self.max_body_bytes, self.body_timeout, self.body_min_rate

        async def capped_receive() -> Message:
            nonlocal seen, waited, whole
            if whole:
                return await receive()
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, body_wait(seen, waited, timeout, min_rate))):
                    message = await receive()
            except TimeoutError:
                waited += time.monotonic() - started
                log.info("body_timeout", received=seen, waited_s=round(waited, 3))
                refused.append(
                    RequestTimeout(
                        "The request body did not arrive in time.",
                        headers={"connection": "close"},
                    )
                )
                raise refused[-1] from None
            waited += time.monotonic() - started
            if message["type"] != "http.request":
                whole = True  # http.disconnect
                return message
            seen += len(message.get("body", b""))
            whole = not message.get("more_body", False)
            if seen > limit:
                refused.append(PayloadTooLarge(f"The request body exceeds {limit} bytes."))
                raise refused[-1]
            return message

        return capped_receive


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
