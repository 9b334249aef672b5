"""Every route carries its guards and its docs page: checked, not hoped for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from app.api.pipeline import Guard
from app.api.routing import GuardedRoute
from app.main import create_app
from tests.conftest import make_settings

DOCS = Path(__file__).resolve().parents[2] / "app" / "api" / "docs"
# Routes that are deliberately outside the signature check (probes and schema).
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/docs/oauth2-redirect",
    "/docs/signing.md",
}


PASSTHROUGH = {
    "path": "/v1/engagements/{engagement_id}/evidence",
    "service": "findings",
    "upstream_path": "/engagements/{engagement_id}/evidence",
    "methods": ["POST"],
}


def _flatten(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every endpoint route: FastAPI 0.16x keeps included routers nested in app.routes."""
    for route in routes:
        candidates = getattr(route, "effective_candidates", None)
        if callable(candidates):
            yield from _flatten(candidates())
        elif hasattr(route, "dependant"):
            yield route


def _routes(test_key_env: str) -> list[APIRoute]:
    settings = make_settings(
        {"findings": "http://127.0.0.1:9"}, orchestration={"passthrough": [PASSTHROUGH]}
    )
    app = create_app(settings)
    routes = list(_flatten(app.routes))
    # Never vacuous: the checks below must see every route the gateway serves.
    paths = {r.path for r in routes}
    assert {"/v1/engagements/{engagement_id}/findings", "/v1/decisions"} <= paths
    assert PASSTHROUGH["path"] in paths
    return routes


def test_every_protected_route_declares_a_guard_that_runs_first(test_key_env: str) -> None:
    """A declared ``Guard`` is found by ``GuardedRoute``, which runs the gate before the body."""
    for route in _routes(test_key_env):
        if route.path in PUBLIC:
            continue
        # FastAPI 0.16x wraps included routes; the route class is the original's.
        original = getattr(route, "original_route", route)
        assert isinstance(original, GuardedRoute), f"{route.path} is not a GuardedRoute"
        guard = original.guard
        assert isinstance(guard, Guard), f"{route.path} declares no guard"
        assert guard.streamed == (route.path == PASSTHROUGH["path"]), route.path


def test_only_routes_with_nothing_to_solve_skip_fastapis_handler(test_key_env: str) -> None:
    """Called directly after the guard: the request and path values are all they take, a
    Response all they give. Every other guarded route (a body, a query, a model to
    serialise) keeps FastAPI's handler."""
    direct = {
        route.path
        for route in _routes(test_key_env)
        if getattr(getattr(route, "original_route", route), "direct", None) is not None
    }
    decisions = {"/v1/decisions", "/v1/decisions/traefik", "/v1/decisions/envoy"}
    typed = {
        "/v1/engagements/{engagement_id}/findings",
        "/v1/engagements/{engagement_id}/findings/{finding_id}",
    }
    envoy = "/v1/decisions/envoy/{original:path}"
    assert direct == {PASSTHROUGH["path"], envoy, *decisions, *typed}
    posts = [
        r
        for r in _routes(test_key_env)
        if r.path == "/v1/engagements/{engagement_id}/findings" and "POST" in r.methods
    ]
    assert posts  # a body: FastAPI's handler reads and validates it
    assert all(getattr(getattr(r, "original_route", r), "direct", 1) is None for r in posts)


def test_every_route_has_a_docs_page_listed_in_the_index(test_key_env: str) -> None:
    index = (DOCS / "index.md").read_text()
    for route in _routes(test_key_env):
        if route.path in PUBLIC - {"/healthz", "/readyz", "/metrics"}:
            continue
        if route.path == PASSTHROUGH["path"]:
            # Pass-through routes come from configuration; one page documents them all.
            assert "(passthrough.md)" in index
            continue
        assert f"`{route.path}`" in index, f"{route.path} is missing from docs/index.md"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_docs_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    for target in {part.split(")")[0] for part in text.split("](")[1:]}:
        if target.startswith(("http", "#")):
            continue
        assert (DOCS / target.split("#")[0]).is_file(), f"{page} links to missing {target}"


def test_the_schema_keeps_every_request_body(test_key_env: str) -> None:
    """Guards run before FastAPI reads the body, yet the body's schema stays documented."""
    settings = make_settings(
        {"findings": "http://127.0.0.1:9"}, orchestration={"passthrough": [PASSTHROUGH]}
    )
    schema = create_app(settings).openapi()
    for route in _routes(test_key_env):
        if route.body_field is None:
            continue
        for method in route.methods:
            operation = schema["paths"][route.path][method.lower()]
            content = operation["requestBody"]["content"]["application/json"]
            assert content["schema"], f"{method} {route.path} lost its body schema"
