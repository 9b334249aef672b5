"""End to end over loopback: signed requests through the gateway to a stub."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, make_settings, signer
from tests.integration.conftest import Stack
from tests.integration.raw_http import as_response, read_answer

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:authz-gateway:problem:{code}"
    assert body["title"]
    assert body["detail"]
    assert body["corr_id"] == response.headers["x-request-id"]
    return dict(body)


def test_staffed_analyst_reads_findings(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    with signed_client(stack.url, "alice") as client:
        response = client.get(FINDINGS)
    assert response.status_code == 200
    body = response.json()
    assert body["engagement_id"] == "acme-2026"
    assert body["count"] == len(body["items"]) > 0


def test_analyst_records_a_finding_attributed_to_the_signed_subject(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    new = {"title": "Open redirect on /login", "severity": "low"}
    with signed_client(stack.url, "alice") as client:
        created = client.post(FINDINGS, json=new)
        assert created.status_code == 201
        fetched = client.get(f"{FINDINGS}/{created.json()['id']}")
    assert created.json()["created_by"] == "alice"
    assert fetched.json()["title"] == new["title"]


def test_unsigned_request_is_401(stack: Stack) -> None:
    response = httpx.get(stack.url + FINDINGS)
    assert_problem(response, 401, "unauthenticated")


def test_tampered_request_is_401(stack: Stack) -> None:
    request = httpx.Request("GET", stack.url + FINDINGS)
    signed = next(signer("alice").auth_flow(request))
    signed.headers["x-auth-subject"] = "dana"  # claim the global auditor after signing
    with httpx.Client() as client:
        response = client.send(signed)
    assert_problem(response, 401, "unauthenticated")


def test_foreign_engagement_is_403(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    with signed_client(stack.url, "alice") as client:
        response = client.get("/v1/engagements/initech-redteam/findings")
    assert_problem(response, 403, "forbidden")


def test_client_viewer_cannot_write(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    with signed_client(stack.url, "carol") as client:
        response = client.post(FINDINGS, json={"title": "Sneaky", "severity": "info"})
    assert_problem(response, 403, "forbidden")


def test_global_auditor_reads_any_engagement(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    with signed_client(stack.url, "dana") as client:
        assert client.get("/v1/engagements/initech-redteam/findings").status_code == 200


def test_invalid_body_is_422_problem(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    with signed_client(stack.url, "alice") as client:
        response = client.post(FINDINGS, json={"title": "x", "severity": "catastrophic"})
    body = assert_problem(response, 422, "validation_error")
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "title"), ("body", "severity")}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "SQLi\u0000 in login", "severity": "high"}, "title"),
        ({"title": "SQLi\u001b[8m in login", "severity": "high"}, "title"),
        (
            {"title": "SQLi in login", "severity": "high", "description": "red\u001b[31m"},
            "description",
        ),
    ],
)
def test_control_characters_in_a_finding_are_422_and_never_reach_the_service(
    stack: Stack, signed_client: Callable[..., httpx.Client], body: dict[str, str], field: str
) -> None:
    """A NUL in a title was accepted and stored (PostgreSQL's text cannot hold one; a
    report printing it was cut there); an escape sequence went to every consumer that
    prints it."""
    with signed_client(stack.url, "alice") as client:
        response = client.post(FINDINGS, json=body)
        listed = client.get(FINDINGS).json()
    problem = assert_problem(response, 422, "validation_error")
    assert [tuple(e["loc"]) for e in problem["errors"]] == [("body", field)]  # type: ignore[attr-defined]
    assert not [f for f in listed["items"] if f["title"] == body["title"]]


def test_a_description_keeps_its_line_breaks_and_tabs(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    text = "Steps:\n\t1. log in\r\n\t2. send ' OR 1=1 --"
    with signed_client(stack.url, "alice") as client:
        response = client.post(
            FINDINGS, json={"title": "SQLi", "severity": "high", "description": text}
        )
    assert response.status_code == 201
    assert response.json()["description"] == text


@pytest.mark.parametrize("finding_id", ["-F-0001", "F_0001", "F" * 65])
def test_a_malformed_finding_id_is_422_problem_for_an_allowed_caller(
    stack: Stack, signed_client: Callable[..., httpx.Client], finding_id: str
) -> None:
    """The typed GET is called directly after its guard; a path value outside its pattern
    still gets FastAPI's own 422 (the service is never asked)."""
    with signed_client(stack.url, "alice") as client:
        response = client.get(f"{FINDINGS}/{finding_id}")
    body = assert_problem(response, 422, "validation_error")
    assert [tuple(e["loc"]) for e in body["errors"]] == [("path", "finding_id")]  # type: ignore[attr-defined]


@pytest.mark.parametrize("subject", ["dana", "rita", "alice"])
def test_a_star_engagement_in_the_path_is_malformed_not_the_gateway_wide_domain(
    stack: Stack,
    signed_client: Callable[..., httpx.Client],
    captured_logs: list[dict[str, Any]],
    subject: str,
) -> None:
    """``*`` is the domain of routes without an engagement; from a path it was decided
    gateway-wide (no engagement's rules, denies or closed state), allowed for dana."""
    with signed_client(stack.url, subject) as client:
        response = client.get("/v1/engagements/*/findings")
    assert_problem(response, 400, "bad_request")
    assert not [e for e in captured_logs if e.get("stage") == "authz"]


def test_unknown_finding_is_404(stack: Stack, signed_client: Callable[..., httpx.Client]) -> None:
    with signed_client(stack.url, "alice") as client:
        response = client.get(f"{FINDINGS}/F-9999")
    assert_problem(response, 404, "not_found")


def test_a_write_to_frozen_findings_is_409_not_an_outage(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    """The findings service refuses a write to a frozen engagement (409): a conflict."""
    freeze = httpx.post(f"{stack.stubs['findings'].url}/engagements/acme-2026/findings/freeze")
    assert freeze.status_code == 200
    new = {"title": "Late finding", "severity": "low"}
    with signed_client(stack.url, "alice") as client:
        response = client.post(FINDINGS, json=new)
    body = assert_problem(response, 409, "conflict")
    assert "frozen" not in response.text, "the service's own body is never relayed"
    assert "service" not in body


def test_downstream_down_is_502_naming_the_service(
    stack: Stack, signed_client: Callable[..., httpx.Client]
) -> None:
    stack.stubs["findings"].stop()
    with signed_client(stack.url, "alice") as client:
        response = client.get(FINDINGS)
    body = assert_problem(response, 502, "bad_gateway")
    assert body["service"] == "findings"


def test_corr_id_is_kept_echoed_propagated_and_logged(
    stack: Stack,
    signed_client: Callable[..., httpx.Client],
    captured_logs: list[dict[str, Any]],
) -> None:
    corr_id = "test-corr-0001-abcdef"
    with signed_client(stack.url, "alice") as client:
        response = client.get(FINDINGS, headers={"x-request-id": corr_id})
    logs = list(captured_logs)
    assert response.headers["x-request-id"] == corr_id
    seen = [s for s in stack.stub_app("findings").state.seen if s["path"].endswith("/findings")]
    assert seen[-1]["headers"]["x-request-id"] == corr_id
    mine = [line for line in logs if line.get("corr_id") == corr_id]
    events = {line["event"] for line in mine}
    assert {"decision", "downstream_call", "request_completed"} <= events
    assert mine == logs, "every line logged during the request carries its corr_id"


def test_malformed_request_id_is_replaced(stack: Stack) -> None:
    response = httpx.get(stack.url + "/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert len(response.headers["x-request-id"]) == 32


def test_health_and_readiness_need_no_signature(stack: Stack) -> None:
    assert httpx.get(stack.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(stack.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_the_probes_and_metrics_answer_head_as_get(stack: Stack, path: str) -> None:
    """A load balancer that checks with HEAD got 405 (health.md: GET and HEAD)."""
    get = httpx.get(stack.url + path)
    head = httpx.head(stack.url + path)
    assert (head.status_code, head.content) == (get.status_code, b"")
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", FINDINGS, "GET, POST"),  # two routes share the path: both named
        ("DELETE", FINDINGS + "/F-0001", "GET"),
        ("POST", "/healthz", "GET, HEAD"),
        ("GET", "/admin/policy/reload", "POST"),
    ],
)
def test_a_405_names_every_method_served_at_the_path(
    stack: Stack, method: str, path: str, allow: str
) -> None:
    """RFC 9110 15.5.6: Allow lists the methods the target supports (PUT on the findings
    list said only GET, the first route's method, although POST is served there)."""
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=10) as client:
        response = client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_openapi_schema_lists_every_route(stack: Stack) -> None:
    schema = httpx.get(stack.url + "/openapi.json").json()
    paths = schema["paths"]
    assert {"/healthz", "/readyz", FINDINGS.replace("acme-2026", "{engagement_id}")} <= set(paths)
    assert "FindingCreate" in schema["components"]["schemas"]


def test_readiness_shows_services_left_out_without_being_unready(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    captured_logs: list[dict[str, Any]],
) -> None:
    """Found by an audit: readiness checked only `findings`, so with it alone the gateway
    was ready and silent while the overview answered 503. A service left out is a
    deployment's choice (an authorizer needs none): shown with the routes that answer
    503, and logged once at start-up, never a reason to be unready."""
    findings = live_server(create_stub_app("findings"))
    gateway = live_server(create_app(make_settings({"findings": findings.url})))
    ready = httpx.get(gateway.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    checks = {c["name"]: c for c in ready.json()["checks"]}
    assert checks["service:findings"] == {"name": "service:findings", "ok": True,
                                          "detail": "configured"}  # fmt: skip
    assert checks["service:engagements"]["detail"] == (
        "not configured: overview, close, admin reopen answer 503"
    )
    assert checks["service:reports"]["ok"] is True
    warned = [e for e in captured_logs if e["event"] == "services_not_configured"]
    assert [e["services"] for e in warned] == [["engagements", "reports"]]
    assert warned[0]["routes_answering_503"] == ["admin reopen", "close", "overview"]
    authorizer_only = live_server(create_app(make_settings({})))
    assert httpx.get(authorizer_only.url + "/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 may omit it
        (b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n", 200),
    ],
    ids=["no host", "two hosts", "http/1.0", "one host"],
)
def test_an_http11_request_carries_exactly_one_host(stack: Stack, head: bytes, status: int) -> None:
    """RFC 9112 section 3.2 (found by an HTTP audit: both were served)."""
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=10) as sock:
        sock.sendall(head)
        answer = as_response(*read_answer(sock, bytearray(), 1 << 20))
    assert answer.status_code == status
    if status == 400:
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["corr_id"] == answer.headers["x-request-id"]
