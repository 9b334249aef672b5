"""Pass-through ``Location``/``Content-Location``: the service's own URLs mapped back."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from app.core.config import PassthroughRoute, ServiceSettings
from app.workflows.passthrough import PublicLocations, parse_link_field, relayed_headers

REPORTS = PassthroughRoute(
    path="/v1/engagements/{engagement_id}/reports/{report_id}/content",
    service="reports",
    upstream_path="/engagements/{engagement_id}/reports/{report_id}/content",
)
DOCS = PassthroughRoute(  # cannot map back: the engagement is not in the service's URL
    path="/v1/engagements/{engagement_id}/docs/{doc_id}",
    service="reports",
    upstream_path="/docs/{doc_id}",
)
TWICE = PassthroughRoute(
    path="/v1/engagements/{engagement_id}/pairs/{a}",
    service="findings",
    upstream_path="/pairs/{a}/of/{a}/in/{engagement_id}",
)
SERVICES = {
    "reports": ServiceSettings(url="http://reports.internal:8080/api"),
    "findings": ServiceSettings(url="http://findings.internal"),
}
LOCATIONS = PublicLocations([DOCS, REPORTS, TWICE], SERVICES)
UPSTREAM = httpx.URL("http://reports.internal:8080/api/engagements/acme/reports/R-1/content")

# One raw path segment as the gateway forwards it: unreserved octets and %-escapes.
SEGMENT = (
    st.lists(
        st.one_of(
            st.sampled_from("abcXYZ019-._~!$&'()*+,;=:@"),
            st.integers(0, 255).map(lambda octet: f"%{octet:02X}"),
        ),
        min_size=1,
        max_size=12,
    )
    .map("".join)
    .filter(lambda s: s not in (".", ".."))
)
QUERY = st.text(alphabet="abc=&%20", max_size=10)


@given(SEGMENT, SEGMENT, QUERY)
def test_the_services_url_of_a_route_maps_back_to_the_routes_path(
    engagement: str, report: str, query: str
) -> None:
    own = f"http://reports.internal:8080/api/engagements/{engagement}/reports/{report}/content"
    public = f"/v1/engagements/{engagement}/reports/{report}/content"
    suffix = f"?{query}" if query else ""
    assert LOCATIONS.relayed("reports", own + suffix, UPSTREAM) == public + suffix
    # The same as an absolute path reference on the service's origin.
    assert LOCATIONS.relayed("reports", own[len("http://reports.internal:8080") :], UPSTREAM) == (
        public
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("../R-2/content", "/v1/engagements/acme/reports/R-2/content"),  # relative reference
        (
            "/api/engagements/acme/reports/R-2/content#top",
            "/v1/engagements/acme/reports/R-2/content#top",
        ),
        (
            "HTTP://REPORTS.internal:8080/api/engagements/a/reports/b/content",
            "/v1/engagements/a/reports/b/content",
        ),
        # Another origin is the service's choice: relayed as sent (a pre-signed URL).
        (
            "https://objects.example/bucket/R-1?X-Sig=abc",
            "https://objects.example/bucket/R-1?X-Sig=abc",
        ),
        # The service's host is its own whatever the scheme or port (Forwarded: proto).
        (
            "http://reports.internal:9090/api/engagements/a/reports/b/content",
            "/v1/engagements/a/reports/b/content",
        ),
        (
            "https://reports.internal/api/engagements/a/reports/b/content",
            "/v1/engagements/a/reports/b/content",
        ),
        ("https://xn--0x/x", None),  # not a host httpx can read: dropped, not a 500
        ("http://xn--a/", None),
        ("https:////.[]/", None),
        # The service's own origin, but no route serves it: dropped.
        ("/api/admin/users", None),
        ("/engagements/acme/reports/R-2/content", None),  # outside the service's base path
        ("/api/docs/D-1", None),  # DOCS cannot map back
        ("/api/engagements/acme/reports/R-2/content/extra", None),
        ("http://[::1", None),  # not a URL
    ],
)
def test_locations(value: str, expected: str | None) -> None:
    assert LOCATIONS.relayed("reports", value, UPSTREAM) == expected


def test_a_placeholder_used_twice_upstream_must_match_the_same_value_twice() -> None:
    upstream = httpx.URL("http://findings.internal/pairs/x/of/x/in/acme")
    assert LOCATIONS.relayed("findings", "/pairs/p/of/p/in/e", upstream) == (
        "/v1/engagements/e/pairs/p"
    )
    assert LOCATIONS.relayed("findings", "/pairs/p/of/q/in/e", upstream) is None


def test_a_service_without_routes_maps_nothing_of_its_own() -> None:
    upstream = httpx.URL("http://other.internal/x")
    assert LOCATIONS.relayed("other", "/x/y", upstream) is None
    assert LOCATIONS.relayed("other", "http://elsewhere/x", upstream) == "http://elsewhere/x"


URLISH = st.text(
    alphabet=":/?#[]@!$&'()*+,;=%.-_~ \\\t\x00\x7fhtpsHTP0189reports.internal\u00e9\u0100",
    max_size=60,
)


@given(st.one_of(st.text(max_size=60), URLISH))
def test_any_field_value_is_mapped_dropped_or_relayed_never_an_error(value: str) -> None:
    relayed = LOCATIONS.relayed("reports", value, UPSTREAM)
    assert relayed is None or isinstance(relayed, str)
    if relayed is not None and relayed != value:
        assert relayed.startswith("/v1/engagements/")  # mapped: only ever a gateway path


def _answer(*fields: tuple[str, str], status: int = 200) -> httpx.Response:
    request = httpx.Request("GET", UPSTREAM)
    return httpx.Response(status, headers=list(fields), request=request)


def _relayed(service: str, answer: httpx.Response, locations: PublicLocations) -> Headers:
    """``relayed_headers`` read as Starlette reads the fields it sends."""
    return Headers(raw=relayed_headers(service, answer, locations))


def test_every_copy_of_a_field_is_relayed_as_a_copy() -> None:
    """httpx's ``items()`` joins copies with a comma: two cookies would become one."""
    cookies = ("a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/", "b=2")
    answer = _answer(("Set-Cookie", cookies[0]), ("Set-Cookie", cookies[1]))
    relayed = _relayed("reports", answer, LOCATIONS)
    assert relayed.getlist("set-cookie") == list(cookies)


def test_hop_by_hop_nominated_and_gateway_fields_are_dropped() -> None:
    answer = _answer(
        ("Connection", "close, X-Internal-Route"),
        ("X-Internal-Route", "db-7"),
        ("Keep-Alive", "timeout=5"),
        ("Server", "svc/1.2"),
        ("X-Request-ID", "theirs"),
        ("ETag", '"r1"'),
    )
    assert list(_relayed("reports", answer, LOCATIONS).items()) == [("etag", '"r1"')]


def test_link_urls_of_the_service_are_mapped_others_kept_unserved_dropped() -> None:
    own = "http://reports.internal:8080/api/engagements/acme/reports"
    link = (
        f'<{own}/R-2/content>; rel="next"; title="a, b", '
        "<https://cdn.example/logo.png>; rel=icon, "
        "</api/admin>; rel=admin"
    )
    relayed = _relayed("reports", _answer(("Link", link)), LOCATIONS)
    assert relayed["link"] == (
        '</v1/engagements/acme/reports/R-2/content>; rel="next"; title="a, b", '
        "<https://cdn.example/logo.png>; rel=icon"
    )
    only_unserved = _answer(("Link", "</api/admin>; rel=admin"))
    assert "link" not in _relayed("reports", only_unserved, LOCATIONS)
    unparsed = _answer(("Link", "not a link"))
    assert "link" not in _relayed("reports", unparsed, LOCATIONS)


@pytest.mark.parametrize(
    ("value", "links"),
    [
        ("<a>", [("a", "")]),
        ('<a>; rel="x, y"; b=c , <b>;rel=next', [("a", '; rel="x, y"; b=c'), ("b", ";rel=next")]),
        (", <a>,, <b> ,", [("a", ""), ("b", "")]),  # empty list elements (RFC 9110 #rule)
        ("", []),
        ("<a", None),
        ("<a>; rel", [("a", "; rel")]),
        ("<a>; =x", None),
        ('<a>; rel="unterminated', None),
        ("a", None),
    ],
)
def test_link_fields_parse_as_rfc_8288_lists(
    value: str, links: list[tuple[str, str]] | None
) -> None:
    assert parse_link_field(value) == links


@given(st.one_of(st.text(max_size=80), URLISH, st.text(alphabet='<>;=", \ta', max_size=80)))
def test_any_link_field_parses_or_is_refused_never_an_error(value: str) -> None:
    links = parse_link_field(value)
    if links is not None:
        assert all("<" not in uri and ">" not in uri for uri, _ in links)
    answer = _answer(("Link", value)) if value.isascii() and "\n" not in value else None
    if answer is not None:
        _relayed("reports", answer, LOCATIONS)  # never raises


def test_a_utf8_location_is_percent_encoded_once() -> None:
    value = "/api/engagements/a/reports/caf\u00e9/content?q=\u00e9".encode()
    relayed = _relayed("reports", _answer((b"location", value)), LOCATIONS)  # type: ignore[arg-type]
    assert relayed["location"] == "/v1/engagements/a/reports/caf%C3%A9/content?q=%C3%A9"


def test_a_field_relayed_unchanged_keeps_its_own_bytes() -> None:
    value = "https://cdn.example/caf\u00e9".encode()
    relayed = _relayed("reports", _answer((b"location", value)), LOCATIONS)  # type: ignore[arg-type]
    assert relayed.raw == [(b"location", value)]


def test_routes_that_cannot_be_mapped_back_in_linear_time_are_not_mapped() -> None:
    """A segment mixing placeholders and text would backtrack polynomially."""
    routes = [
        PassthroughRoute(
            path="/v1/engagements/{engagement_id}/files/{name}/{ext}",
            service="findings",
            upstream_path="/files/{engagement_id}/{name}.{ext}",
        ),
        PassthroughRoute(
            path="/v1/engagements/{engagement_id}/raw/{Rest}",  # not a plain placeholder
            service="findings",
            upstream_path="/raw/{engagement_id}",
        ),
    ]
    locations = PublicLocations(routes, SERVICES)
    upstream = httpx.URL("http://findings.internal/files/e/a.b")
    hostile = "/files/e/" + "a." * 20_000
    assert locations.relayed("findings", hostile, upstream) is None
    assert locations.relayed("findings", "/files/e/a.b", upstream) is None
    assert locations.relayed("findings", "/raw/e", upstream) is None


def test_a_link_with_an_anchor_is_dropped() -> None:
    own = "http://reports.internal:8080/api/engagements/a/reports/b/content"
    link = f'<{own}>; rel=next; anchor="#x", <{own}>; rel=self'
    relayed = _relayed("reports", _answer(("Link", link)), LOCATIONS)
    assert relayed["link"] == "</v1/engagements/a/reports/b/content>; rel=self"
