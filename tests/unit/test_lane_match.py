"""The lane's route match skips by literal prefix and still finds what the router's loop finds."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import BaseRoute, Match, Mount, Route

from app.api.lane import FastLane, GatewayApp, literal_prefix, segment_count
from app.main import create_app
from tests.conftest import TEST_KEY_ENV, TEST_SECRET, make_settings

PASSTHROUGH = {
    "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
    "service": "findings",
    "upstream_path": "/engagements/{engagement_id}/reports/{report_id}",
}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
PIECES = ["acme-2026", "F-0001", "R-1", "x", "", "%41", "..", "envoy", "v1", "{", "é"]
PIECES += ["engagements", "findings", "reports", "content", "decisions", "admin", "policy"]


@pytest.fixture(scope="module")
def lane() -> FastLane:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
        app = create_app(
            make_settings(
                {"findings": "http://127.0.0.1:9"},
                orchestration={"passthrough": [PASSTHROUGH]},
                authorizer={"routes": ["/v1/engagements/{engagement_id}/findings"]},
            )
        )
    assert isinstance(app, GatewayApp)
    return FastLane(app, app.router, app.router)


def _router_loop(routes: list[BaseRoute], scope: dict[str, Any]) -> tuple[Any, Match] | None:
    """The router's own loop: the first route whose match is not NONE."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return route, match
    return None


def _paths(lane: FastLane) -> list[str]:
    """Every route's template with its parameters filled in, and near misses."""
    out = []
    for route in lane.app.router.routes:
        template = getattr(route, "path", "")
        filled = re.sub(r"\{[^}]*\}", "acme-2026", template) or "/"
        out += [filled, filled + "/", filled + "/x", filled[:-1] or "/"]
    return out


def _scope(path: str, method: str, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "root_path": root_path, "headers": []}


def test_every_route_of_the_gateway_has_the_prefix_its_expression_starts_with(
    lane: FastLane,
) -> None:
    for route in lane.app.router.routes:
        prefix = literal_prefix(route)
        if isinstance(route, Route | Mount):
            assert route.path_regex.pattern.startswith("^" + re.escape(prefix))
            assert "{" not in prefix
        else:
            assert prefix == ""


def test_known_paths_find_the_same_first_route(lane: FastLane) -> None:
    routes = lane.app.router.routes
    for path in _paths(lane):
        for method in METHODS:
            scope = _scope(path, method)
            found = lane.first_match(scope)
            expected = _router_loop(routes, _scope(path, method))
            assert ((found[0], found[1]) if found else None) == expected, (path, method)


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES), min_size=0, max_size=7),
    method=st.sampled_from(METHODS),
    root=st.sampled_from(["", "/gw"]),
)
def test_any_path_finds_the_same_first_route(
    lane: FastLane, pieces: list[str], method: str, root: str
) -> None:
    path = root + "/" + "/".join(["v1", *pieces])
    found = lane.first_match(_scope(path, method, root))
    expected = _router_loop(lane.app.router.routes, _scope(path, method, root))
    assert ((found[0], found[1]) if found else None) == expected


def test_a_route_added_later_is_matched(lane: FastLane) -> None:
    app = lane.app
    assert lane.first_match(_scope("/late-route", "GET")) is None

    @app.get("/late-route")
    async def late() -> dict[str, str]:
        return {}

    try:
        found = lane.first_match(_scope("/late-route", "GET"))
        assert found is not None
        assert found[1] is Match.FULL
    finally:
        app.router.routes.pop()
    assert lane.first_match(_scope("/late-route", "GET")) is None


def test_segment_counts_are_fixed_only_for_one_segment_parameters(lane: FastLane) -> None:
    by_path = {getattr(r, "path", None): r for r in lane.app.router.routes}
    assert segment_count(by_path["/v1/engagements/{engagement_id}/findings"]) == 4
    assert segment_count(by_path["/v1/decisions/envoy/{original:path}"]) is None
    assert segment_count(by_path["/healthz"]) == 1
    mounts = [r for r in lane.app.router.routes if isinstance(r, Mount)]
    assert mounts
    assert all(segment_count(m) is None for m in mounts)
    assert segment_count(Route("/a/{n:int}/{f:float}/{u:uuid}", lambda: None)) == 4
