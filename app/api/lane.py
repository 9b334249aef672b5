"""The gateway's ASGI application: the edge, then the lane, then FastAPI's router.

FastAPI (0.165, on Starlette 1.10) runs every HTTP request through its own stack
before a route sees it: a native-telemetry check (about 7 µs on the bench machine),
``ServerErrorMiddleware``, ``ExceptionTelemetryMiddleware``,
``AppBodyLimitMiddleware``, the user middleware, ``ExceptionMiddleware``,
``AsyncExitStackMiddleware``, the router's match loop, and the route's
``request_response`` wrapper with its two exit stacks and its own exception
wrapper. Under uvicorn a minimal FastAPI route costs 2.9x the CPU of a raw ASGI
answer (278 against 96 µs a request, user and system, on the bench machine).

``GatewayApp`` composes its HTTP stack itself, once:

    [ServerSpanMiddleware ->] EdgeMiddleware -> FastLane -> ExceptionMiddleware
        -> AsyncExitStackMiddleware -> router

- The edge (``app.edge.correlation``) already answers what ``ServerErrorMiddleware``
  would (an unexpected exception becomes a 500 problem+json with the ``corr_id``),
  so that layer, which would answer in plain text first, is not used; the gateway
  has its own tracing (``app.edge.tracing``), so FastAPI's native telemetry is not
  consulted for HTTP; FastAPI's application body limit is unset (the edge caps
  bodies).
- ``FastLane`` matches the request against the router's own routes, in the
  router's order. When the first route that matches at all matches fully and is a
  guarded route that is called directly (``GuardedRoute.lane_handler``: the typed
  GET routes, the decision endpoints, the pass-through routes), the lane runs that
  handler (guard, then endpoint) under an ``ExceptionMiddleware`` built from the
  same exception handlers, so every error is the same problem+json. Anything else
  (a partial match, the probes, the admin routes, every route with a body, no
  match) goes to FastAPI's router unchanged.

Nothing is declared twice: the routes, their guards, the OpenAPI schema and the
exception handlers are FastAPI's; the lane only skips the layers that do nothing
for these routes. Weighed against serving the hot routes from a router of our own
(declared beside FastAPI's, faster to match, but a second route table to keep in
step with the schema and the route contract test) and against keeping FastAPI's
stack (no code, about 170 µs a request on the bench machine): see
docs/decisions/0006-guards-before-the-body.md, "The lane".
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi_offline import FastAPIOffline
from starlette._utils import get_route_path
from starlette.datastructures import State
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import EdgeSettings
from app.core.errors import ConfigError
from app.edge.correlation import EdgeMiddleware
from app.edge.tracing import ServerSpanMiddleware


async def _run_lane_route(scope: Scope, receive: Receive, send: Send) -> None:
    """Call the matched route's direct handler and send its response."""
    request = Request(scope, receive, send)
    response = await scope["route"].lane_handler(request)
    await response(scope, receive, send)


def literal_prefix(route: BaseRoute) -> str:
    """The literal text every path the route matches starts with ("" when unknown).

    A ``Route`` or ``Mount`` matches by a regular expression anchored at the start
    of the path whose first part is the path template's text before its first
    parameter; a path that does not start with that text matches it not at all.
    """
    if isinstance(route, Route | Mount) and isinstance(route.path, str):
        return route.path.partition("{")[0]
    return ""


# Starlette's convertors whose expressions never match a "/" (``path`` does).
_ONE_SEGMENT = frozenset({"str", "int", "float", "uuid"})
_PARAM = re.compile(r"{[^}:]*(?::([^}]*))?}")


def segment_count(route: BaseRoute) -> int | None:
    """How many "/" every path the route matches has, when that is fixed (else ``None``).

    A ``Route`` whose parameters all take one segment matches only paths with as
    many "/" as its template; a ``Mount`` or a ``path`` parameter matches any number.
    """
    if not isinstance(route, Route) or not isinstance(route.path, str):
        return None
    if any((kind or "str") not in _ONE_SEGMENT for kind in _PARAM.findall(route.path)):
        return None
    return route.path.count("/")


class FastLane:
    """Serve directly called guarded routes; hand everything else to ``fallback``.

    The router's routes are walked in the router's order, as its own loop does, but
    a route whose literal prefix the path does not start with, or whose fixed number
    of segments the path does not have, is skipped without running its expression
    (it cannot match at all): the decision and pass-through routes sit after dozens
    of others, most of them under ``/v1/engagements/``. The prefixes are recomputed whenever the
    router's list is another list or of another length.
    """

    def __init__(self, app: FastAPI, fallback: ASGIApp, lane: ASGIApp) -> None:
        self.app = app
        self.fallback = fallback
        self.lane = lane
        self._routes: list[BaseRoute] | None = None
        self._count = -1
        # By a path's number of "/": the routes that may match it, in the router's order.
        self._by_slashes: dict[int, list[tuple[str, BaseRoute]]] = {}
        self._any: list[tuple[str, BaseRoute]] = []  # those of no fixed number

    def _candidates(self, slashes: int) -> list[tuple[str, BaseRoute]]:
        routes = self.app.router.routes
        if routes is not self._routes or len(routes) != self._count:
            shapes = [(literal_prefix(r), segment_count(r), r) for r in routes]
            self._any = [(prefix, r) for prefix, count, r in shapes if count is None]
            self._by_slashes = {
                n: [(prefix, r) for prefix, count, r in shapes if count in (None, n)]
                for n in {count for _, count, _ in shapes if count is not None}
            }
            self._routes, self._count = routes, len(routes)
        return self._by_slashes.get(slashes, self._any)

    def first_match(self, scope: Scope) -> tuple[BaseRoute, Match, Scope] | None:
        """The first route that matches ``scope`` at all, as the router's loop finds it."""
        path = get_route_path(scope)
        for prefix, route in self._candidates(path.count("/")):
            if path.startswith(prefix):
                match, child_scope = route.matches(scope)
                if match is not Match.NONE:
                    return route, match, child_scope
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.first_match(scope)
            if found is not None:
                route, match, child_scope = found
                if match is Match.FULL and getattr(route, "lane_handler", None) is not None:
                    scope.update(child_scope)
                    scope.setdefault("router", self.app.router)
                    await self.lane(scope, receive, send)
                    return
        await self.fallback(scope, receive, send)


class GatewayApp(FastAPI):
    """FastAPI with the gateway's HTTP stack (see the module docstring).

    ``edge`` (the body cap and pace) and ``untraced_paths`` (``None``: tracing off)
    configure the edge and the server span; middleware added with ``add_middleware`` is refused
    (it would have no place in this stack).
    """

    edge: EdgeSettings = EdgeSettings()
    untraced_paths: tuple[str, ...] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        if self.user_middleware:
            raise ConfigError("the gateway composes its own middleware (app/api/lane.py)")
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        below = ExceptionMiddleware(
            AsyncExitStackMiddleware(self.router), handlers=handlers, debug=self.debug
        )
        lane = ExceptionMiddleware(_run_lane_route, handlers=handlers, debug=self.debug)
        edge = self.edge
        app: ASGIApp = EdgeMiddleware(
            FastLane(self, below, lane),
            edge.max_body_bytes,
            edge.body_timeout_seconds,
            edge.body_min_rate_bytes,
        )
        if self.untraced_paths is not None:  # outermost, and absent when off
            app = ServerSpanMiddleware(app, untraced_paths=self.untraced_paths)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan, websocket: FastAPI's own way
            await super().__call__(scope, receive, send)
            return
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)


class AppState(State):
    """Starlette's ``State`` whose attributes are also ordinary instance attributes.

    ``State`` keeps them in a dict served by ``__getattr__``, which Python calls only
    after the ordinary lookup failed: every read of ``app.state.gate`` first built and
    discarded an ``AttributeError`` with its formatted message (about 0.5 µs, against
    0.01 µs for an attribute; the hot routes read four to six a request). Setting and
    deleting keep ``State``'s dict as it was, so anything reading that sees the same.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        super().__init__(state)
        for key, value in self._state.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: Any, value: Any) -> None:
        super().__setattr__(key, value)
        object.__setattr__(self, key, value)

    def __delattr__(self, key: Any) -> None:
        super().__delattr__(key)
        object.__delattr__(self, key)


class WholeAssets:
    """The docs' static assets, always served whole: a ``Range`` is ignored.

    RFC 9110 section 14.2 lets a server ignore it, and the pages never send one;
    Starlette's ``FileResponse`` answered a malformed one with a text/plain 400 and an
    unsatisfiable one with a text/plain 416, where every refusal is a problem.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            fields = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
            scope = {**scope, "headers": fields}
        await self.app(scope, receive, send)


def gateway_app(
    edge: EdgeSettings, untraced_paths: tuple[str, ...] | None, **kwargs: Any
) -> GatewayApp:
    """A ``GatewayApp`` with offline Swagger UI and ReDoc (fastapi-offline).

    fastapi-offline is a factory that returns a plain ``FastAPI`` with its docs routes
    and static mount; the instance becomes a ``GatewayApp`` (which adds no state of its
    own, only class attributes and the two methods) rather than copying that wiring.

    Starlette's trailing-slash redirect is off: the edge removes a trailing slash from
    every path, so the redirect it offered for a path one slash short of a route (the
    static mount's ``/static-offline-docs``) could only loop, and it wrote the
    request's ``Host`` into ``Location`` for anyone, unsigned (an open redirect, a
    cache-poisoning shape). Such a path is an unmatched one now: a 404 problem.
    """
    app = FastAPIOffline(redirect_slashes=False, **kwargs)
    for route in app.router.routes:
        if isinstance(route, Mount) and route.name == "static-offline-docs":
            route.app = WholeAssets(route.app)
    app.__class__ = GatewayApp
    assert isinstance(app, GatewayApp)
    app.state = AppState(app.state._state)
    app.edge = edge
    app.untraced_paths = untraced_paths
    return app
