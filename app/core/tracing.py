"""Spans of the gateway's own work, over the OpenTelemetry API: the one home of trace context.

Every stage opens its spans through the small helpers here (``span``,
``stage_span``, ``client_span``); the SDK, its exporter and its batch processor
are set up by ``app.ops.tracing``, which ``install``s a tracer. Until then (tracing
off, the default) each helper returns one shared no-op context manager: no span
object, no context switch, a few attribute reads a call.

Trace context crosses the process in W3C ``traceparent`` / ``tracestate`` headers,
read and written by OpenTelemetry's own propagator in ``extract`` and
``trace_headers`` (nothing else in the gateway parses or formats them); which
fields count (one traceparent, else none) is ``incoming_fields``, for every reader. With
tracing on, a downstream call carries its attempt span's context; with it off,
the caller's trace id and flags with a fresh span id (a new trace when none came
in), as a proxy that records nothing should.

What goes into a span is chosen here too: HTTP semantic-convention attributes,
the gateway's stage, decision, saga and fan-out facts. Never a secret, a
signature, a body, a query string or a subject.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "INVALID_SPAN",
    "Span",
    "SpanContext",
    "SpanKind",
    "Status",
    "StatusCode",
    "add_trace_ids",
    "client_span",
    "current_span",
    "current_span_is_valid",
    "enabled",
    "extract",
    "incoming_fields",
    "install",
    "mark_failed",
    "parent_of",
    "record_decision",
    "span",
    "stage_span",
    "trace_headers",
    "uninstall",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
STAGE = "gateway.stage"
SERVICE = "peer.service"

Attributes = Mapping[str, AttributeValue] | None
_PROPAGATOR = TraceContextTextMapPropagator()


class _State:
    """The installed tracer; ``None`` while tracing is off."""

    __slots__ = ("tracer",)

    def __init__(self) -> None:
        self.tracer: Tracer | None = None


_state = _State()


def install(tracer: Tracer) -> None:
    """Record spans with ``tracer`` from now on (``app.ops.tracing`` calls this)."""
    _state.tracer = tracer


def uninstall() -> None:
    """Back to no-op spans."""
    _state.tracer = None


def enabled() -> bool:
    return _state.tracer is not None


class _NoSpan:
    """The shared context manager of tracing off: yields the invalid span, does nothing."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Current:
    """Makes a started span current for the block, marks a failure, ends it."""

    __slots__ = ("_span", "_token")

    def __init__(self, started: Span) -> None:
        self._span = started
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            mark_failed(self._span, exc)
        if self._token is not None:
            otel_context.detach(self._token)
        self._span.end()


def span(
    name: str,
    attributes: Attributes = None,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: Context | None = None,
) -> AbstractContextManager[Span]:
    """A span over the block, child of the current one (or of ``parent``); no-op when off."""
    tracer = _state.tracer
    if tracer is None:
        return _NO_SPAN
    started = tracer.start_span(
        name, context=parent, kind=kind, attributes=attributes, record_exception=False
    )
    return _Current(started)


def stage_span(stage: str) -> AbstractContextManager[Span]:
    """One pipeline stage (``authn``, ``rate_limit``, ``authz``) as a child of the request."""
    if _state.tracer is None:
        return _NO_SPAN
    return span(stage, {STAGE: stage})


class URLParts(Protocol):
    """What a client span reads of the call's URL (``httpx.URL`` has these)."""

    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def path(self) -> str: ...


def client_span(
    service: str, method: str, url: URLParts, attempt: int
) -> AbstractContextManager[Span]:
    """One attempt of one downstream call (HTTP client semantic conventions).

    ``url.full`` carries no query: a pass-through forwards the caller's, which
    may hold anything. Retries are ``http.request.resend_count`` 1, 2, ...
    """
    if _state.tracer is None:
        return _NO_SPAN
    host, port = url.host, url.port
    attributes: dict[str, AttributeValue] = {
        "http.request.method": method,
        "server.address": host,
        "url.full": f"{url.scheme}://{host}{f':{port}' if port else ''}{url.path}",
        SERVICE: service,
    }
    if port:
        attributes["server.port"] = port
    if attempt > 1:
        attributes["http.request.resend_count"] = attempt - 1
    return span(f"{method} {service}", attributes, SpanKind.CLIENT)


def current_span() -> Span:
    """The span of the running block (the invalid span when none or tracing is off)."""
    return trace.get_current_span()


def current_span_is_valid() -> bool:
    """Whether a span is current (never, with tracing off: one attribute read)."""
    return _state.tracer is not None and trace.get_current_span().get_span_context().is_valid


def mark_failed(target: Span, exc: BaseException) -> None:
    """``error.type`` from the gateway's error code; ERROR status unless a 4xx answer."""
    if not target.is_recording():
        return
    if isinstance(exc, asyncio.CancelledError):
        code = "cancelled"  # a deadline or a client gone: the block did not finish
    else:
        code = getattr(exc, "code", None) or type(exc).__qualname__
    target.set_attribute("error.type", str(code))
    if getattr(exc, "status_code", 500) >= 500:
        target.set_status(Status(StatusCode.ERROR, str(code)))


def record_decision(
    allowed: bool,
    reason: str,
    matched_rule: Iterable[str] = (),
    revision: str | None = None,
    engagement: str | None = None,
) -> None:
    """The decision's result, reason, matched rule and policy revision on the current span."""
    if _state.tracer is None:
        return
    target = trace.get_current_span()
    if not target.is_recording():
        return
    attributes: dict[str, AttributeValue] = {
        "gateway.decision.result": "allow" if allowed else "deny",
        "gateway.decision.reason": reason,
    }
    rule = ",".join(matched_rule)
    if rule:
        attributes["gateway.decision.matched_rule"] = rule
    if revision:
        attributes["gateway.policy.revision"] = revision
    if engagement:
        attributes["gateway.engagement"] = engagement
    target.set_attributes(attributes)


def incoming_fields(
    traceparents: Sequence[str], tracestates: Sequence[str]
) -> tuple[str | None, str | None]:
    """The caller's ``(traceparent, tracestate)`` by W3C Trace Context, the one rule for
    every reader: exactly one traceparent field, else none (several are an invalid one:
    a new trace starts and the tracestate goes with it); tracestate fields are one list.
    """
    if len(traceparents) != 1:
        return None, None
    return traceparents[0], ",".join(tracestates) or None


def extract(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The caller's trace context from raw ASGI headers; ``None`` when it sent none."""
    fields: dict[bytes, list[str]] = {b"traceparent": [], b"tracestate": []}
    for name, value in headers:
        if name in fields:
            fields[name].append(value.decode("latin-1"))
    traceparent, tracestate = incoming_fields(fields[b"traceparent"], fields[b"tracestate"])
    if traceparent is None:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    return _PROPAGATOR.extract(carrier)


def parent_of(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The caller's span context from its headers (OpenTelemetry's W3C parser); once a request."""
    if not traceparent:
        return None
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    found = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return found if found.is_valid else None


def new_trace() -> SpanContext:
    """The root of a new trace, for a request whose caller sent no (valid) trace context:
    every downstream call and retry of the request is a child of it, so they share one
    trace id (tracing off: nothing records this root; the services' spans tie up)."""
    return SpanContext(_nonzero_bits(128), _nonzero_bits(64), is_remote=True, trace_flags=_SAMPLED)


def trace_headers(parent: SpanContext | None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) for one outbound call.

    The current span's context when there is one (tracing on: the attempt's
    client span); otherwise a child of the caller's context (``parent_of``) with
    a fresh span id, or a new trace.
    """
    carrier: dict[str, str] = {}
    if current_span_is_valid():
        _PROPAGATOR.inject(carrier)
    else:
        _PROPAGATOR.inject(carrier, context=_child_of(parent))
    return carrier


def _child_of(parent: SpanContext | None) -> Context:
    if parent is not None:
        child = SpanContext(
            parent.trace_id,
            _nonzero_bits(64),
            is_remote=False,
            trace_flags=parent.trace_flags,
            trace_state=parent.trace_state,
        )
    else:
        child = SpanContext(
            _nonzero_bits(128), _nonzero_bits(64), is_remote=False, trace_flags=_SAMPLED
        )
    return trace.set_span_in_context(NonRecordingSpan(child))


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _nonzero_bits(bits: int) -> int:
    """A random id of ``bits`` bits (all-zero ids are invalid in W3C trace context).

    Ids need to be unique, not secret: the SDK's own generator uses ``random`` too,
    and it costs a tenth of a ``secrets`` call (one getrandom syscall each).
    """
    return random.getrandbits(bits) or 1  # ids, not secrets (as the SDK's generator)


def add_trace_ids(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: ``trace_id`` and ``span_id`` of the current span, when tracing."""
    if _state.tracer is None:
        return event_dict
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def attribute_value(value: Any) -> AttributeValue:
    """A plain value an attribute may hold (strings for anything else)."""
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)
