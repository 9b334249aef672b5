"""Every route carries its guards and its docs page: checked, not hoped for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api.deps import authenticate, authorize
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
}


def _calls(dependant: Dependant) -> Iterator[object]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _calls(dep)


PASSTHROUGH = {
    "path": "/v1/engagements/{engagement_id}/evidence",
    "service": "findings",
    "upstream_path": "/engagements/{engagement_id}/evidence",
    "methods": ["POST"],
}


def _routes(test_key_env: str) -> list[APIRoute]:
    settings = make_settings(
        {"findings": "http://127.0.0.1:9"}, orchestration={"passthrough": [PASSTHROUGH]}
    )
    app = create_app(settings)
    return [r for r in app.routes if isinstance(r, APIRoute)]


def test_every_protected_route_is_authenticated_and_authorized(test_key_env: str) -> None:
    for route in _routes(test_key_env):
        if route.path in PUBLIC:
            continue
        calls = set(_calls(route.dependant))
        if route.path == PASSTHROUGH["path"]:
            # The streaming guard calls the same stage functions (authenticate_request,
            # spend_quota, decide_request); tests/integration/test_passthrough.py proves it.
            names = {getattr(c, "__name__", "") for c in calls}
            assert "passthrough_guard" in names
            continue
        assert authenticate in calls, f"{route.path} lacks the authentication guard"
        assert authorize in calls, f"{route.path} lacks the engagement/RBAC guard"


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
