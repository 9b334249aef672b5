"""The lane (app/api/lane.py): direct guarded routes skip FastAPI's stack, answers unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.lane import FastLane, GatewayApp
from app.api.routing import GuardedRoute
from app.core.errors import AccessDenied, ConfigError
from app.edge.correlation import EdgeMiddleware
from tests.conftest import signer
from tests.integration.conftest import Stack
from tests.integration.test_gateway_e2e import assert_problem

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
NEW_FINDING = {"title": "Open redirect", "severity": "low"}


def _gateway_app(stack: Stack) -> GatewayApp:
    app = stack.gateway.server.config.app
    assert isinstance(app, GatewayApp)
    return app


def _lane(app: GatewayApp) -> FastLane:
    layer: Any = app.middleware_stack
    while not isinstance(layer, FastLane):
        layer = layer.app  # the edge (and the server span, with tracing on) wrap it
    return layer


class _Counting:
    """The lane's fallback, counting the paths it was handed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def _route(app: FastAPI, path: str, method: str) -> GuardedRoute:
    for route in app.router.routes:
        if (
            isinstance(route, GuardedRoute)
            and route.path == path
            and method in (route.methods or ())
        ):
            return route
    raise LookupError(path)


def _get_with_lane_handler(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, handler: Callable[[Request], Awaitable[None]]
) -> httpx.Response:
    """GET the findings list with ``handler`` in place of the route's guard and endpoint."""
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=10) as client:
        client.get("/healthz")  # builds the stack
        route = _route(_gateway_app(stack), "/v1/engagements/{engagement_id}/findings", "GET")
        monkeypatch.setattr(route, "lane_handler", handler)
        return client.get(FINDINGS)


def test_direct_routes_take_the_lane_and_every_other_request_the_router(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=10) as client:
        assert client.get(FINDINGS).status_code == 200  # builds the stack
        app = _gateway_app(stack)
        lane = _lane(app)
        counting = _Counting(lane.fallback)
        lane.fallback = counting
        answers = {
            ("GET", FINDINGS): client.get(FINDINGS),
            ("GET", f"{FINDINGS}/F-1"): client.get(f"{FINDINGS}/F-1"),
            ("POST", FINDINGS): client.post(FINDINGS, json=NEW_FINDING),
            ("DELETE", FINDINGS): client.delete(FINDINGS),
            ("GET", "/v1/nowhere"): client.get("/v1/nowhere"),
            ("GET", "/healthz"): client.get("/healthz"),
        }
    statuses = {key: response.status_code for key, response in answers.items()}
    assert statuses[("GET", FINDINGS)] == 200
    assert statuses[("GET", f"{FINDINGS}/F-1")] in (200, 404)  # the stub's answer either way
    assert statuses[("POST", FINDINGS)] == 201
    assert statuses[("GET", "/healthz")] == 200
    # A path whose route has other methods: the router's 405, as a problem.
    assert_problem(answers[("DELETE", FINDINGS)], 405, "method_not_allowed")
    assert_problem(answers[("GET", "/v1/nowhere")], 404, "not_found")
    # The typed GETs never reached the router; everything else did, once each.
    assert counting.paths == [FINDINGS, FINDINGS, "/v1/nowhere", "/healthz"]


def test_an_unexpected_error_on_the_lane_is_a_500_problem_without_internals(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, captured_logs: list[dict[str, Any]]
) -> None:
    async def boom(request: Request) -> None:
        raise RuntimeError("secret internals")

    response = _get_with_lane_handler(stack, monkeypatch, boom)
    body = assert_problem(response, 500, "internal")
    assert "secret" not in response.text
    assert any(
        e["event"] == "unhandled_error" and e.get("corr_id") == body["corr_id"]
        for e in captured_logs
    )


def test_a_gateway_error_on_the_lane_goes_through_the_same_exception_handlers(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def denied(request: Request) -> None:
        raise AccessDenied("The policy does not allow this request.")

    assert_problem(_get_with_lane_handler(stack, monkeypatch, denied), 403, "forbidden")


def test_the_lane_sets_what_the_router_would_in_the_scope(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=10) as client:
        client.get("/healthz")
        app = _gateway_app(stack)
        route = _route(app, "/v1/engagements/{engagement_id}/findings", "GET")
        real = route.lane_handler
        assert real is not None

        async def spy(request: Request) -> Any:
            seen.update(request.scope)
            return await real(request)

        monkeypatch.setattr(route, "lane_handler", spy)
        assert client.get(FINDINGS).status_code == 200
    assert seen["app"] is app
    assert seen["router"] is app.router
    assert seen["route"] is route
    assert seen["endpoint"] is route.endpoint
    assert seen["path_params"] == {"engagement_id": "acme-2026"}


def test_middleware_added_the_starlette_way_is_refused(test_key_env: str) -> None:
    from app.main import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings())
    app.add_middleware(EdgeMiddleware, max_body_bytes=1)
    with pytest.raises(ConfigError, match="composes its own middleware"):
        app.build_middleware_stack()


def test_routes_added_later_are_seen_by_the_lane(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        client.get("/healthz")
        app = _gateway_app(stack)

        @app.get("/late")
        async def late() -> dict[str, str]:
            return {"late": "yes"}

        response = client.get("/late")
    assert response.json() == {"late": "yes"}
