"""Declarative pass-through: forward an authorized request to one service, streaming.

Request and response bodies are streamed both ways, never held whole, each
within the route's size limit. A streamed body cannot be digest-checked before
it is forwarded, so it is checked *as it streams*: every chunk feeds the hashes
of the caller's ``Content-Digest`` (already covered by the verified signature),
and a body that ends with the wrong digest, or grows past the limit, raises
inside the upstream request's body iterator. The transport then aborts the
upstream request before its last chunk, so the service never receives a
complete request, and the caller gets 401 (or 413). The alternative, buffering
up to a limit and verifying first, would cap pass-through bodies at what the
gateway is willing to hold in memory per request (see
``app/api/docs/resilience.md``). The gateway's own outbound signature covers the
same ``Content-Digest``, so a service that verifies it gets a second check.

A service may answer before it has read the body (an early ``413``, or a broken
one that says ``201`` and closes); the transport then stops sending, and the
check at the body's end never ran. An answer is relayed only for a body the
gateway sent whole and verified: otherwise the gateway reads the rest of the
caller's body itself (``CheckedBody.rest``: hashed and counted, never sent;
``max_request_bytes`` bounds it), so a wrong digest is still a 401 and an
oversized body a 413; then a 4xx means what it always means, and a success for
a body the service did not get is a 502. The body is read from the ASGI
``receive`` directly, not through a generator: the aiohttp transport cancels its
body writer once an answer is complete, and a cancelled generator could not be
read on (a cancelled ``receive`` loses nothing).

A ``Location``, ``Content-Location`` or ``Link`` URL on the service's own host would
send the caller to an address behind the gateway (unreachable, or reachable
without its checks). It is mapped back to the gateway path of the pass-through
route that serves it (``PublicLocations``, nginx's ``proxy_redirect default``
generalised to every route of the service); one no route serves is dropped, and
a redirect to it is a 502. Another host is the service's deliberate choice (a
pre-signed object-store URL) and is relayed as sent.

A request without a body waits for the answer's *head* (pool, connect, every retry
and its backoff, the status line and fields) no longer than the request's deadline
(``orchestration.downstream_deadline_seconds``, ``app.downstream.deadline``), as a
typed route's calls do, with the same ``504 gateway_timeout`` and
``downstream_deadline`` line: a GET is retried, and was held for every attempt's
timeouts plus backoff. The streamed answer's *body* is not bounded by it (a download
may rightly take long; a pause is bounded by ``read_timeout``, a slow reader by
``edge.send_timeout_seconds``): on the native transport the deadline travels with the
request (``DEADLINE``) and ends at the head, so no timer is added.

A request with a streamed body is not bounded by the deadline. Options weighed:

- start the deadline's clock for the head once the body has been sent whole (the
  upload's pace is the caller's, bounded by ``edge.body_timeout_seconds`` and
  ``edge.body_min_rate_bytes``, and must not be cut). It would bound one more
  thing: a head that drips, or 1xx interim answers sent on and on, each byte
  restarting ``read_timeout``. But both transports would need a clock paused
  across the upload (the aiohttp one writes the body in a task of its own, so an
  ``asyncio.timeout`` around the attempt cannot leave the upload out without a
  hook on every chunk): a second timer scheme, for one rare fault of an internal
  service;
- leave it to the one attempt's own timeouts (chosen). Such a request is sent once,
  never retried (its body cannot be replayed), so what the deadline exists to bound,
  attempts and backoffs adding up, cannot happen: the wait is one ``pool_timeout``
  and one ``connect_timeout`` before the upload and one ``read_timeout`` after it,
  and settings refuse a deadline below ``connect_timeout + read_timeout``. Nothing is
  added to the upload path, and an upload is never cut by a clock the caller's own
  pace ran down.
"""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import http_sf
import httpx
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.authn.base import Message, declares_body
from app.authn.digest import ALGORITHMS
from app.authn.identity import IDEMPOTENCY_KEY_HEADER
from app.authn.verifier import Reason
from app.core.config import PATH_PLACEHOLDER, PassthroughRoute, ServiceSettings
from app.core.errors import (
    AuthenticationFailed,
    BadRequest,
    DownstreamError,
    InvalidPath,
    PayloadTooLarge,
    ResponseAborted,
)
from app.core.headers import DEFAULT_FORWARDED, HOP_BY_HOP
from app.core.logging import decision_logger, get_logger
from app.downstream.client import DownstreamClient, end_stream, raise_for_client_error
from app.downstream.deadline import within
from app.downstream.propagation import (
    current_call_context,
    forwardable_headers,
    forwarded_header,
)
from app.downstream.transport import BODY_UNSENT
from app.ops.metrics import count_downstream_body_failure, count_signature_failure
from app.workflows.idempotency import require_key, scoped_key

log = get_logger("gateway.passthrough")
decision_log = decision_logger()
_RESPONSE_DROP = frozenset(
    name.encode("ascii")
    for name in HOP_BY_HOP | {"server", "date", "x-request-id", "signature", "signature-input"}
)
# Answers that declare at most this many bytes are relayed in one message, not streamed.
RELAY_WHOLE_BYTES = 64 * 1024
_URL_FIELDS = frozenset({b"location", b"content-location", b"link"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# A body on these has no defined meaning (RFC 9110 sections 9.3.1, 9.3.2); forwarded, it
# reached a service that neither reads nor drains it, which framed it as its next request
# (one that no signature or decision of the gateway's ever covered).
_NO_BODY_METHODS = frozenset({"GET", "HEAD"})
# Framing fields an answer without a body must not carry (RFC 9110 sections 8.6, 6.4.1).
_BODY_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def bodiless(status: int) -> bool:
    """1xx, 204 and 304 answers have no body, whatever their fields say."""
    return status < 200 or status in (204, 304)


# A Location path longer than this is not matched against the routes (dropped).
MAX_MAPPED_PATH = 8192


def _template_pattern(template: str) -> str | None:
    """A path template as an expression, each placeholder one whole raw segment.

    ``None`` when a segment mixes a placeholder with text (``{name}.{ext}``) or holds
    braces that are not a plain placeholder (``{rest:path}``): such a route is not
    mapped back. Whole segments between literal slashes match in linear time; mixed
    ones would backtrack polynomially on a long hostile path.
    """
    pattern, seen = [], set()
    for segment in template.split("/"):
        whole = PATH_PLACEHOLDER.fullmatch(segment)
        if whole is not None:  # a placeholder used twice must match the same value twice
            name = whole.group(1)
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/?#]+)")
            seen.add(name)
        elif "{" in segment or "}" in segment:
            return None
        else:
            pattern.append(re.escape(segment))
    return "/".join(pattern)


class PublicLocations:
    """Each service's own paths that a pass-through route serves, mapped back to the route.

    A route maps back only when its upstream path carries every placeholder of its
    public path (``/reports/{report_id}`` from ``/v1/engagements/{engagement_id}/...``
    cannot: the engagement is not in the service's URL), each as a whole segment, and
    both paths hold plain placeholders only. Routes are tried in order. "The
    service's own" is its host, whatever the scheme or port: a service behind the
    gateway's ``Forwarded: proto=https`` may well answer with ``https://`` URLs.
    """

    def __init__(
        self, routes: Sequence[PassthroughRoute], services: Mapping[str, ServiceSettings]
    ) -> None:
        self._routes: dict[str, list[tuple[re.Pattern[str], str]]] = {}
        for route in routes:
            names = set(PATH_PLACEHOLDER.findall(route.path))
            upstream = _template_pattern(route.upstream_path)
            if (
                upstream is None
                or "{" in PATH_PLACEHOLDER.sub("", route.path)
                or not names <= set(PATH_PLACEHOLDER.findall(route.upstream_path))
            ):
                continue
            service = services.get(route.service)
            base = httpx.URL(str(service.url)).path.rstrip("/") if service else ""
            pattern = re.compile(re.escape(base) + upstream)
            self._routes.setdefault(route.service, []).append((pattern, route.path))

    def public_path(self, service: str, path: str) -> str | None:
        """The gateway path serving the service's raw ``path``, or ``None``."""
        if len(path) > MAX_MAPPED_PATH:
            return None
        for pattern, public in self._routes.get(service, ()):
            match = pattern.fullmatch(path)
            if match is not None:
                return public.format(**match.groupdict())
        return None

    def relayed(self, service: str, value: str, upstream: httpx.URL) -> str | None:
        """A location field as the caller sees it; ``None``: the service's own, unserved,
        or not a URL httpx can read (an invalid IDNA host, say)."""
        try:
            target = upstream.join(value.strip())
            own = target.host == upstream.host  # httpx lower-cases and IDNA-encodes
            raw_path = target.raw_path
        except (httpx.InvalidURL, ValueError):  # IDNAError is a ValueError
            return None
        if not own:
            return value  # another host: the service sends the caller there on purpose
        path, _, query = raw_path.decode("latin-1").partition("?")
        public = self.public_path(service, path)
        if public is None:
            return None
        _, hashed, fragment = value.partition("#")  # as sent (httpx's is decoded)
        return public + (f"?{query}" if query else "") + (f"#{fragment}" if hashed else "")


class StreamingDigest:
    """RFC 9530 digests of a body computed chunk by chunk, checked at the end."""

    def __init__(self, field_value: str) -> None:
        try:
            members = http_sf.parse(field_value.encode("ascii"), tltype="dictionary")
        except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
            raise _digest_failure() from None
        assert isinstance(members, dict)
        self._expected: dict[str, bytes] = {}
        for alg, member in members.items():
            value = member[0] if isinstance(member, tuple) else member
            if alg in ALGORITHMS and isinstance(value, bytes):
                self._expected[alg] = value
        if not self._expected:
            raise _digest_failure()
        self._hashes = {alg: ALGORITHMS[alg]() for alg in self._expected}

    def update(self, chunk: bytes) -> None:
        for digest in self._hashes.values():
            digest.update(chunk)

    def verify(self) -> None:
        for alg, expected in self._expected.items():
            if not hmac.compare_digest(self._hashes[alg].digest(), expected):
                raise _digest_failure()


def _digest_failure() -> AuthenticationFailed:
    """A streamed body that did not match its digest: logged and counted as the gate's
    authn refusals are (``gateway_signature_failures_total{reason="digest_mismatch"}``)."""
    decision_log.info("decision", stage="authn", decision="deny", reason=Reason.DIGEST_MISMATCH)
    count_signature_failure(Reason.DIGEST_MISMATCH.value)
    return AuthenticationFailed(Reason.DIGEST_MISMATCH.value)


ChunkReader = Callable[[], Awaitable[bytes | None]]


def request_chunks(request: Request) -> ChunkReader:
    """The caller's body, one non-empty chunk a call, ``None`` after the last.

    Straight from the ASGI ``receive``: a call cancelled while it waits consumes
    nothing, so the next call reads on (``request.stream()`` is a generator, dead
    once a cancellation went through it).
    """
    receive = request.receive
    more = True

    async def read() -> bytes | None:
        nonlocal more
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            more = message.get("more_body", False)
            if chunk := message.get("body", b""):
                return bytes(chunk)
        return None

    return read


class CheckedBody:
    """A streamed body on its way to the service: hashed and counted chunk by chunk.

    The transport iterates it; a body that fails (wrong digest, past ``limit``)
    raises before the end, so the transport never ends the upstream request.
    ``sent`` is set once the transport took the end of a body that passed.
    A transport may stop early (the service answered and closed): ``rest()`` then
    reads and checks what is left, discarding it, and the transport's iteration
    may not go on (it would send a body with a hole in it).
    """

    def __init__(self, read: ChunkReader, digest: StreamingDigest | None, limit: int) -> None:
        self._read = read
        self._digest = digest
        self._limit = limit
        self._seen = 0
        self._ended = False
        self._detached = False
        self.sent = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._forwarded()

    async def _forwarded(self) -> AsyncIterator[bytes]:
        while True:
            if self._detached:
                raise RuntimeError("the rest of the body was read by the gateway")
            chunk = await self._next()
            if chunk is None:
                break
            yield chunk
        if not self._detached:
            self.sent = True

    async def _next(self) -> bytes | None:
        """The next chunk, checked; ``None`` at the end of a body that passed."""
        if self._ended:
            return None
        chunk = await self._read()
        if chunk is None:
            self._ended = True
            if self._digest is not None:
                self._digest.verify()
            return None
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise PayloadTooLarge(f"The request body exceeds {self._limit} bytes.")
        if self._digest is not None:
            self._digest.update(chunk)
        return chunk

    async def rest(self) -> None:
        """Read and check the part of the body the transport did not take."""
        self._detached = True
        while await self._next() is not None:
            pass


def upstream_path(route: PassthroughRoute, params: Mapping[str, str], query: str) -> str:
    """The service path: the route's template filled with the path's own segments.

    The values come from the normalised path (``app.edge.paths``), already in their
    one canonical encoding, and are used as they are: the service receives the
    octets the policy decided on (encoding them again would turn ``a%20b`` into
    ``a%2520b``). A value that would be a dot segment upstream is refused.
    """
    path = route.upstream_path.format(**params)
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidPath("The request path maps to a dot segment upstream.")
    return f"{path}?{query}" if query else path


@functools.cache
def _allowed(extra: tuple[str, ...]) -> tuple[frozenset[str], frozenset[bytes]]:
    """A route's allow-list, and the raw names worth decoding (``Connection`` too)."""
    names = DEFAULT_FORWARDED.union(extra)
    return names, frozenset(n.encode("latin-1") for n in {*names, "connection"})


def request_headers(route: PassthroughRoute, request: Request) -> list[tuple[str, str]]:
    """The allow-listed caller headers, and the gateway's own ``Forwarded``.

    Only fields whose (lower-case, ASGI) name could pass are decoded at all;
    ``forwardable_headers`` applies every rule to them.
    """
    allowed, raw_names = _allowed(route.forward_headers)
    candidates = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.scope["headers"]
        if name in raw_names
    ]
    headers = forwardable_headers(candidates, allowed)
    for name, value in headers:
        if not value.isascii():
            # obs-text (RFC 9110 section 5.5) is opaque to the gateway, which forwards
            # ASCII only: refused rather than re-encoded (it was a 500).
            raise BadRequest(
                f"The {name} header carries octets above 0x7f; it is forwarded only in ASCII."
            )
    headers = [_scoped(request, name, value) for name, value in headers]
    client = request.scope.get("client")
    peer = client[0] if client else None
    return [*headers, forwarded_header(peer, request.scope.get("scheme", "http"))]


def forwarded_key(subject: str, method: str, path: str, key: str) -> str:
    """The ``Idempotency-Key`` a service gets for a caller's key: no other caller's meets it."""
    return scoped_key("passthrough", subject, method, path, key)


def _scoped(request: Request, name: str, value: str) -> tuple[str, str]:
    """A forwarded ``Idempotency-Key`` scoped to the caller, the method and the path."""
    if name != IDEMPOTENCY_KEY_HEADER:
        return name, value
    context = current_call_context()
    if context is None:  # the guard binds it before any route runs: a wiring bug
        raise RuntimeError("a pass-through route forwards an Idempotency-Key without a caller")
    key = require_key(value)  # the service no longer sees the caller's value to judge it
    return name, forwarded_key(context.identity.subject, request.method, request.scope["path"], key)


def query_of(request: Request) -> str:
    """The query as the caller sent it; 400 unless ASCII (other octets travel %-encoded).

    Read from the scope's bytes: Starlette's ``request.url`` decodes them as UTF-8 and
    raised on anything else, which was a 500 for a signed request with such a query.
    """
    raw: bytes = request.scope.get("query_string", b"")
    if not raw.isascii():
        raise BadRequest("The query string must be ASCII; percent-encode other octets.")
    return raw.decode("ascii")


async def forward(
    client: DownstreamClient,
    route: PassthroughRoute,
    request: Request,
    message: Message,
    locations: PublicLocations,
    deadline_seconds: float | None = None,
) -> Response:
    """Send the request upstream, streaming its body; stream the answer back.

    ``message``: the request as authn read it (``Admission.message``): its fields are
    read there, decoded once, the ``Content-Digest`` as the signature covered it.
    ``deadline_seconds`` (``orchestration.downstream_deadline_seconds``) bounds a
    bodiless request's wait for the answer's head, retries included.
    """
    declared = message.header("content-length")
    if declared is not None and declared.isdigit() and int(declared) > route.max_request_bytes:
        raise PayloadTooLarge(f"The request body exceeds {route.max_request_bytes} bytes.")
    body = None
    digest_field = message.header("content-digest")
    has_body = declares_body(message)
    if has_body and request.method in _NO_BODY_METHODS:
        raise BadRequest(
            f"A {request.method} request carries no body here: a service that does not "
            "read one would take its bytes for its next request."
        )
    if has_body:
        digest = StreamingDigest(digest_field) if digest_field else None
        body = CheckedBody(request_chunks(request), digest, route.max_request_bytes)
    elif digest_field:
        # No body declared: a signed digest must be of no bytes (as on the typed routes),
        # and there is nothing for the service to check it against.
        StreamingDigest(digest_field).verify()
        digest_field = None
    headers = request_headers(route, request)
    path = upstream_path(route, request.path_params, query_of(request))
    # Up to the answer's head, and only without a body (the module's docstring says why).
    with within(deadline_seconds if body is None else None):
        upstream = await client.call(
            request.method,
            path,
            content=body,
            headers=headers,
            digest=digest_field,
            stream=True,
            buffer_declared=RELAY_WHOLE_BYTES,
        )
    try:
        if body is not None and (not body.sent or upstream.request.extensions.get(BODY_UNSENT)):
            await _answered_early(client, upstream, body)
        raise_for_client_error(client.name, upstream, passthrough=True)
        return await _relay(client, route, upstream, locations)
    except BaseException:
        await upstream.aclose()
        await end_stream(upstream)  # a 4xx or a refused answer: not the service failing
        raise


async def _answered_early(
    client: DownstreamClient, upstream: httpx.Response, body: CheckedBody
) -> None:
    """The service answered before it had the whole body: check the rest here first.

    Closing the answer stops the transport's sending (aiohttp's body writer is still
    running). A body that fails its check is the caller's 401 or 413 whatever the
    service said; a 4xx is then mapped as ever (the caller learns why); a success is
    not the service's answer to this body, which it never received whole: a 502.
    """
    await upstream.aclose()
    await body.rest()
    status = upstream.status_code
    if status < 400:
        service = client.name
        log.warning("passthrough_body_unsent", service=service, status=status)
        raise DownstreamError(
            service, f"The {service} service answered before it received the whole body."
        )


async def _relay(
    client: DownstreamClient,
    route: PassthroughRoute,
    upstream: httpx.Response,
    locations: PublicLocations,
) -> Response:
    """The answer: whole when it declares at most ``RELAY_WHOLE_BYTES``, else streamed.

    A streamed answer costs a task group per response (Starlette listens for the
    client's disconnect beside it); a small declared one is read and sent in one
    message, holding at most ``RELAY_WHOLE_BYTES`` per request.
    """
    service = client.name
    # No body follows a 1xx, 204 or 304, nor any answer to a HEAD: a declared length is
    # no body's size here (a HEAD answer's is what a GET would get), so it is neither
    # held to ``max_response_bytes`` nor made up when the service sent none.
    if bodiless(upstream.status_code) or upstream.request.method == "HEAD":
        fields = relayed_headers(service, upstream, locations)
        await _read_whole(client, upstream)  # nothing: ends the answer, frees its connection
        return RelayedResponse(upstream.status_code, fields, framed=False)
    declared = upstream.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None and length > route.max_response_bytes:
        log.warning("passthrough_response_too_large", service=service, declared=length)
        raise DownstreamError(service, f"The {service} service answered more than allowed.")
    fields = relayed_headers(service, upstream, locations)
    if length is not None and length <= RELAY_WHOLE_BYTES:
        body = await _read_whole(client, upstream)
        return RelayedResponse(upstream.status_code, fields, body)
    return _RelayedStream(
        upstream,
        _limited(client, upstream, route.max_response_bytes),
        status_code=upstream.status_code,
        headers=Headers(raw=fields),
    )


class RelayedResponse(Response):
    """A whole answer relayed with the fields ``relayed_headers`` kept, as they are.

    What ``Response(body, status, headers=Headers(raw=fields))`` sends, without
    decoding every field to text and encoding it back: the names are lower case
    already, and a ``Content-Length`` is added, as Starlette adds one, only when the
    answer has none and carries a body (``framed``; not for a bodiless status, nor for a
    relayed ``HEAD``, which keeps the service's field or has none).
    No ``Content-Type`` is made up: the service's, if any, is among the fields.
    """

    def __init__(
        self,
        status_code: int,
        fields: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        framed: bool = True,
    ):
        self.status_code = status_code
        self.background = None
        self.body = body
        if framed and all(name != b"content-length" for name, _ in fields):
            fields.append((b"content-length", str(len(body)).encode("ascii")))
        self.raw_headers = fields


class _RelayedStream(StreamingResponse):
    """A streamed answer that always releases its service answer when it is done.

    Whether the body was sent whole, broke off, or the client left before it began
    (Starlette then cancels the stream before the body iterator ever runs, and skips
    a background task), the service's answer is closed and its breaker call ended.
    """

    def __init__(self, upstream: httpx.Response, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await _close(self.upstream)


def relayed_headers(
    service: str, upstream: httpx.Response, locations: PublicLocations
) -> list[tuple[bytes, bytes]]:
    """The service's answer fields as the caller gets them (lower-case names, raw values).

    Every copy of a field stays a copy (two ``Set-Cookie`` are two, never joined with
    a comma as ``httpx.Headers.items()`` joins them); hop-by-hop fields, those the
    answer's own ``Connection`` names, and the gateway's own are dropped; location and
    ``Link`` URLs of the service's own are mapped back or dropped (``PublicLocations``).
    A bodiless answer (1xx, 204, 304) loses ``Content-Length`` too: a 204 must not
    send it (RFC 9110 section 8.6) and a client that trusts it would wait for bytes
    that never come, or read the next answer as this one's body.
    """
    raw = upstream.headers.raw
    drop = _RESPONSE_DROP | _BODY_FRAMING if bodiless(upstream.status_code) else _RESPONSE_DROP
    nominated = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    kept: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lower = name.lower()
        if lower in drop or lower in nominated:
            continue
        if lower in _URL_FIELDS:
            mapped = _mapped(service, upstream, lower.decode(), value, locations)
            if mapped is None:
                continue
            value = mapped
        kept.append((lower, value))
    return kept


def _mapped(
    service: str, upstream: httpx.Response, name: str, raw: bytes, locations: PublicLocations
) -> bytes | None:
    """A URL-carrying field for the caller; ``None`` drops it (a redirect to it: 502).

    Read as UTF-8 when it is (httpx then %-encodes those characters once), else as
    Latin-1; a field relayed unchanged keeps its own bytes.
    """
    try:
        value, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        value, encoding = raw.decode("latin-1"), "latin-1"
    url = upstream.request.url
    if name == "link":
        links = parse_link_field(value)
        if links is None:
            log.warning("passthrough_link_unparsed", service=service)
            return None
        # A link with an anchor names another context URL; not mapped: dropped.
        kept = [
            (None if _ANCHOR.search(params) else locations.relayed(service, uri, url), params)
            for uri, params in links
        ]
        if any(uri is None for uri, _ in kept):
            log.warning("passthrough_location_unserved", service=service, field=name)
        relayed = ", ".join(f"<{uri}>{params}" for uri, params in kept if uri is not None)
    else:
        relayed = locations.relayed(service, value, url) or ""
        if not relayed:
            status = upstream.status_code
            # The service's own URL is internal: its path only, never its host or query.
            log.warning(
                "passthrough_location_unserved",
                service=service,
                status=status,
                field=name,
                path=_url_path(value),
            )
            if name == "location" and status in REDIRECTS:
                raise DownstreamError(
                    service,
                    f"The {service} service redirected to a location the gateway does not serve.",
                )
    if relayed == value:
        return raw
    try:
        return relayed.encode(encoding) if relayed else None
    except UnicodeEncodeError:
        return None


# RFC 8288 link-value: "<" URI-Reference ">" *( OWS ";" OWS link-param ), in a list.
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # an RFC 9110 token
_LINK_PARAM = rf'[ \t]*;[ \t]*{_TCHARS}(?:[ \t]*=[ \t]*(?:{_TCHARS}|"(?:[^"\\]|\\.)*"))?'
_LINK_VALUE = re.compile(rf"[ \t,]*<([^<>]*)>((?:{_LINK_PARAM})*)[ \t]*(?:,|$)")
_ANCHOR = re.compile(r";[ \t]*anchor[ \t]*=", re.IGNORECASE)


def parse_link_field(value: str) -> list[tuple[str, str]] | None:
    """A ``Link`` field's (URI, parameters text) pairs, or ``None`` if it does not parse."""
    links, pos, end = [], 0, len(value.rstrip(" \t,"))
    while pos < end:
        match = _LINK_VALUE.match(value, pos)
        if match is None:
            return None
        links.append((match.group(1), match.group(2)))
        pos = match.end()
    return links


def _url_path(value: str) -> str:
    """The path of a URL reference, without its query or fragment (they may hold tokens)."""
    try:
        return httpx.URL(value).path
    except (httpx.InvalidURL, ValueError):
        return ""


async def _close(upstream: httpx.Response) -> None:
    await upstream.aclose()
    await end_stream(upstream)


async def _read_whole(client: DownstreamClient, upstream: httpx.Response) -> bytes:
    try:
        return await upstream.aread()
    except httpx.TransportError as exc:
        raise await _body_failed(client, upstream, exc) from None
    finally:
        await _close(upstream)


async def _limited(
    client: DownstreamClient, upstream: httpx.Response, limit: int
) -> AsyncIterator[bytes]:
    """The raw response body; past the limit, or when it breaks off, the answer (begun:
    its status line is sent) is aborted (``ResponseAborted``), never ended cleanly."""
    sent = 0
    try:
        async for chunk in upstream.aiter_raw():
            sent += len(chunk)
            if sent > limit:
                log.warning("passthrough_aborted", service=client.name, reason="response_too_large")
                raise ResponseAborted(client.name, "response_too_large")
            yield chunk
    except httpx.TransportError as exc:
        await _body_failed(client, upstream, exc)
        raise ResponseAborted(client.name, type(exc).__name__) from None
    finally:
        await _close(upstream)


async def _body_failed(
    client: DownstreamClient, upstream: httpx.Response, exc: httpx.TransportError
) -> DownstreamError:
    """The service's answer broke off mid-body: logged, its breaker call ended as a
    failure (it stays open while the body streams), and counted in a metric."""
    service = client.name
    log.warning("passthrough_aborted", service=service, reason=type(exc).__name__)
    error = DownstreamError(service, f"The {service} service failed.")
    await end_stream(upstream, error)
    count_downstream_body_failure(service)
    return error
