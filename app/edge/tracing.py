"""The server span of every request: a pure ASGI middleware outside the edge.

Added only when tracing is on (``create_app``), so a gateway without tracing
pays nothing for it. It continues the caller's trace (``traceparent`` /
``tracestate``), makes the span current for everything the request does (stages,
downstream attempts, the edge's own log line), and names it after the route
template once routing has run: ``GET /v1/engagements/{engagement_id}/findings``.

Attributes follow the HTTP server semantic conventions; the path is the
normalised one the decision was made on, and the query string is left out.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import tracing
from app.core.scope import ERROR_CODE_KEY
from app.core.tracing import SpanKind
from app.ops.metrics import UNMATCHED_ROUTE, route_label


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def _request_attributes(scope: Scope) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": scope["method"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server = scope.get("server")
    if server:
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    agent = _header(scope, b"user-agent")
    if agent:
        attributes["user_agent.original"] = agent[:256]
    return attributes


class ServerSpanMiddleware:
    """One SERVER span per HTTP request, parent of every span the request makes."""

    def __init__(self, app: ASGIApp, untraced_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.untraced = frozenset(untraced_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.untraced or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        parent = tracing.extract(scope.get("headers", ()))
        attributes = _request_attributes(scope)
        with tracing.span(method, attributes, SpanKind.SERVER, parent) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                self._finish(span, scope, status[0] if status else 500)

    @staticmethod
    def _finish(span: tracing.Span, scope: Scope, status: int) -> None:
        if not span.is_recording():
            return
        route = route_label(scope)
        if route != UNMATCHED_ROUTE:
            span.update_name(f"{scope['method']} {route}")
            span.set_attribute("http.route", route)
        span.set_attribute("url.path", scope["path"])  # normalised by the edge by now
        span.set_attribute("http.response.status_code", status)
        corr_id = scope.get("state", {}).get("corr_id")
        if corr_id:
            span.set_attribute("gateway.corr_id", corr_id)
        if status >= 500:
            code = scope.get("state", {}).get(ERROR_CODE_KEY)  # the problem's, when it was ours
            span.set_attribute("error.type", code or str(status))
            span.set_status(tracing.Status(tracing.StatusCode.ERROR))
