"""Path normalisation: canonical forms, the fixed rules and every known bypass shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.errors import InvalidPath
from app.edge.paths import (
    ENVOY_DECISION_PREFIX,
    MAX_PATH_LENGTH,
    normalize_path,
    normalize_request_path,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/v1/engagements/acme/findings/", "/v1/engagements/acme/findings"),
        ("/v1//engagements///acme", "/v1/engagements/acme"),
        ("//v1/engagements", "/v1/engagements"),
        ("/v1/./engagements/x/../acme", "/v1/engagements/acme"),
        ("/v1/engagements/x/%2e%2e/acme", "/v1/engagements/acme"),
        ("/v1/engagements/x/%2E./acme", "/v1/engagements/acme"),
        ("/%61%63%6D%65", "/acme"),
        ("/a%7Eb", "/a~b"),
        ("/a%20b", "/a%20b"),
        ("/a%3ab", "/a%3Ab"),
        ("/v1/F-1:x@y!$&'()*+,=", "/v1/F-1:x@y!$&'()*+,="),
        (b"/v1/engagements/acme", "/v1/engagements/acme"),
    ],
)
def test_canonical_forms(raw: str | bytes, canonical: str) -> None:
    assert normalize_path(raw) == canonical


def test_normalisation_is_idempotent() -> None:
    once = normalize_path("/v1/./a/%7e/b/../c/")
    assert normalize_path(once) == once


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/V1/Engagements/ACME/findings", "/V1/Engagements/ACME/findings"),
        ("/v1/engagements/acme/findings/F-1", "/v1/engagements/acme/findings/F-1"),
    ],
)
def test_case_is_preserved_never_folded(raw: str, canonical: str) -> None:
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("/..", id="dot-dot above root"),
        pytest.param("/v1/../../etc/passwd", id="dot-dot climb"),
        pytest.param("/v1/%2e%2e/%2e%2e/admin", id="encoded dot-dot climb"),
        pytest.param("/v1/.%2E/.%2e/admin", id="mixed encoded dot-dot"),
        pytest.param("/v1/engagements%2facme", id="encoded slash"),
        pytest.param("/v1/engagements%2Facme", id="encoded slash upper"),
        pytest.param("/v1/a%5cb", id="encoded backslash"),
        pytest.param("/v1/a\\b", id="raw backslash"),
        pytest.param("/v1/findings;jsessionid=1", id=";param"),
        pytest.param("/v1/..;/admin", id="tomcat dot-dot-semicolon"),
        pytest.param("/v1/a%3bb", id="encoded semicolon"),
        pytest.param("/v1/a%00", id="encoded NUL"),
        pytest.param("/v1/a\x00", id="raw NUL"),
        pytest.param("/v1/a\n", id="trailing newline"),
        pytest.param("/v1/a%0d%0aX-Injected:1", id="encoded CRLF"),
        pytest.param("/v1/a b", id="raw space"),
        pytest.param("/v1/a#frag", id="fragment"),
        pytest.param("/v1/<script>", id="angle brackets"),
        pytest.param('/v1/"q"', id="quotes"),
        pytest.param("/v1/%252e%252e/admin", id="double encoding"),
        pytest.param("/v1/%25", id="encoded percent"),
        pytest.param("/v1/%c0%ae%c0%ae/admin", id="overlong UTF-8 dot"),
        pytest.param("/v1/%c0%af", id="overlong UTF-8 slash"),
        pytest.param("/v1/%e0%80%af", id="3-byte overlong slash"),
        pytest.param("/v1/%e2%80%a8", id="encoded line separator"),
        pytest.param("/v1/%ef%bc%8f", id="encoded fullwidth solidus"),
        pytest.param("/v1/\u0430dmin", id="cyrillic look-alike"),
        pytest.param("/v1/\uff0fadmin", id="fullwidth solidus"),
        pytest.param("/\u212aelvin", id="kelvin sign look-alike"),
        pytest.param(b"/v1/\xc0\xae", id="raw overlong bytes"),
        pytest.param("v1/no-leading-slash", id="relative"),
        pytest.param("/bad%zzescape", id="bad escape"),
        pytest.param("/trailing%", id="truncated escape"),
        pytest.param("/" + "a" * MAX_PATH_LENGTH, id="too long"),
    ],
)
def test_bypass_shapes_are_rejected(raw: str | bytes) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(raw)


ENVOY_PATH_CHARS = st.sampled_from(["/", "..", ".", "%2e", "%2E", "a", "admin", "-", "~", "%41"])


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (
            "/v1/decisions/envoy/v1/engagements/a-1/findings",
            "/v1/decisions/envoy/v1/engagements/a-1/findings",
        ),
        ("/v1/decisions/envoy/", "/v1/decisions/envoy"),
        ("/v1/decisions/envoy/./admin/policy", "/v1/decisions/envoy/admin/policy"),
        ("/v1/decisions/envoy/a/../admin", "/v1/decisions/envoy/admin"),
        ("/v1/decisions/envoy//admin", "/v1/decisions/envoy/admin"),
        # Not under the prefix as received: the ordinary rules (the guard refuses these).
        ("/v1/decisions/x/../envoy/admin", "/v1/decisions/envoy/admin"),
        ("/v1/decisions/%65nvoy/../admin", "/v1/decisions/admin"),
    ],
)
def test_the_envoy_decision_prefix_is_normalised_apart(raw: str, canonical: str) -> None:
    assert normalize_request_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/decisions/envoy/../../../admin/policy",
        "/v1/decisions/envoy/../nginx",
        "/v1/decisions/envoy/%2e%2e/%2E%2E/%2e%2e/admin/policy/reload",
        "/v1/decisions/envoy/v1/engagements/../../../../v1/engagements/acme-2026/findings",
    ],
)
def test_dot_segments_after_the_envoy_prefix_cannot_leave_it(raw: str) -> None:
    assert not normalize_path(raw).startswith(ENVOY_DECISION_PREFIX)  # what it used to route
    with pytest.raises(InvalidPath, match="climbs above the root"):
        normalize_request_path(raw)


@given(st.lists(ENVOY_PATH_CHARS, max_size=12).map("".join))
def test_a_path_under_the_envoy_prefix_stays_under_it(rest: str) -> None:
    raw = f"{ENVOY_DECISION_PREFIX}/{rest}"
    try:
        canonical = normalize_request_path(raw)
    except InvalidPath:
        return
    assert canonical == ENVOY_DECISION_PREFIX or canonical.startswith(ENVOY_DECISION_PREFIX + "/")
    assert canonical == ENVOY_DECISION_PREFIX + normalize_path("/" + rest).rstrip("/")


@given(st.lists(ENVOY_PATH_CHARS, max_size=12).map(lambda parts: "/x/" + "".join(parts)))
def test_other_paths_are_normalised_as_before(raw: str) -> None:
    try:
        expected = normalize_path(raw)
    except InvalidPath:
        with pytest.raises(InvalidPath):
            normalize_request_path(raw)
        return
    assert normalize_request_path(raw) == expected
