"""Nothing of a request is parsed before authn, the rate limit and authz have run.

Every route that takes a body, against a real gateway: an unsigned or tampered
request gets 401 (its reason logged) whatever its body, a signed caller the
policy denies gets 403 without its body parsed, and only an allowed caller can
learn that its body is malformed (400/422) or not JSON (415).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import TEST_KEY_ENV, TEST_SECRET, LiveServer, signer
from tests.integration.orchestration_stack import OrchestrationStack, StackBuilder
from tests.integration.test_gateway_e2e import assert_problem

pytestmark = pytest.mark.integration

EVIDENCE_ROUTE = {
    "path": "/v1/engagements/{engagement_id}/evidence",
    "service": "findings",
    "upstream_path": "/engagements/{engagement_id}/evidence",
    "methods": ["POST"],
}
BODIES = {
    "malformed_json": b'{"title": "x", ',
    "invalid_utf8": b'\xff\xfe{"title": "\xc3\x28"}',
    "deeply_nested": b"[" * 5000,
}


@dataclass(frozen=True)
class BodyRoute:
    path: str
    allowed: str  # a subject the shipped policy allows here
    denied: str  # a subject it denies
    parsed: bool = True  # typed route (parsed by FastAPI) or pass-through (bytes only)
    headers: tuple[tuple[str, str], ...] = ()
    body_optional: bool = False  # an empty body is a request of its own (reload)


ROUTES = [
    BodyRoute("/v1/engagements/acme-2026/findings", allowed="alice", denied="carol"),
    BodyRoute(
        "/v1/engagements/acme-2026/close",
        allowed="bob",
        denied="alice",
        headers=(("idempotency-key", "order-test-0001"),),
    ),
    BodyRoute("/admin/policy/explain", allowed="sam", denied="alice"),
    BodyRoute("/admin/policy/query", allowed="sam", denied="alice"),
    BodyRoute("/admin/policy/reload", allowed="sam", denied="alice", body_optional=True),
    BodyRoute("/admin/engagements/acme-2026/reopen", allowed="sam", denied="alice"),
    BodyRoute("/v1/engagements/acme-2026/evidence", "alice", "carol", parsed=False),
]
CASES = [(route, name) for route in ROUTES for name in BODIES]
IDS = [f"{route.path.rsplit('/', 1)[-1]}-{name}" for route, name in CASES]
Case = tuple[BodyRoute, bytes]


@pytest.fixture(scope="module")
def gateway() -> Iterator[OrchestrationStack]:
    """One gateway and its stubs for the whole module (105 cases): counts are read as deltas."""
    started: list[LiveServer] = []

    def start(app: FastAPI) -> LiveServer:
        started.append(LiveServer(app).start())
        return started[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
        try:
            yield StackBuilder(start, patch)(orchestration={"passthrough": [EVIDENCE_ROUTE]})
        finally:
            for server in reversed(started):
                server.stop()


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> Case:
    """Every route that takes a body, with every kind of bad body."""
    route, body_name = request.param
    return route, BODIES[body_name]


@pytest.fixture
def forwarded(gateway: OrchestrationStack) -> Callable[[], int]:
    """How many requests reached the findings service since the test began."""
    before = gateway.requests_seen("findings")
    return lambda: gateway.requests_seen("findings") - before


def _request(
    url: str, route: BodyRoute, body: bytes, subject: str | None, sign_body: bytes | None = None
) -> httpx.Request:
    """A POST carrying ``body``; signed as ``subject`` over ``sign_body`` (default: ``body``)."""
    headers = {"content-type": "application/json", **dict(route.headers)}
    request = httpx.Request("POST", url + route.path, content=body, headers=headers)
    if subject is None:
        return request
    signed_over = httpx.Request(
        "POST", url + route.path, content=body if sign_body is None else sign_body, headers=headers
    )
    signed = next(signer(subject).auth_flow(signed_over))
    for name, value in signed.headers.items():
        if name.lower() != "content-length":
            request.headers[name] = value
    return request


def _send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.send(request)


def _authn_denials(logs: list[dict[str, Any]]) -> list[str]:
    return [
        line["reason"]
        for line in logs
        if line.get("event") == "decision" and line.get("stage") == "authn"
    ]


def test_unsigned_is_401_whatever_the_body(
    gateway: OrchestrationStack,
    captured_logs: list[dict[str, Any]],
    case: Case,
) -> None:
    route, body = case
    response = _send(_request(gateway.url, route, body, subject=None))
    assert_problem(response, 401, "unauthenticated")
    assert _authn_denials(captured_logs) == ["signature_missing"]


def test_body_swapped_under_a_signature_is_401(
    gateway: OrchestrationStack,
    forwarded: Callable[[], int],
    captured_logs: list[dict[str, Any]],
    case: Case,
) -> None:
    """Signed over ``{}``, sent with the bad body: the digest check refuses it.

    A pass-through body is checked as it streams: the service sees the request
    aborted before its end (tests/integration/test_passthrough.py).
    """
    route, body = case
    request = _request(gateway.url, route, body, route.allowed, sign_body=b"{}")
    response = _send(request)
    assert_problem(response, 401, "unauthenticated")
    assert _authn_denials(captured_logs) == ["digest_mismatch"]
    if route.parsed:  # a pass-through body streams; the service gets an aborted request
        assert forwarded() == 0


def test_tampered_identity_is_401(
    gateway: OrchestrationStack,
    captured_logs: list[dict[str, Any]],
    case: Case,
) -> None:
    route, body = case
    request = _request(gateway.url, route, body, route.denied)
    request.headers["x-auth-subject"] = route.allowed  # claim to be someone allowed
    response = _send(request)
    assert_problem(response, 401, "unauthenticated")
    assert _authn_denials(captured_logs) == ["signature_invalid"]


def test_denied_caller_is_403_without_its_body_parsed(
    gateway: OrchestrationStack,
    forwarded: Callable[[], int],
    captured_logs: list[dict[str, Any]],
    case: Case,
) -> None:
    route, body = case
    response = _send(_request(gateway.url, route, body, route.denied))
    assert_problem(response, 403, "forbidden")
    decisions = [line for line in captured_logs if line.get("stage") == "authz"]
    assert [d["decision"] for d in decisions] == ["deny"]
    assert forwarded() == 0


def test_only_an_allowed_caller_learns_its_body_is_malformed(
    gateway: OrchestrationStack,
    forwarded: Callable[[], int],
    captured_logs: list[dict[str, Any]],
    case: Case,
) -> None:
    route, body = case
    response = _send(_request(gateway.url, route, body, route.allowed))
    decisions = [line["decision"] for line in captured_logs if line.get("stage") == "authz"]
    assert decisions == ["allow"]
    if route.parsed:
        assert response.status_code in (400, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
    else:  # pass-through: bytes only, the service got them whole (digest verified)
        assert response.status_code < 400, response.text
        assert forwarded() == 1


PARSED = [route for route in ROUTES if route.parsed]
PARSED_IDS = [route.path.rsplit("/", 1)[-1] for route in PARSED]
NOT_JSON = ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", None]


def _with_type(request: httpx.Request, content_type: str | None) -> httpx.Request:
    """``request`` with another Content-Type (unsigned: the signature does not cover it)."""
    if content_type is None:
        del request.headers["content-type"]
    else:
        request.headers["content-type"] = content_type
    return request


@pytest.mark.parametrize("content_type", NOT_JSON, ids=str)
@pytest.mark.parametrize("route", PARSED, ids=PARSED_IDS)
def test_a_body_that_is_not_json_is_415_for_an_allowed_caller_only(
    gateway: OrchestrationStack,
    forwarded: Callable[[], int],
    route: BodyRoute,
    content_type: str | None,
) -> None:
    """FastAPI validated a text/plain body's bytes against the model: a 422 naming a type
    error. It is a 415 now, after the guard: unsigned 401, denied 403, allowed 415."""
    body = b'{"title": "x", "severity": "low"}'
    unsigned = _with_type(_request(gateway.url, route, body, None), content_type)
    assert_problem(_send(unsigned), 401, "unauthenticated")
    denied = _with_type(_request(gateway.url, route, body, route.denied), content_type)
    assert_problem(_send(denied), 403, "forbidden")
    allowed = _with_type(_request(gateway.url, route, body, route.allowed), content_type)
    response = _send(allowed)
    assert_problem(response, 415, "unsupported_media_type")
    assert "application/json" in response.json()["detail"]
    assert forwarded() == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/problem+json"],
)
@pytest.mark.parametrize("route", PARSED, ids=PARSED_IDS)
def test_json_media_types_reach_the_schema(
    gateway: OrchestrationStack, route: BodyRoute, content_type: str
) -> None:
    """Every type FastAPI parses as JSON passes the media check: a body of the wrong
    shape is the schema's 422, not a 415."""
    request = _with_type(
        _request(gateway.url, route, b'{"unexpected": 1}', route.allowed), content_type
    )
    assert_problem(_send(request), 422, "validation_error")


@pytest.mark.parametrize("route", PARSED, ids=PARSED_IDS)
def test_an_empty_body_is_no_415_whatever_its_type(
    gateway: OrchestrationStack, route: BodyRoute
) -> None:
    """No body has no media type: a required one is the schema's 422, an optional one
    (reload's) is simply absent."""
    request = _with_type(_request(gateway.url, route, b"", route.allowed), "text/plain")
    response = _send(request)
    if route.body_optional:
        assert response.status_code == 200, response.text
    else:
        assert_problem(response, 422, "validation_error")
