"""Path normalisation: canonical forms, the fixed rules and every known bypass shape."""

from __future__ import annotations

import pytest

from app.core.errors import InvalidPath
from app.edge.paths import MAX_PATH_LENGTH, normalize_path


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
