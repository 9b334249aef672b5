"""Bad input past authentication never gets a 500: every route fuzzed with signed requests.

``test_signature_fuzz.py`` attacks the signature fields and so stops at 401. Here every
request is validly signed by the reference signer as a subject the policy allows
everywhere (``signed_stack.FUZZ_SUBJECT``), so the handlers' own parsing is what
meets the garbage: path parameters, queries, JSON bodies, content types,
Idempotency-Key, the decision endpoints' original method and URI, pass-through
paths and headers. The routes are the app's own (``app.routes``, pass-through and
decision routes included): a new route is fuzzed without a change here.

Every answer must hold the product rule: no 5xx (the stubs are healthy); every
4xx is ``application/problem+json`` whose ``corr_id`` is the ``X-Request-ID`` the
answer carries; no service took a write for a request the gateway refused; and a
request refused before its workflow (400, 413, 415, 422, unless that is a service's
own refusal relayed) reached no service at all.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.decision_schemas import Mode
from app.api.decisions import Authorizer, DecisionGuard
from app.api.routing import GuardedRoute
from app.core.errors import InvalidPath
from app.core.problems import PROBLEM_CONTENT_TYPE
from app.edge.paths import normalize_request_path
from app.main import create_app
from tests.conftest import POLICY_DIR, TEST_KEY_ENV, TEST_SECRET
from tests.unit.signed_stack import (
    Answer,
    InProcessGateway,
    RawRequest,
    fuzz_settings,
    in_process_gateway,
)

# Examples per route: a guarded route's 40 (a decision endpoint's other methods, whose
# code is its GET's, 15; a route without a guard, which reads no input, 10): about
# 1,200 signed requests, some 20 s on 2 noisy cores.
EXAMPLES = 40
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Refused before any workflow runs: no service may have seen the request at all.
REFUSED_BEFORE_WORK = frozenset({400, 413, 415, 422})
PARAM = re.compile(r"{(\w+)(?::(\w+))?}")


@dataclass(frozen=True)
class RouteCase:
    """One method of one route, as the app serves it."""

    method: str
    template: str
    body: bool  # takes a body (JSON, or a pass-through's stream)
    mode: Mode | None  # a decision endpoint's mode
    guarded: bool  # the gate runs for it

    @property
    def id(self) -> str:
        return f"{self.method} {self.template}"


def examples_for(case: RouteCase) -> int:
    if not case.guarded:
        return EXAMPLES // 4
    if case.mode is not None and case.method != "GET":
        return EXAMPLES * 3 // 8
    return EXAMPLES


def route_cases(routes: list[Any]) -> list[RouteCase]:
    """Every (method, route) of the app; decision endpoints take every method they list."""
    cases = []
    for route in routes:
        if not isinstance(route, APIRoute):
            continue  # the static docs assets' mount
        guard = getattr(route, "guard", None)
        mode = guard.mode if isinstance(guard, DecisionGuard) else None
        for method in sorted(route.methods or ()):
            body = route.body_field is not None or (
                isinstance(route, GuardedRoute) and guard is not None and method in WRITES
            )
            cases.append(RouteCase(method, route.path, body, mode, guard is not None))
    return cases


def _collected_routes() -> list[RouteCase]:
    """The routes of an app built as the fixture's will be (built, not started)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
        return route_cases(create_app(fuzz_settings(POLICY_DIR)).routes)


ROUTES = _collected_routes()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    stack = in_process_gateway(tmp_path_factory.mktemp("signed-fuzz"))
    yield stack
    stack.close()


# --- what the wire lets through ---------------------------------------------------

# httptools takes a request target of printable ASCII only; "?" starts the query and
# "#" the fragment, which it drops.
PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "?#")
QUERY_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "#")
# A field value: tab, visible ASCII and (as UTF-8) any other text; never CR, LF, NUL,
# DEL or another control octet, and no leading whitespace (the parser drops it).
FIELD_CHARS = st.characters(codec="utf-8", exclude_characters="\x7f", min_codepoint=0x09)
field_value = st.text(FIELD_CHARS, max_size=40).map(
    lambda v: "".join(c for c in v if c == "\t" or ord(c) >= 0x20).lstrip(" \t")
)


def mostly(
    usual: st.SearchStrategy[Any], *unusual: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``usual`` four times in five, else one of ``unusual`` (shrinks towards ``usual``):
    a request wrong in one or two ways at a time gets past the earlier checks."""
    return st.integers(0, 4).flatmap(lambda n: usual if n else st.one_of(*unusual))


VALID_PARAMS = {
    "engagement_id": ["acme-2026", "globex-cloud", "initech-2025", "initech-redteam", "zz-none"],
    "engagement": ["acme-2026", "initech-2025", "initech-redteam", "zz-none"],
    "finding_id": ["F-0001", "F-0002", "F-9999"],
    "report_id": ["R-0001", "R-0002", "R-9999"],
    "original": ["v1/engagements/acme-2026/findings", "v1/engagements/acme-2026/findings/F-0001",
                 "v1/engagements/acme-2026/close", "admin/policy", "", "v1/decisions"],
}  # fmt: skip

percent_escapes = st.binary(min_size=1, max_size=6).flatmap(
    lambda raw: st.sampled_from(["%{:02x}", "%{:02X}"]).map(
        lambda form: "".join(form.format(b) for b in raw)
    )
)
unicode_escaped = st.text(max_size=4).map(lambda t: urllib.parse.quote(t, safe=""))
segment_piece = st.one_of(
    st.text(PATH_CHARS, max_size=12),
    percent_escapes,
    unicode_escaped,
    st.sampled_from([".", "..", "%2e", "%2E%2e", "...", "", "*", ";", "%", "%zz", "\\", "~"]),
    st.integers(60, 5000).map(lambda n: "a" * n),
)


def path_param(name: str, kind: str | None) -> st.SearchStrategy[str]:
    valid = st.sampled_from(VALID_PARAMS.get(name, ["x"]))
    garbage = st.lists(st.one_of(segment_piece, valid), min_size=1, max_size=4).map("".join)
    if kind == "path":  # several segments
        garbage = st.lists(garbage, min_size=1, max_size=4).map("/".join)
    return mostly(valid, garbage)


def paths(template: str) -> st.SearchStrategy[str]:
    parts = PARAM.split(template)  # literal, name, kind, literal, ...
    pieces: list[st.SearchStrategy[str]] = []
    for i in range(0, len(parts), 3):
        pieces.append(st.just(parts[i]))
        if i + 1 < len(parts):
            pieces.append(path_param(parts[i + 1], parts[i + 2]))
    suffix = mostly(st.just(""), st.sampled_from(["/", "//", "/.", "/..", "/x", "%2F", "/%2e"]))
    return st.tuples(*pieces, suffix).map("".join).map(lambda p: p if p.startswith("/") else "/")


query_text = st.one_of(
    st.text(QUERY_CHARS.replace("&", "").replace("=", ""), max_size=10),
    percent_escapes,
    st.sampled_from(["%", "%z", "%zz", "%ff%fe", "+", "status", "closed", "a"]),
)
queries = mostly(
    st.just(""),
    st.lists(
        st.tuples(st.sampled_from(["status", "q", "a", "reason"]) | query_text,
                  st.none() | query_text),
        min_size=1,
        max_size=5,
    ).map(lambda pairs: "&".join(k if v is None else f"{k}={v}" for k, v in pairs)),
    st.text(QUERY_CHARS, max_size=30),
)  # fmt: skip


def json_values() -> st.SearchStrategy[Any]:
    texts = st.one_of(
        st.text(max_size=12),
        st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
        st.sampled_from(["low", "high", "who_can", "what_can", "GET", "/admin/policy", "acme-2026",
                         "*", "/v1/engagements/acme-2026/findings?x#y", "x" * 600]),
    )  # fmt: skip
    scalars = st.one_of(
        st.none(), st.booleans(), texts, st.floats(), st.integers(-(2**80), 2**80),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
        max_leaves=12,
    )


VALID_BODIES: dict[str, list[dict[str, Any]]] = {
    "/v1/engagements/{engagement_id}/findings": [
        {"title": "Weak TLS ciphers", "severity": "low"},
        {"title": "SQL injection", "severity": "high", "description": "login form"},
    ],
    "/v1/engagements/{engagement_id}/close": [{"reason": "Retest complete."}],
    "/admin/engagements/{engagement}/reopen": [{"reason": "Client asked for a retest."}],
    "/admin/policy/reload": [{"reason": "fuzz"}, {}],
    "/admin/policy/explain": [
        {"subject": "alice", "method": "POST", "path": "/v1/engagements/acme-2026/findings"},
        {"subject": "sam", "groups": ["red-team"], "method": "GET", "path": "/admin/policy"},
        {"subject": "bob", "method": "read", "path": "/v1/engagements/acme-2026/overview",
         "engagement": "acme-2026"},
    ],
    "/admin/policy/query": [
        {"query": "who_can", "action": "POST", "path": "/v1/engagements/acme-2026/findings"},
        {"query": "who_can", "action": "GET", "path": "/admin/policy", "engagement": "*"},
        {"query": "what_can", "subject": "alice", "engagement": "acme-2026"},
        {"query": "what_can", "subject": "erin", "groups": ["red-team"]},
    ],
}  # fmt: skip


def _set(body: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**body, key: value}


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def json_bodies(template: str) -> st.SearchStrategy[bytes]:
    """Mostly the route's own bodies with one member changed; else any JSON, or bytes
    that are not JSON at all (deep nesting, huge numbers, bad UTF-8, duplicate keys)."""
    bodies = VALID_BODIES.get(template, [{}])
    valid = st.sampled_from(bodies)
    keys = st.sampled_from(sorted({k for b in bodies for k in b}) or ["x"])
    mutated = st.one_of(
        st.tuples(valid, keys, json_values()).map(lambda t: _set(*t)),
        st.tuples(valid, st.text(max_size=6), json_values()).map(lambda t: _set(*t)),
        st.tuples(valid, keys).map(lambda t: {k: v for k, v in t[0].items() if k != t[1]}),
    )
    depth = st.integers(1, 100_000)
    raw = st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"", b"null", b"NaN", b"-Infinity", b"1e999", b"\xef\xbb\xbf{}",
                         b'{"title": "abc", "title": 5}', b'{"reason": "\xff\xfe abc"}',
                         b'{"reason": "\\ud800 abc"}', b'{"a":', b"[]", b'"x"', b"{}" * 2]),
        depth.map(lambda n: b"[" * n + b"]" * n),
        depth.map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(1, 6000).map(lambda n: b'{"title": 1' + b"9" * n + b', "severity": 1}'),
        st.tuples(valid, st.binary(max_size=4)).map(lambda t: _encode(t[0]) + t[1]),
    )  # fmt: skip
    return st.one_of(valid.map(_encode), mutated.map(_encode), mutated.map(_encode),
                     json_values().map(_encode), raw)  # fmt: skip


CONTENT_TYPES = [
    "application/json; charset=utf-8", "application/problem+json", "APPLICATION/JSON",
    "application/json; charset=latin-1", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/octet-stream", "application/",
    "json", ";", "application/json;;;", "", "application/json, text/plain",
]  # fmt: skip
KEY = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{7,40}\Z")
METHODS = ["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO", "get", "G-T", "", "read"]


def original_uris() -> st.SearchStrategy[str]:
    routes = [r.template for r in ROUTES if r.template.startswith(("/v1/eng", "/admin"))]
    real = st.sampled_from(routes).flatmap(paths)
    with_query = st.tuples(real, queries).map(lambda t: f"{t[0]}?{t[1]}" if t[1] else t[0])
    odd = st.sampled_from(["*", "", "/#x", "http://a/", "/%", "/a/../b", "//admin/policy"])
    return mostly(real, with_query, field_value, odd)


def one_field(
    name: str, usual: st.SearchStrategy[str], unusual: st.SearchStrategy[str]
) -> st.SearchStrategy[list[Any]]:
    """Mostly one ``name`` field of a usual value; else none, two, or an unusual one."""
    one = usual.map(lambda v: [(name, v)])
    return mostly(
        one,
        st.just([]),
        unusual.map(lambda v: [(name, v)]),
        st.lists(usual | unusual, min_size=2, max_size=2).map(lambda vs: [(name, v) for v in vs]),
    )


def rare_field(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[Any]]:
    """Mostly no ``name`` field; else one or two."""
    return mostly(st.just([]), st.lists(values, min_size=1, max_size=2).map(
        lambda vs: [(name, v) for v in vs]))  # fmt: skip


def field_lists(case: RouteCase, authorizer: Authorizer) -> st.SearchStrategy[list[Any]]:
    content_type = st.just("application/json")
    fields = [
        one_field("content-type", content_type, st.sampled_from(CONTENT_TYPES) | field_value),
        one_field("idempotency-key", KEY, field_value),
        rare_field("x-request-id", KEY | field_value),
        rare_field("x-client-ref", field_value),
        rare_field("x-auth-groups", st.just("red-team") | field_value),
        rare_field("traceparent", st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01") | field_value),
        st.lists(st.tuples(st.from_regex(r"\Ax-[a-z0-9-]{1,12}\Z"), field_value), max_size=2),
    ]
    names = authorizer.original_headers(case.mode) if case.mode else None
    if names is not None:
        method, uri = names
        fields.append(one_field(method, st.sampled_from(["GET", "POST"]),
                                st.sampled_from(METHODS) | field_value))  # fmt: skip
        fields.append(one_field(uri, original_uris(), field_value))
    return st.tuples(*fields).map(lambda lists: [f for fs in lists for f in fs])


@st.composite
def requests(draw: st.DrawFn, case: RouteCase, authorizer: Authorizer) -> tuple[RawRequest, bool]:
    """A signed request to ``case`` and whether it is expected to pass authn."""
    path = draw(paths(case.template))
    query = draw(queries)
    fields = draw(field_lists(case, authorizer))
    bodies = json_bodies(case.template)
    body = draw(bodies if case.body else mostly(st.just(b""), bodies))
    headers = [(n.encode(), v.encode()) for n, v in fields]
    names = authorizer.original_headers(case.mode) if case.mode else None
    raw = RawRequest(case.method, path.encode(), query.encode(), headers, body)
    signed = raw.signed(cover=names or ())
    # Authn refuses groups it cannot read, and an original header left unsigned (absent);
    # a path that normalises into another decision endpoint needs that one's headers.
    present = {n for n, _ in fields}
    authentic = "x-auth-groups" not in present and all(n in present for n in names or ())
    if names is not None and not _canonical(path):
        authentic = False
    return signed, authentic


def _canonical(path: str) -> bool:
    try:
        return normalize_request_path(path) == path
    except InvalidPath:
        return False


# --- what every answer must be -----------------------------------------------------


def assert_answer_holds(gateway: InProcessGateway, answer: Answer) -> None:
    corr_id = answer.header("x-request-id")
    assert corr_id, "every answer carries X-Request-ID"
    assert answer.status < 500, (answer.status, answer.body[:300])
    if answer.status < 400:
        return
    assert answer.header("content-type") == PROBLEM_CONTENT_TYPE, answer.body[:300]
    problem = answer.json()
    assert problem["corr_id"] == corr_id
    assert problem["status"] == answer.status
    reached = gateway.transport.requests_of(corr_id)
    written = [d for d in reached if d.accepted_write]
    assert not written, f"{answer.status} refused, yet a service took {written}"
    relayed = any(d.status == answer.status for d in reached)  # the service's own refusal
    if answer.status in REFUSED_BEFORE_WORK and not relayed:
        assert not reached, f"{answer.status} refused, yet {reached} was sent"


@pytest.mark.parametrize("case", ROUTES, ids=[c.id for c in ROUTES])
def test_signed_garbage_never_gets_a_500(gateway: InProcessGateway, case: RouteCase) -> None:
    authorizer: Authorizer = gateway.app.state.authorizer

    @settings(
        max_examples=examples_for(case),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(drawn=requests(case, authorizer))
    def run(drawn: tuple[RawRequest, bool]) -> None:
        request, authentic = drawn
        answer = gateway.send(request)
        assert_answer_holds(gateway, answer)
        if authentic:
            assert answer.status != 401, answer.body[:300]

    run()


def test_every_documented_route_is_fuzzed() -> None:
    """The enumeration found the routes of the index (a lost one would go unfuzzed)."""
    templates = {c.template for c in ROUTES}
    assert {
        "/v1/engagements/{engagement_id}/findings",
        "/v1/engagements/{engagement_id}/findings/{finding_id}",
        "/v1/engagements/{engagement_id}/overview",
        "/v1/engagements/{engagement_id}/close",
        "/v1/engagements/{engagement_id}/evidence",
        "/v1/engagements/{engagement_id}/reports/{report_id}/content",
        "/v1/decisions", "/v1/decisions/traefik", "/v1/decisions/envoy/{original:path}",
        "/admin/policy", "/admin/policy/reload", "/admin/policy/explain", "/admin/policy/query",
        "/admin/engagements/{engagement}/reopen", "/admin/breakers",
    } <= templates  # fmt: skip
