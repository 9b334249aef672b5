"""``no_route``: rules that no route of the gateway is decided as (``app.authz.routes``).

``may_meet`` must never miss a meeting (a false "never applies" would tell an admin
to delete a live rule): a hypothesis property checks it against Casbin's own
``key_match2`` and Starlette's own route matching over generated paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from casbin.util import key_match2
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.routing import compile_path

from app.api.route_shapes import route_shapes
from app.authz.lint import lint
from app.authz.policy import PolicyEngine
from app.authz.routes import RouteShape, may_meet, routes_for
from app.authz.source import Issue, read_policy
from app.core.config import CONFIG_FILE_ENV, Settings, load_settings
from tests.conftest import POLICY_DIR

DEMO = [
    RouteShape("/v1/engagements/{engagement_id}/findings", frozenset({"GET", "POST"}), "typed"),
    RouteShape(
        "/v1/engagements/{engagement_id}/findings/{finding_id}", frozenset({"GET"}), "typed"
    ),
    RouteShape("/admin/policy/explain", frozenset({"POST"}), "typed", scoped=False),
    RouteShape("/v1/engagements/{engagement_id}/evidence", frozenset({"upload"}), "passthrough"),
]


@pytest.mark.parametrize(
    ("pattern", "template", "meet"),
    [
        ("/v1/engagements/:e/findings", "/v1/engagements/{engagement_id}/findings", True),
        ("/v1/engagements/acme-2026/findings", "/v1/engagements/{engagement_id}/findings", True),
        ("/v1/engagements/:e/finding", "/v1/engagements/{engagement_id}/findings", False),
        ("/v1/engagements/:e/findings", "/v1/engagements/{e}/findings/{f}", False),
        ("/v1/engagements/:e/findings/:f", "/v1/engagements/{e}/findings", False),
        ("/admin/*", "/admin/policy/explain", True),
        ("/admin/*", "/admin", False),  # "/admin/.*" needs the slash
        ("/admin/policy", "/admin/{rest:path}", True),
        ("*", "/anything", True),
        ("/v1/*/findings", "/v1/engagements/{e}/findings", True),
        ("/v1/report.pdf", "/v1/reportXpdf", True),  # "." is any character to keyMatch2
        ("/v1/engagements//findings", "/v1/engagements/{e}/findings", False),
    ],
)
def test_may_meet(pattern: str, template: str, meet: bool) -> None:
    assert may_meet(pattern, template) is meet


SEGMENTS = st.sampled_from(["a", "b", "ab", "a.b", "x-1", "xa", ""])
PATTERN_SEGMENTS = st.one_of(SEGMENTS, st.sampled_from([":p", ":q", "*", "a*", "x:y"]))
TEMPLATE_SEGMENTS = st.one_of(SEGMENTS, st.sampled_from(["{p}", "{q:int}", "{rest:path}", "x{p}"]))


def _joined(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def _template(parts: list[str]) -> str:
    """Starlette refuses a parameter name twice: number them."""
    return _joined([part.replace("{", f"{{n{i}") for i, part in enumerate(parts)])


VALUES = st.sampled_from(["a", "b", "ab", "a.b", "x-1", "7", "xa"])


@st.composite
def template_and_path(draw: st.DrawFn) -> tuple[str, str]:
    """A route template and a path it matches (each parameter given a drawn value)."""
    parts = draw(st.lists(TEMPLATE_SEGMENTS, min_size=1, max_size=4))
    path: list[str] = []
    for part in parts:
        if part == "{rest:path}":
            path.extend(draw(st.lists(VALUES, max_size=2)) or [""])  # "/a/" for "/a/{rest:path}"
        elif part == "{q:int}":
            path.append(str(draw(st.integers(0, 99))))
        elif "{" in part:
            path.append(part.partition("{")[0] + draw(VALUES))
        else:
            path.append(part)
    return _template(parts), _joined(path)


@st.composite
def pattern_for(draw: st.DrawFn, path: str) -> str:
    """A rule pattern drawn around ``path``: each segment kept, made a ``:param``, ended
    with ``*``, or replaced by another; most of them match it, some do not."""
    parts: list[str] = []
    for segment in path[1:].split("/"):
        choice = draw(st.sampled_from(["keep", "keep", "param", "star", "other"]))
        if choice == "star":
            parts.append("*")
            break
        parts.append(
            segment if choice == "keep" else ":p" if choice == "param" else draw(PATTERN_SEGMENTS)
        )
    return _joined(parts)


@settings(max_examples=500)
@given(st.data(), template_and_path())
def test_may_meet_never_misses_a_path_both_match(
    data: st.DataObject, drawn: tuple[str, str]
) -> None:
    template, path = drawn
    pattern = data.draw(
        st.one_of(
            pattern_for(path), st.lists(PATTERN_SEGMENTS, min_size=1, max_size=4).map(_joined)
        )
    )
    regex, _, _ = compile_path(template)
    assert regex.match(path), (template, path)
    if key_match2(path, pattern):
        assert may_meet(pattern, template), (pattern, template, path)


def lint_with_routes(tmp_path: Path, routes: list[RouteShape], *lines: str) -> list[Issue]:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text("\n".join(lines) + "\n")
    return lint(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"), routes=routes)


def test_a_rule_of_no_route_is_a_warning_that_says_what_to_change(tmp_path: Path) -> None:
    issues = lint_with_routes(
        tmp_path,
        DEMO,
        "p, viewer, *, /v1/engagements/:engagement/findings, GET, allow",
        "p, viewer, *, /v1/engagements/:engagement/finding, POST, deny",
        "p, viewer, *, /v1/engagements/:engagement/findings/:f, DELETE, allow",
        "p, viewer, *, /v1/engagements/:engagement/evidence, upload, allow",
        "p, viewer, *, /admin/*, *, allow",
        "p, viewer, *, /v1/engagements/:engagement/findings, get, allow",
        "g, alice, viewer, acme-2026",
    )
    found = [(i.location, i.message) for i in issues if i.code == "no_route"]
    assert [location for location, _ in found] == ["policy.csv:2", "policy.csv:3"]
    typo, method = (message for _, message in found)
    assert "no route of this gateway is decided as /v1/engagements/:engagement/finding" in typo
    assert "nothing is denied by it" in typo
    assert "correct the path" in typo
    assert "takes DELETE (they take GET)" in method
    assert "it grants nothing" in method
    assert "correct the action" in method
    # The lower-case method is action_case's, not a second warning.
    assert [i.code for i in issues if i.location == "policy.csv:6"] == ["action_case"]


def test_an_engagement_rule_or_grant_on_gateway_wide_routes_is_a_warning(tmp_path: Path) -> None:
    """/admin is decided in domain *: a rule or a grant of one engagement never counts
    there (the decision path agrees: the flagged grant does not let bob in)."""
    lines = (
        "p, admin, acme-2026, /admin/*, *, allow",  # 1: engagement rule, global route
        "p, security_admin, *, /admin/*, *, allow",
        "g, bob, security_admin, acme-2026",  # 3: a grant that never counts
        "g, carol, security_admin, *",  # fine
        "g2, dave, security_admin",  # fine
        "p, lead, *, /admin/*, *, allow",
        "p, lead, *, /v1/engagements/:engagement/findings, POST, allow",
        "g, erin, lead, acme-2026",  # fine: lead has a rule on a scoped route
        "g, admin, viewer, acme-2026",
        "p, viewer, *, /v1/engagements/:engagement/findings, GET, allow",
    )
    issues = lint_with_routes(tmp_path, DEMO, *lines)
    found = {i.location: i.message for i in issues if i.code == "no_route"}
    assert sorted(found) == ["policy.csv:1", "policy.csv:3"]
    assert "decided gateway-wide (domain *), never in engagement acme-2026" in found["policy.csv:1"]
    assert "write * as its domain" in found["policy.csv:1"]
    assert "grant it with * as the engagement (g, bob, security_admin, *)" in found["policy.csv:3"]
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    assert not engine.decide("bob", "*", "/admin/policy/explain", "POST").allowed
    assert engine.decide("carol", "*", "/admin/policy/explain", "POST").allowed
    assert engine.decide("dave", "*", "/admin/policy/explain", "POST").allowed


def test_a_grant_of_a_role_whose_rules_match_no_route_says_so(tmp_path: Path) -> None:
    """Not "gateway-wide routes" (an audit found the reason imprecise): its rules match
    no route at all, and each of them has its own warning."""
    issues = lint_with_routes(
        tmp_path,
        DEMO,
        "p, deciders, *, /v1/decisions/*, GET, allow",
        "g, erin, deciders, acme-2026",
    )
    found = {i.location: i.message for i in issues if i.code == "no_route"}
    assert sorted(found) == ["policy.csv:1", "policy.csv:2"]
    assert "no rule of deciders matches a route of this gateway" in found["policy.csv:2"]
    assert "gateway-wide" not in found["policy.csv:2"]


def test_without_routes_nothing_is_checked(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text("p, viewer, *, /nowhere, GET, allow\ng, a, viewer, x-1\n")
    issues = lint(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    assert "no_route" not in {i.code for i in issues}


def test_authorizer_templates_take_every_method() -> None:
    routes = [RouteShape("/v1/engagements/{engagement_id}/findings", None, "authorizer")]
    assert routes_for("/v1/engagements/:e/findings", "DELETE", routes) == routes


def test_the_route_shapes_are_what_the_gateway_decides() -> None:
    """Typed routes by path and method (the decision routes' own paths are not objects),
    pass-through routes by policy_object and action, authorizer templates by any method."""
    settings = Settings(
        services={"findings": {"url": "http://127.0.0.1:9"}},
        orchestration={
            "passthrough": [
                {
                    "path": "/v1/engagements/{engagement_id}/evidence",
                    "service": "findings",
                    "upstream_path": "/engagements/{engagement_id}/evidence",
                    "methods": ["POST"],
                    "policy_object": "/v1/engagements/{engagement_id}/uploads",
                    "action": "upload",
                }
            ]
        },
        authorizer={"routes": ["/v1/engagements/{engagement_id}/overview"]},
    )
    shapes = {(s.template, s.actions, s.origin) for s in route_shapes(settings)}
    findings = "/v1/engagements/{engagement_id}/findings"
    assert (findings, frozenset({"GET"}), "typed") in shapes
    assert (findings, frozenset({"POST"}), "typed") in shapes
    assert ("/admin/policy/explain", frozenset({"POST"}), "typed") in shapes
    scoped = {s.template: s.scoped for s in route_shapes(settings)}
    assert scoped[findings] is True
    assert scoped["/admin/policy/explain"] is False
    assert scoped["/admin/engagements/{engagement}/reopen"] is False  # decided in *
    assert (
        "/v1/engagements/{engagement_id}/uploads",
        frozenset({"upload"}),
        "passthrough",
    ) in shapes
    assert ("/v1/engagements/{engagement_id}/overview", None, "authorizer") in shapes
    assert not any(template.startswith("/v1/decisions") for template, _, _ in shapes)


def test_the_shipped_policy_has_no_rule_without_a_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the demo configuration's routes (what `make run` serves)."""
    monkeypatch.setenv(CONFIG_FILE_ENV, str(POLICY_DIR.parent / "config" / "demo.yaml"))
    routes = route_shapes(load_settings())
    assert {shape.origin for shape in routes} == {"typed", "passthrough", "authorizer"}
    source = read_policy(POLICY_DIR / "model.conf", POLICY_DIR / "policy.csv")
    assert [i for i in lint(source, routes=routes) if i.code == "no_route"] == []
