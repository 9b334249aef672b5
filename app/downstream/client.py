"""Downstream calls: one pooled client per service, retried and broken by policy.

``DownstreamClient.call`` is the only way the gateway talks to a service. Each
attempt is built afresh (new nonce, new span id), signed with the service's key,
and mapped onto the error tree; the request, retries included, is one call of the
service's circuit breaker (``fail_max`` counts failed requests):

    pool timeout            504 gateway_timeout  never retried, not a breaker failure
    connect timeout         504 gateway_timeout  retryable
    no response in time     504 gateway_timeout  retryable (no byte had arrived)
    connect refused         502 bad_gateway      retryable
    closed before answering 502 bad_gateway      retryable (no answer byte had arrived)
    5xx in retry statuses   502 bad_gateway      retryable, Retry-After honoured
    other 5xx, broken body  502 bad_gateway
    breaker open            503 circuit_open     with Retry-After, never retried
    request's deadline      504 gateway_timeout  never retried (``app.downstream.deadline``)

Downstream bodies of 5xx answers are discarded, never shown to the caller; a 4xx
means what ``app.downstream.refusals`` says (``raise_for_client_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Mapping
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ValidationError

from app.authn.digest import content_digest
from app.authn.keys import SigningKey, load_keyring
from app.core.config import ServiceSettings
from app.core.errors import (
    ConfigError,
    DownstreamError,
    DownstreamTimeout,
    GatewayError,
    ServiceUnavailable,
)
from app.core.logging import get_logger
from app.core.tracing import client_span
from app.downstream.deadline import Deadline, exceeded
from app.downstream.deadline import current as current_deadline
from app.downstream.http1 import DEADLINE, Http1Transport, StaleConnection, StreamedBodyTimeout
from app.downstream.propagation import (
    current_call_context,
    propagation_headers,
    sign_outbound,
)
from app.downstream.refusals import client_error
from app.downstream.resilience import (
    BodyTimeout,
    BreakerCall,
    BreakerSnapshot,
    PoolExhausted,
    RetryableError,
    RetryableTimeout,
    RetryPolicy,
    ServiceBreaker,
    may_retry,
    parse_retry_after,
)
from app.downstream.transport import (
    BUFFER_DECLARED,
    BUFFERED,
    HEAD_RECEIVED,
    MAX_BUFFERED,
    AiohttpTransport,
)
from app.ops.metrics import observe_downstream

log = get_logger("gateway.downstream")

Body = bytes | AsyncIterable[bytes] | None
Fields = list[tuple[str, str]]
ModelT = TypeVar("ModelT", bound=BaseModel)
URL_CACHE_SIZE = 4096
# Sends of one attempt lost to the keep-alive race that are re-sent at once (the
# transport drops the origin's idle connections, so the next one is fresh).
STALE_RESENDS = 2
# Where a streamed answer carries its open breaker call until ``end_stream``.
BREAKER_CALL = "gateway_breaker_call"


def _timeout(settings: ServiceSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )


def _transport(settings: ServiceSettings) -> httpx.AsyncBaseTransport:
    if settings.transport == "native":
        # The client re-sends a request lost to the keep-alive race itself, re-signed.
        return Http1Transport(
            max_connections=settings.max_connections,
            max_keepalive=settings.max_keepalive,
            keepalive_expiry=settings.keepalive_expiry_seconds,
            resend_stale=False,
        )
    return AiohttpTransport(
        max_connections=settings.max_connections,
        max_keepalive=settings.max_keepalive,
        keepalive_expiry=settings.keepalive_expiry_seconds,
    )


class DownstreamClient:
    """A named downstream service behind one connection pool, breaker and retry policy."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        signing_key: SigningKey | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.breaker = ServiceBreaker(name, settings.breaker)
        self.retry = RetryPolicy(name, settings.retry)
        self._key = signing_key
        self._base = str(settings.url).rstrip("/")
        self._timeout = _timeout(settings).as_dict()
        self._transport = transport or _transport(settings)
        self._native = isinstance(self._transport, Http1Transport)
        self._urls: dict[str, httpx.URL] = {}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: Body = None,
        params: Mapping[str, str] | str | None = None,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
        digest: str | None = None,
        stream: bool = False,
        buffer_declared: int | None = None,
    ) -> httpx.Response:
        """Send one request with retries; raise a ``DownstreamError`` unless it answered < 500.

        With ``stream=True`` the body is not read: the caller must ``aclose()`` the response
        (an answer declaring at most ``buffer_declared`` bytes may arrive already read).
        A streamed ``content`` is sent once (never retried); ``digest`` is its Content-Digest.
        """
        body = orjson.dumps(json) if json is not None else content
        own: dict[str, str] = {}
        if json is not None:
            own["content-type"] = "application/json"
        if idempotency_key:
            own["idempotency-key"] = idempotency_key
        if isinstance(body, bytes) and body and self._key is not None:
            digest = content_digest(body)
        if digest:
            own["content-digest"] = digest
        fields = _with_fields(_lowered(headers), own)
        replayable = not isinstance(body, AsyncIterable)
        enabled = may_retry(method, idempotency_key is not None, replayable)

        # One breaker call per request, retries included: fail_max counts requests. A
        # streamed answer's call lasts until its body ends (``end_stream``): a service
        # that sends a head and then breaks off fails its call, not succeeds it.
        call = self.breaker.request()
        deadline = current_deadline()
        # The native transport bounds the exchange by the deadline itself (its read timer,
        # ``DEADLINE``): a buffered one whole, a streamed answer up to its head only.
        in_transport = deadline if self._native else None

        async def attempt(number: int) -> httpx.Response:
            if deadline is not None and deadline.remaining() <= 0:
                # nothing sent, no breaker call entered
                log.info("downstream_deadline", service=self.name, attempt=number, sent=False)
                raise exceeded(self.name)
            send = self._attempt(
                method, path, body, params, fields, stream, number, call, buffer_declared,
                in_transport,
            )  # fmt: skip
            if deadline is None:
                return await send
            return await self._bounded(send, deadline, number, in_transport is not None)

        try:
            response = await self.retry.run(attempt, enabled, deadline)
        except BaseException as exc:
            await call.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if stream and not response.is_stream_consumed:
            response.extensions[BREAKER_CALL] = call
        else:
            await call.__aexit__(None, None, None)
        return response

    async def _bounded(
        self,
        send: Awaitable[httpx.Response],
        deadline: Deadline,
        attempt: int,
        in_transport: bool,
    ) -> httpx.Response:
        """``send`` cut when the request's deadline passes (a streamed answer: its head).

        ``in_transport``: the native transport ends every phase by the deadline (no timer
        here); a timeout it raised once the deadline passed is the deadline's 504.
        Otherwise an ``asyncio.timeout`` set to what is left cancels the attempt.
        """
        if in_transport:
            try:
                return await send
            except DownstreamTimeout as exc:
                # A streamed answer's deadline ended at its head: a body stall after it
                # (a small one the transport reads whole) is the service's timeout.
                if deadline.remaining() > 0 or isinstance(exc, BodyTimeout):
                    raise
                cut = exceeded(self.name)
                if isinstance(exc, PoolExhausted):
                    # A pool wait it cut sent nothing: still a pool timeout (no breaker
                    # failure, no saga undo of a step that never left), with its 504.
                    log.info("downstream_deadline", service=self.name, attempt=attempt, sent=False)
                    raise PoolExhausted(self.name, cut.detail) from None
                log.info("downstream_deadline", service=self.name, attempt=attempt, sent=True)
                raise cut from None
        scope = asyncio.timeout(deadline.remaining())
        try:
            async with scope:
                return await send
        except TimeoutError:
            if not scope.expired():
                raise
            log.info("downstream_deadline", service=self.name, attempt=attempt, sent=True)
            raise exceeded(self.name) from None

    async def _attempt(
        self,
        method: str,
        path: str,
        body: Body,
        params: Mapping[str, str] | str | None,
        fields: Fields,
        stream: bool,
        attempt: int,
        call: BreakerCall,
        buffer_declared: int | None = None,
        deadline: Deadline | None = None,
    ) -> httpx.Response:
        with client_span(self.name, method, self._url(path), attempt) as span:
            request = self._build(method, path, body, params, fields, stream, buffer_declared)
            if deadline is not None:  # the native transport ends the exchange by it
                request.extensions[DEADLINE] = deadline
            started = time.perf_counter()
            status: int | None = None  # the service's, once it answered
            try:
                call.admit()
                request, started, response = await self._send_fresh(request, started, attempt)
                status = response.status_code
                if span.is_recording():
                    span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 500:
                    await response.aclose()
                    raise self._status_error(response)
                if not stream:
                    await self._read(response)
            except GatewayError as exc:
                # With the status: a 500 (not retried) and a 503 (retried) were both
                # bare ``bad_gateway``, and no line of the gateway said what was answered.
                answered = {} if status is None else {"status": status}
                self._log(request, started, attempt, outcome=exc.code, **answered)
                call.failed(exc)
                raise
            finally:
                if span.is_recording():
                    span.set_attribute("gateway.breaker.state", self.breaker.state)
            self._log(request, started, attempt, outcome="response", status=status)
            return response

    def _build(
        self,
        method: str,
        path: str,
        body: Body,
        params: Mapping[str, str] | str | None,
        fields: Fields,
        stream: bool,
        buffer_declared: int | None = None,
    ) -> httpx.Request:
        """One attempt's request: fresh propagation headers (span id), signed when keyed."""
        merged = _with_fields(fields, propagation_headers(current_call_context()))
        extensions: dict[str, object] = {
            "timeout": self._timeout,
            BUFFERED: not stream,
            MAX_BUFFERED: self.settings.max_answer_bytes,
        }
        if stream and buffer_declared is not None:
            extensions[BUFFER_DECLARED] = buffer_declared
        if params is None and not isinstance(body, AsyncIterable):
            request = in_memory_request(method, self._url(path), merged, body or b"", extensions)
        else:
            request = httpx.Request(
                method,
                self._url(path),
                params=params,
                headers=merged,
                content=body,
                extensions=extensions,
            )
        if self._key is not None:
            sign_outbound(request, self._key)
        return request

    def _url(self, path: str) -> httpx.URL:
        """The service URL of ``path``; parsed once per distinct path (bounded cache)."""
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self._base + path)
            if len(self._urls) < URL_CACHE_SIZE:
                self._urls[path] = url
        return url

    async def _send_fresh(
        self, request: httpx.Request, started: float, attempt: int
    ) -> tuple[httpx.Request, float, httpx.Response]:
        """``_send``; a request lost to the keep-alive race (a pooled connection the
        service had closed, no byte of answer) is logged and sent again at once, within
        the attempt, built afresh: a new nonce and span id, as every send has."""
        for resend in range(STALE_RESENDS + 1):
            try:
                return request, started, await self._send(request)
            except StaleConnection:
                self._log(request, started, attempt, outcome="stale_connection")
                if resend == STALE_RESENDS:  # as a connection lost before any answer
                    detail = f"The {self.name} service closed the connection."
                    raise RetryableError(self.name, detail) from None
            request = self._rebuild(request)
            started = time.perf_counter()
        raise AssertionError("unreachable: the last resend returns or raises")

    def _rebuild(self, sent: httpx.Request) -> httpx.Request:
        """``sent`` again with fresh propagation headers and signature (in-memory body)."""
        fields = [(k.lower(), v) for k, v in sent.headers.multi_items()]
        fields = _with_fields(fields, propagation_headers(current_call_context()))
        request = in_memory_request(
            sent.method, sent.url, fields, sent.content, dict(sent.extensions)
        )
        if self._key is not None:
            sign_outbound(request, self._key)
        return request

    async def _send(self, request: httpx.Request) -> httpx.Response:
        name = self.name
        try:
            response = await self._transport.handle_async_request(request)
        except StaleConnection:
            raise
        except httpx.PoolTimeout:
            raise PoolExhausted(name, f"No connection to the {name} service was free.") from None
        except StreamedBodyTimeout:
            raise BodyTimeout(name, f"The {name} service timed out.") from None
        except (httpx.ConnectTimeout, httpx.ReadTimeout):
            if request.extensions.get(HEAD_RECEIVED):
                raise DownstreamTimeout(name, f"The {name} service timed out.") from None
            raise RetryableTimeout(name, f"The {name} service timed out.") from None
        except httpx.TimeoutException:
            raise DownstreamTimeout(name, f"The {name} service timed out.") from None
        except httpx.ConnectError:
            raise RetryableError(name, f"The {name} service is unreachable.") from None
        except httpx.RemoteProtocolError:
            if request.extensions.get(HEAD_RECEIVED):
                raise DownstreamError(name, f"The {name} service failed.") from None
            # Closed before a byte of answer (a reused connection lost to the keep-alive
            # race): like a refused connect, repeatable when the request may be.
            raise RetryableError(name, f"The {name} service closed the connection.") from None
        except httpx.TransportError:
            raise DownstreamError(name, f"The {name} service failed.") from None
        response.request = request
        return response

    async def _read(self, response: httpx.Response) -> None:
        try:
            await response.aread()
        except httpx.TimeoutException:
            raise DownstreamTimeout(self.name, f"The {self.name} service timed out.") from None
        except httpx.TransportError:
            raise DownstreamError(self.name, f"The {self.name} service failed.") from None
        finally:
            await response.aclose()

    def _status_error(self, response: httpx.Response) -> DownstreamError:
        detail = f"The {self.name} service failed."
        if response.status_code in self.settings.retry.statuses:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return RetryableError(self.name, detail, retry_after)
        return DownstreamError(self.name, detail)

    def _log(self, request: httpx.Request, started: float, attempt: int, **fields: Any) -> None:
        elapsed = time.perf_counter() - started
        observe_downstream(self.name, str(fields["outcome"]), attempt, elapsed)
        # A first attempt that was answered is the request's own story (its summary line,
        # metrics, trace): DEBUG. Retries and failures are what an operator looks for: INFO.
        level = logging.DEBUG if attempt == 1 and fields["outcome"] == "response" else logging.INFO
        if not log.is_enabled_for(level):
            return  # the fields below cost more than the (filtered) call itself
        log.log(
            level,
            "downstream_call",
            service=self.name,
            method=request.method,
            path=request.url.path,
            attempt=attempt,
            duration_ms=round(elapsed * 1000, 3),
            breaker=self.breaker.state,
            **fields,
        )

    async def aclose(self) -> None:
        await self._transport.aclose()


async def end_stream(response: httpx.Response, failure: DownstreamError | None = None) -> None:
    """End the breaker call of a streamed answer (``call(stream=True)``); once, then no-op.

    ``failure``: the body broke off (the service's failure, counted as one); ``None``:
    it ended, or the caller stopped reading (neither is the service's fault).
    """
    call: BreakerCall | None = response.extensions.pop(BREAKER_CALL, None)
    if call is None:
        return
    if failure is None:
        await call.__aexit__(None, None, None)
        return
    with contextlib.suppress(DownstreamError):  # CircuitOpen: this failure opened it
        await call.__aexit__(type(failure), failure, None)


def _lowered(headers: Mapping[str, str] | list[tuple[str, str]] | None) -> Fields:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name.lower(), value) for name, value in items]


def _with_fields(fields: Fields, replacing: Mapping[str, str]) -> Fields:
    """``fields`` with every name in ``replacing`` set to its value (any copies dropped).

    What ``httpx.Headers.update`` does, on plain lists: names are lower case.
    """
    if not replacing:
        return fields
    return [(k, v) for k, v in fields if k not in replacing] + list(replacing.items())


def in_memory_request(
    method: str, url: httpx.URL, fields: Fields, body: bytes, extensions: dict[str, Any]
) -> httpx.Request:
    """What ``httpx.Request(method, url, headers=fields, content=body)`` builds, for less CPU.

    httpx encodes ``content=`` through its body encoders and builds its headers
    twice; with the body in memory there is nothing to encode. The same fields
    (Host, then a Content-Length when httpx would add one) and the body as read.
    """
    method = method.upper()
    names = {name for name, _ in fields}
    auto: Fields = [] if "host" in names else [("host", url.netloc.decode("ascii"))]
    if "content-length" not in names and (body or method in ("POST", "PUT", "PATCH")):
        auto.append(("content-length", str(len(body))))
    request = httpx.Request(
        method, url, headers=auto + fields, stream=httpx.ByteStream(body), extensions=extensions
    )
    request.read()
    return request


def load_outbound_keys(services: Mapping[str, ServiceSettings]) -> dict[str, SigningKey]:
    """Resolve each service's outbound signing secret; a missing one stops start-up."""
    keys: dict[str, SigningKey] = {}
    for name, cfg in services.items():
        if cfg.signing_key is None:
            continue
        try:
            ring = load_keyring([cfg.signing_key])
        except ConfigError as exc:
            where = f"services.{name}.signing_key"
            raise ConfigError(exc.detail.replace("signing.keys[0]", where)) from None
        key = ring.get(cfg.signing_key.id)
        assert key is not None
        keys[name] = key
    return keys


class ServiceRegistry:
    """Every configured service's client; opened in the lifespan, closed on shutdown."""

    def __init__(
        self,
        services: Mapping[str, ServiceSettings],
        transport: httpx.AsyncBaseTransport | None = None,
        keys: Mapping[str, SigningKey] | None = None,
    ) -> None:
        keys = load_outbound_keys(services) if keys is None else keys
        self._clients = {
            name: DownstreamClient(name, cfg, transport, keys.get(name))
            for name, cfg in services.items()
        }

    def get(self, name: str) -> DownstreamClient:
        client = self._clients.get(name)
        if client is None:
            raise ServiceUnavailable(f"The {name} service is not configured.")
        return client

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    def breakers(self) -> list[BreakerSnapshot]:
        return [self._clients[name].breaker.snapshot() for name in self.names]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def raise_for_client_error(
    service: str, response: httpx.Response, *, passthrough: bool = False
) -> None:
    """Raise what a 4xx answer means to the caller (``app.downstream.refusals``)."""
    error = client_error(service, response, passthrough=passthrough)
    if error is not None:
        raise error


def parse_answer(service: str, content: bytes, model: type[ModelT]) -> ModelT:
    """A service's JSON answer as ``model``; anything else is a 502 naming the service."""
    try:
        return model.model_validate_json(content)
    except ValidationError:
        raise DownstreamError(service, f"The {service} service sent an invalid answer.") from None
