"""The decision endpoints' view of an original request: normalised, templated, refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.authz.targets import RouteTemplates, TargetRefused
from app.core.errors import ConfigError, InvalidPath
from app.edge.paths import normalize_path

TEMPLATES = RouteTemplates(
    [
        "/v1/engagements/{engagement_id}/findings",
        "/v1/engagements/{engagement_id}/findings/{finding_id}",
        "/admin/{rest:path}",
    ]
)


def test_the_engagement_comes_from_the_template_and_the_query_is_split_off() -> None:
    target = TEMPLATES.resolve("GET", "/v1/engagements/acme-2026/findings/F-1?x=/admin/y")
    assert (target.engagement, target.obj, target.action) == (
        "acme-2026",
        "/v1/engagements/acme-2026/findings/F-1",
        "GET",
    )
    assert (target.raw_path, target.query) == (
        "/v1/engagements/acme-2026/findings/F-1",
        "x=/admin/y",
    )


def test_a_template_without_engagement_is_the_global_domain() -> None:
    assert TEMPLATES.resolve("POST", "/admin/policy/reload").engagement == "*"


def test_a_trailing_slash_is_the_same_resource_but_dot_segments_are_refused() -> None:
    target = TEMPLATES.resolve("GET", "/v1/engagements/acme-2026/findings/")
    assert target.obj == "/v1/engagements/acme-2026/findings"
    with pytest.raises(TargetRefused) as refused:
        TEMPLATES.resolve("GET", "/v1/engagements/acme-2026/findings/x/%2E%2E/")
    assert refused.value.reason == "invalid_path"


@pytest.mark.parametrize(
    ("method", "uri", "reason"),
    [
        ("GET", "/v1/elsewhere", "no_route"),
        ("GET", "/v1/engagements/acme-2026", "no_route"),
        ("GET", "/V1/engagements/acme-2026/findings", "no_route"),  # case is not folded
        ("GET", "/v1/engagements/Acme/findings", "invalid_engagement"),
        # Not the gateway-wide domain: a path's "*" is a malformed engagement id.
        ("GET", "/v1/engagements/*/findings", "invalid_engagement"),
        # One trailing slash is the same resource; more end in an empty segment.
        ("GET", "/v1/engagements/acme-2026/findings//", "invalid_path"),
        ("GET", "/v1/engagements/acme-2026/findings/x/////", "invalid_path"),
        ("GET", "/v1/engagements/acme-2026/findings/a%2a", "invalid_path"),
        ("GET", "/v1/engagements/acme-2026/findings%2f..", "invalid_path"),
        ("GET", "/..", "invalid_path"),
        ("GET", "*", "invalid_path"),
        ("GET", "", "invalid_path"),
        ("get", "/admin/x", "invalid_method"),
        ("", "/admin/x", "invalid_method"),
    ],
)
def test_refusals_carry_their_reason(method: str, uri: str, reason: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        TEMPLATES.resolve(method, uri)
    assert refused.value.reason == reason


def test_no_templates_refuse_everything() -> None:
    with pytest.raises(TargetRefused, match="no configured route"):
        RouteTemplates([]).resolve("GET", "/admin/x")


def test_a_bad_template_stops_start_up() -> None:
    with pytest.raises(ConfigError, match=r"authorizer.routes\[1\]"):
        RouteTemplates(["/ok", "/dup/{a}/{a}"])


@given(st.text(alphabet=st.characters(codec="latin-1"), max_size=80))
def test_any_uri_is_refused_or_decided_on_its_normalised_path(tail: str) -> None:
    """Never an exception other than a refusal; a decided object is always the edge's form."""
    uri = "/v1/engagements/acme-2026/" + tail
    reasons = set()
    try:
        target = TEMPLATES.resolve("GET", uri)
    except TargetRefused as refused:
        reasons.add(refused.reason)
    else:
        assert target.obj == normalize_path(uri.partition("?")[0])
    assert reasons <= {"no_route", "invalid_path", "invalid_engagement"}


@given(st.text(alphabet="/.%2eE5cC0aAfF-_~!$&'()*+,=:@;\\", max_size=40))
def test_traversal_alphabet_never_escapes_normalisation(tail: str) -> None:
    uri = "/admin/" + tail
    try:
        expected: str | None = normalize_path(uri)
    except InvalidPath:
        expected = None
    try:
        target = TEMPLATES.resolve("GET", uri)
    except TargetRefused:
        return
    assert target.obj == expected
    assert target.obj.startswith("/admin/")
