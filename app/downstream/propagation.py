"""What the gateway tells a downstream service about the request it serves.

Per call: the corr_id (``X-Request-ID``), the W3C trace context of the attempt
(``app.core.tracing.trace_headers``: the attempt's span with tracing on; else the
caller's trace id with a new parent span id, a new trace when none came in), and
the caller's identity in headers the gateway signs itself with the service's key,
using the inbound RFC 9421 profile and its one signature-base builder, so a
service verifies the gateway exactly as the gateway verifies its proxies:

    x-auth-subject        the authenticated subject (re-issued, never forwarded)
    x-auth-groups         the caller's groups, when it has any
    x-gateway-engagement  the engagement the request was authorized in

Of the caller's own headers only an allow-list is forwarded (``forwardable_headers``,
rules in ``app.core.headers``): never hop-by-hop or ``Connection``-named ones, and
never any spelling of an identity, signature, gateway, forwarding, method-override
or URL-rewrite header. The gateway states the hop itself (``forwarded_header``).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

import httpx

from app.authn.base import (
    ALGORITHM,
    Message,
    ParamValue,
    build_signature_base,
    hmac_sha256,
    serialize_signature_params,
)
from app.authn.identity import GROUPS_HEADER, IDEMPOTENCY_KEY_HEADER, SUBJECT_HEADER
from app.authn.keys import SigningKey
from app.authn.signer import message_from_httpx
from app.core import logcontext
from app.core.frozen import quick_init
from app.core.headers import never_forwarded
from app.core.tracing import (
    SpanContext,
    current_span_is_valid,
    new_trace,
    parent_of,
    trace_headers,
)
from app.domain.identity import Identity

ENGAGEMENT_HEADER = "x-gateway-engagement"
REQUEST_ID = "x-request-id"


@quick_init
@dataclass(frozen=True, slots=True)
class CallContext:
    """The authorized caller a route acts for, bound once per request."""

    identity: Identity
    engagement: str | None
    traceparent: str | None = None
    tracestate: str | None = None
    # The caller's span context: parsed at the first downstream attempt, then kept.
    _parent: tuple[SpanContext | None] | None = field(init=False, default=None, repr=False)

    @property
    def parent(self) -> SpanContext | None:
        """The caller's span context (OpenTelemetry's W3C parser), parsed once per request;
        when it sent none (or an invalid one), a new trace's root, made once per request."""
        if self._parent is None:
            parent = parent_of(self.traceparent, self.tracestate) or new_trace()
            object.__setattr__(self, "_parent", (parent,))
        assert self._parent is not None
        return self._parent[0]


_call_context: ContextVar[CallContext | None] = ContextVar("gateway_call_context", default=None)


def bind_call_context(context: CallContext) -> None:
    """Bind the caller for every downstream call the request makes (guards call this)."""
    _call_context.set(context)


def current_call_context() -> CallContext | None:
    return _call_context.get()


def forwardable_headers(
    headers: Iterable[tuple[str, str]], allowed: Collection[str]
) -> list[tuple[str, str]]:
    """The caller's headers named in ``allowed`` (lower case), minus every never-forwarded one.

    ``allowed`` is checked at start-up (``PassthroughRoute``); the never-forwarded
    rules apply again here, so no list can let an identity or rewrite header through.
    """
    items = [(k.lower(), v) for k, v in headers]
    named = {token.strip().lower() for k, v in items if k == "connection" for token in v.split(",")}
    return [(k, v) for k, v in items if k in allowed and k not in named and not never_forwarded(k)]


def forwarded_header(peer: str | None, scheme: str) -> tuple[str, str]:
    """The gateway's own RFC 7239 ``Forwarded`` element for the hop it received."""
    host = peer or "unknown"
    node = f'"[{host}]"' if ":" in host else host
    return ("forwarded", f"for={node};proto={scheme}")


def propagation_headers(context: CallContext | None) -> dict[str, str]:
    """corr_id, trace context and the identity headers of one outbound call."""
    if context is None or current_span_is_valid():
        headers = trace_headers(None)  # tracing on: the attempt's span is what goes out
    else:
        headers = trace_headers(context.parent)
    corr_id = logcontext.current().get("corr_id")
    if corr_id:
        headers[REQUEST_ID] = str(corr_id)
    if context is not None:
        headers[SUBJECT_HEADER] = context.identity.subject
        if context.identity.groups:
            headers[GROUPS_HEADER] = ",".join(context.identity.groups)
        if context.engagement:
            headers[ENGAGEMENT_HEADER] = context.engagement
    return headers


def _components(request: httpx.Request) -> list[str]:
    names = ["@method", "@path"]
    if request.url.query:
        names.append("@query")
    names.extend(
        h
        for h in (
            "content-digest",
            SUBJECT_HEADER,
            GROUPS_HEADER,
            ENGAGEMENT_HEADER,
            IDEMPOTENCY_KEY_HEADER,  # what the service deduplicates on is the gateway's word
        )
        if h in request.headers
    )
    return names


def sign_outbound(request: httpx.Request, key: SigningKey, label: str = "gateway") -> None:
    """Add Signature-Input and Signature over the request's identity and body digest.

    ``content-digest`` must already be on the request when it has a body: the
    gateway computes it for bodies it holds and forwards the caller's (verified)
    one for streamed bodies, whose bytes it never holds whole.
    """
    fields = signature_fields(message_from_httpx(request), _components(request), key, label)
    request.headers.update(fields)


def signature_fields(
    message: Message, components: list[str], key: SigningKey, label: str
) -> dict[str, str]:
    """``Signature-Input`` and ``Signature`` (a fresh nonce, now) over ``components``."""
    params: dict[str, ParamValue] = {
        "created": int(time.time()),
        "keyid": key.id,
        "nonce": secrets.token_urlsafe(16),
        "alg": ALGORITHM,
    }
    base = build_signature_base(message, components, params)
    mac = base64.b64encode(hmac_sha256(key.secret, base)).decode("ascii")
    return {
        "signature-input": f"{label}={serialize_signature_params(components, params)}",
        "signature": f"{label}=:{mac}:",
    }
