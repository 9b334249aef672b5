"""Path normalisation: canonical forms and every known bypass shape."""

from __future__ import annotations

import pytest

from app.core.errors import InvalidPath
from app.edge.paths import normalize_path


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/v1/engagements/acme/findings/", "/v1/engagements/acme/findings"),
        ("/v1//engagements///acme", "/v1/engagements/acme"),
        ("/v1/./engagements/x/../acme", "/v1/engagements/acme"),
        ("/%61%63%6D%65", "/acme"),
        ("/a%7Eb", "/a~b"),
        ("/a%20b", "/a%20b"),
        ("/a%3ab", "/a%3Ab"),
    ],
)
def test_canonical_forms(raw: str, canonical: str) -> None:
    assert normalize_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/..",
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/%2e%2e/admin",
        "/v1/engagements%2facme",
        "/v1/engagements%2Facme",
        "/v1/a%5cb",
        "/v1/a\\b",
        "/v1/findings;jsessionid=1",
        "/v1/..;/admin",
        "/v1/a%00",
        "/v1/a%0d%0aX-Injected:1",
        "/v1/%c0%ae%c0%ae/admin",
        "/v1/%e2%80%a8",
        "/v1/\u0430dmin",
        "v1/no-leading-slash",
        "/bad%zzescape",
        "/trailing%",
    ],
)
def test_bypass_shapes_are_rejected(raw: str) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(raw)
