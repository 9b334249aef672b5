"""Declarative pass-through routes: streaming both ways, authorized like typed routes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from app.authn.digest import content_digest
from app.authn.signer import HttpSignatureAuth
from app.core.config import Settings
from app.main import create_app
from app.stubs.data import report_chunks
from tests.conftest import (
    POLICY_DIR,
    TEST_KEY_ENV,
    TEST_KEY_ID,
    TEST_SECRET,
    LiveServer,
    make_settings,
    send,
    signer,
)
from tests.integration.orchestration_stack import FAST_RETRY, OrchestrationStack, StackBuilder
from tests.integration.raw_http import RawService, request_head
from tests.integration.test_gateway_e2e import assert_problem

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
CHUNK = 64 * 1024
EVIDENCE = "/v1/engagements/acme-2026/evidence"
CONTENT = "/v1/engagements/acme-2026/reports/R-0001/content"
ROUTES = [
    {
        "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
        "service": "reports",
        "upstream_path": "/engagements/{engagement_id}/reports/{report_id}/content",
        "max_response_bytes": 16 * MIB,
        "forward_headers": ["X-Client-Ref"],
    },
    {
        "path": "/v1/engagements/{engagement_id}/evidence",
        "service": "findings",
        "upstream_path": "/engagements/{engagement_id}/evidence",
        "methods": ["POST"],
        "statuses": [201],
        "max_request_bytes": 12 * MIB,
    },
]


@pytest.fixture
def stack(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, monkeypatch: pytest.MonkeyPatch
) -> OrchestrationStack:
    build = StackBuilder(live_server, monkeypatch)
    return build(orchestration={"passthrough": ROUTES}, edge={"max_body_bytes": 32 * MIB})


def payload(size: int, seed: int = 1) -> list[bytes]:
    block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32)
    return [block] * (size // CHUNK)


def signed_headers(url: str, body: bytes, subject: str = "alice") -> dict[str, str]:
    request = httpx.Request("POST", url, content=body)
    signed = next(signer(subject).auth_flow(request))
    return {k: v for k, v in signed.headers.items() if k.lower() != "content-length"}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.01)


def test_ten_megabytes_stream_through_without_being_buffered(stack: OrchestrationStack) -> None:
    chunks = payload(10 * MIB)
    whole = b"".join(chunks)
    url = stack.url + EVIDENCE
    uploads: list[dict[str, Any]] = stack.stub("findings").state.uploads

    def gated() -> Iterator[bytes]:
        """Hold back the last chunk until the service has received bytes of this body.

        A gateway that buffered the whole body would forward nothing before the
        last chunk, so this wait would never end and the test would fail.
        """
        for index, chunk in enumerate(chunks):
            if index == len(chunks) - 1:
                wait_for(lambda: bool(uploads) and uploads[-1]["received"] > 0, "first bytes")
                received_before_last = uploads[-1]["received"]
                assert received_before_last > 0
            yield chunk

    response = httpx.post(url, content=gated(), headers=signed_headers(url, whole), timeout=60)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["bytes"] == len(whole)
    assert body["sha256"] == hashlib.sha256(whole).hexdigest()
    assert body["signature"] == "valid", "the stub verified the gateway's signature and digest"
    assert uploads[-1]["done"] is True


def test_a_streamed_body_with_a_wrong_digest_is_cut_before_it_completes(
    stack: OrchestrationStack,
) -> None:
    signed_for = b"".join(payload(2 * MIB, seed=1))
    sent = payload(2 * MIB, seed=2)
    url = stack.url + EVIDENCE
    failures = {"reason": "digest_mismatch"}
    before = REGISTRY.get_sample_value("gateway_signature_failures_total", failures) or 0.0
    response = httpx.post(
        url, content=iter(sent), headers=signed_headers(url, signed_for), timeout=30
    )
    assert_problem(response, 401, "unauthenticated")
    uploads = stack.stub("findings").state.uploads
    assert not any(u["done"] for u in uploads), "the service never got a complete request"
    # Counted as a typed route's digest mismatch is (an alert on signature failures sees it).
    after = REGISTRY.get_sample_value("gateway_signature_failures_total", failures)
    assert after == before + 1


def test_a_declared_body_over_the_route_limit_is_413(stack: OrchestrationStack) -> None:
    body = b"x" * (13 * MIB)
    url = stack.url + EVIDENCE
    headers = signed_headers(url, body)
    response = httpx.post(url, content=body, headers=headers, timeout=30)
    assert_problem(response, 413, "payload_too_large")
    assert stack.stub("findings").state.uploads == []


def test_a_chunked_body_over_the_route_limit_is_cut_with_413(stack: OrchestrationStack) -> None:
    chunks = payload(13 * MIB)
    url = stack.url + EVIDENCE
    headers = signed_headers(url, b"".join(chunks))
    response = httpx.post(url, content=iter(chunks), headers=headers, timeout=30)
    assert_problem(response, 413, "payload_too_large")
    assert not any(u["done"] for u in stack.stub("findings").state.uploads)
    # The route's limit cut it, not the stub's own cap (a 10 MiB cap refused it first).
    assert "body_too_large" not in [seen["fault"] for seen in stack.stub("findings").state.seen]


def test_a_streamed_body_that_stalls_is_cut_with_408(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client stops mid-body: 408 problem and a close; the service never gets it all."""
    stack = StackBuilder(live_server, monkeypatch)(
        orchestration={"passthrough": ROUTES},
        edge={"max_body_bytes": 32 * MIB, "body_timeout_seconds": 1},
    )
    whole = b"".join(payload(MIB))
    url = stack.url + EVIDENCE
    fields = {**signed_headers(url, whole), "content-length": str(len(whole))}
    head = request_head(httpx.Request("POST", url, headers=fields))
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=30) as sock:
        sock.sendall(head + whole[: 4 * CHUNK])
        answer = b""
        while chunk := sock.recv(65536):  # to the close
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b"\r\nconnection: close\r\n" in rest.lower()
    assert b"urn:authz-gateway:problem:request_timeout" in rest
    uploads = stack.stub("findings").state.uploads
    assert uploads, "the upload had begun streaming to the service"
    assert not any(u["done"] for u in uploads), "the service never got a complete request"


def test_a_get_with_a_body_is_refused_not_forwarded(stack: OrchestrationStack) -> None:
    """A service that does not read a GET's body would take it for its next request:
    a request smuggled past the gateway's signature and decision (h38)."""
    hidden = b"GET /engagements/acme-2026/reports/R-0002/content HTTP/1.1\r\nHost: x\r\n\r\n"
    url = stack.url + CONTENT
    seen_before = len(stack.stub("reports").state.seen)
    with httpx.Client(auth=signer("carol"), timeout=10) as client:
        response = client.request("GET", url, content=hidden)
        assert_problem(response, 400, "bad_request")
        assert client.get(url).status_code == 200  # without a body: served
    assert len(stack.stub("reports").state.seen) == seen_before + 1  # the bodiless one only


def test_a_forwarded_header_with_octets_above_0x7f_is_a_400_not_a_500(
    stack: OrchestrationStack,
) -> None:
    """obs-text in Accept-Language: httpx could not encode it for the service (a 500)."""
    with httpx.Client(auth=signer("carol"), timeout=10) as client:
        response = client.get(stack.url + CONTENT, headers={"Accept-Language": b"fr-\xe9"})
        assert_problem(response, 400, "bad_request")
        assert "accept-language" in response.json()["detail"]
        plain = client.get(stack.url + CONTENT, headers={"Accept-Language": "fr-CH"})
        assert plain.status_code == 200


def _two_line_digest_headers(url: str, lines: tuple[str, str]) -> list[tuple[str, str]]:
    """Signed headers carrying ``Content-Digest`` as two field lines, the signature over
    both (RFC 9421 joins them: "a, b"); sent with the body afterwards."""
    bare = httpx.Request("POST", url, headers=[("content-digest", line) for line in lines])
    auth = HttpSignatureAuth(TEST_KEY_ID, TEST_SECRET, "alice", cover=["content-digest"])
    signed = next(auth.auth_flow(bare))
    return [(k, v) for k, v in signed.headers.multi_items() if k.lower() != "content-length"]


def test_a_digest_in_two_field_lines_is_checked_whole_as_the_signature_covered_it(
    stack: OrchestrationStack,
) -> None:
    """Two ``Content-Digest`` lines are one dictionary (RFC 9110 section 5.3), as the
    signature and a typed route read them. The stream was checked against the first line
    alone: a proxy that put an algorithm the gateway does not know first (RFC 9530: to be
    ignored) had its upload refused, and a second line's digest was never checked."""
    body = b"evidence sent with two digests"
    unknown = "id-sha-256=:" + base64.b64encode(b"\0" * 32).decode() + ":"
    url = stack.url + EVIDENCE
    uploads = stack.stub("findings").state.uploads
    headers = _two_line_digest_headers(url, (unknown, content_digest(body)))
    accepted = httpx.post(url, content=iter([body]), headers=headers, timeout=30)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["sha256"] == hashlib.sha256(body).hexdigest()
    wrong_second = (content_digest(body), content_digest(b"not the body", ("sha-512",)))
    headers = _two_line_digest_headers(url, wrong_second)
    refused = httpx.post(url, content=iter([body]), headers=headers, timeout=30)
    assert_problem(refused, 401, "unauthenticated")
    assert sum(1 for upload in uploads if upload["done"]) == 1, "the refused body never completed"


def test_a_body_without_content_digest_is_401(stack: OrchestrationStack) -> None:
    url = stack.url + EVIDENCE
    headers = signed_headers(url, b"")  # signed without a body, then one is sent
    response = httpx.post(url, content=iter([b"unsigned bytes"]), headers=headers, timeout=30)
    assert_problem(response, 401, "unauthenticated")


def _digest_signed(method: str, url: str, digest: str, length: str | None) -> httpx.Request:
    """A request without a body whose signature covers a Content-Digest anyway."""
    headers = {"content-digest": digest, **({"content-length": length} if length else {})}
    request = httpx.Request(method, url, headers=headers)
    auth = HttpSignatureAuth(TEST_KEY_ID, TEST_SECRET, "alice", cover=["content-digest"])
    return next(auth.auth_flow(request))


@pytest.mark.parametrize(
    ("method", "path", "length"), [("POST", EVIDENCE, "0"), ("GET", CONTENT, None)]
)
def test_a_signed_digest_without_a_body_must_be_of_no_bytes(
    stack: OrchestrationStack, method: str, path: str, length: str | None
) -> None:
    """No body declared: the digest was neither checked nor dropped, and the service got
    the caller's digest of a body it never saw. Now it is checked, as on typed routes."""
    url = stack.url + path
    other = _digest_signed(method, url, content_digest(b"a body never sent"), length)
    assert_problem(send(other), 401, "unauthenticated")
    assert stack.stub("findings").state.uploads == []
    assert [s for s in stack.seen("reports") if "content" in s["path"]] == []
    empty = send(_digest_signed(method, url, content_digest(b""), length))
    assert empty.status_code in (200, 201), empty.text
    if method == "GET":
        [seen] = [s for s in stack.seen("reports") if "content" in s["path"]]
        assert "content-digest" not in seen["headers"]  # nothing to check it against


def test_the_response_streams_back_byte_for_byte(stack: OrchestrationStack) -> None:
    size = 10 * MIB
    expected = hashlib.sha256(b"".join(report_chunks("R-0001", size))).hexdigest()
    digest, received, chunks = hashlib.sha256(), 0, 0
    with (
        httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=60) as gateway,
        gateway.stream("GET", CONTENT, params={"size": str(size)}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["content-length"] == str(size)
        for chunk in response.iter_raw():
            digest.update(chunk)
            received += len(chunk)
            chunks += 1
    assert received == size
    assert digest.hexdigest() == expected
    assert chunks > 1


def test_a_response_over_the_route_limit_is_502(stack: OrchestrationStack) -> None:
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        response = gateway.get(CONTENT, params={"size": str(17 * MIB)})
    assert_problem(response, 502, "bad_gateway")


def test_a_star_engagement_is_malformed_never_forwarded(stack: OrchestrationStack) -> None:
    """A path's "*" is not the gateway-wide domain: rita (a global analyst and closed
    writer) had an upload forwarded to engagement "*"; now it is a 400, nothing sent."""
    with httpx.Client(base_url=stack.url, auth=signer("rita"), timeout=30) as gateway:
        refused = gateway.post("/v1/engagements/*/evidence", content=b"evidence")
        allowed = gateway.post(EVIDENCE, content=b"evidence")  # her role does reach a real one
    assert_problem(refused, 400, "bad_request")
    assert allowed.status_code == 201
    assert [u["engagement_id"] for u in stack.stub("findings").state.uploads] == ["acme-2026"]


def test_pass_through_is_authorized_like_typed_routes(stack: OrchestrationStack) -> None:
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        denied = gateway.post(EVIDENCE, content=b"evidence")
        foreign = gateway.get("/v1/engagements/globex-cloud/reports/R-0001/content")
    assert_problem(denied, 403, "forbidden")
    assert_problem(foreign, 403, "forbidden")
    assert_problem(httpx.get(stack.url + CONTENT), 401, "unauthenticated")
    assert stack.stub("findings").state.uploads == []
    assert [s for s in stack.seen("reports") if "content" in s["path"]] == []


def test_pass_through_forwards_identity_and_trace_not_the_callers_signature(
    stack: OrchestrationStack,
) -> None:
    with httpx.Client(base_url=stack.url, auth=signer("dana"), timeout=30) as gateway:
        response = gateway.get(
            "/v1/engagements/initech-redteam/reports/R-0001/content",
            params={"size": "100"},
            headers={"x-request-id": "corr-passthrough-0001", "connection": "keep-alive, x-hop"},
        )
    assert response.status_code == 200
    assert len(response.content) == 100
    seen = [s for s in stack.seen("reports") if "content" in s["path"]][-1]
    assert seen["signature"] == "valid"
    assert seen["subject"] == "dana"
    assert seen["headers"]["x-request-id"] == "corr-passthrough-0001"
    assert seen["headers"]["signature-input"].startswith("gateway=")
    assert "traceparent" in seen["headers"]
    assert "x-hop" not in seen["headers"]


def test_a_failing_service_behind_a_pass_through_is_502_without_its_body(
    stack: OrchestrationStack,
) -> None:
    stack.faults("reports", error_rate=1.0, error_status=500)
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        response = gateway.get(CONTENT)
    body = assert_problem(response, 502, "bad_gateway")
    assert body["service"] == "reports"
    assert "stack trace" not in response.text


def test_pass_through_refuses_a_replayed_request(stack: OrchestrationStack) -> None:
    """The streaming guard claims the nonce like ``Authenticated`` does."""
    request = httpx.Request("GET", stack.url + CONTENT)
    signed = next(signer("alice").auth_flow(request))
    with httpx.Client(timeout=30) as client:
        first = client.send(signed)
        replay = client.send(signed)
    assert first.status_code == 200
    assert_problem(replay, 401, "unauthenticated")


def test_pass_through_counts_groups_like_typed_routes(stack: OrchestrationStack) -> None:
    """A group grant (``group:acme-client`` views acme-2026) counts on pass-through routes."""
    with httpx.Client(auth=signer("outsider", groups=("acme-client",)), timeout=30) as client:
        granted = client.get(stack.url + CONTENT)
    with httpx.Client(auth=signer("outsider"), timeout=30) as client:
        refused = client.get(stack.url + CONTENT)
    assert granted.status_code == 200
    assert_problem(refused, 403, "forbidden")


def test_pass_through_forwards_an_allow_list_never_a_smuggled_header(
    stack: OrchestrationStack,
) -> None:
    """Issue 12: unsigned override, rewrite, forwarding and look-alike identity headers."""
    smuggled = {
        "X-HTTP-Method-Override": "DELETE",
        "X-Original-URL": "/admin/policy",
        "X-Rewrite-URL": "/admin/policy",
        "X-Forwarded-Prefix": "/admin",
        "X-Forwarded-For": "10.9.8.7",
        "Forwarded": "for=10.9.8.7;host=admin.internal",
        "X_Auth_Subject": "sam",
        "X-Unlisted": "not on the allow-list",
    }
    wanted = {"Accept": "application/pdf", "X-Client-Ref": "case-17"}
    with httpx.Client(base_url=stack.url, auth=signer("dana"), timeout=30) as gateway:
        response = gateway.get(CONTENT, headers={**smuggled, **wanted})
    assert response.status_code == 200
    seen = [s for s in stack.seen("reports") if "content" in s["path"]][-1]
    received = seen["headers"]
    assert seen["signature"] == "valid"
    assert seen["subject"] == "dana"
    assert received["x-auth-subject"] == "dana"
    assert received["accept"] == "application/pdf"
    assert received["x-client-ref"] == "case-17"
    # The gateway's own element: the client as uvicorn reports it, never the caller's text.
    assert re.fullmatch(r"for=[0-9.]+;proto=http", received["forwarded"])
    leaked = {name.lower() for name in smuggled if name.lower() != "forwarded"} & set(received)
    assert leaked == set()
    assert "x_auth_subject" not in received


@pytest.mark.parametrize("sent", ["a%20b", "x%3F"])
def test_pass_through_sends_path_values_encoded_once(stack: OrchestrationStack, sent: str) -> None:
    """The service receives the path octets the policy decided on (not ``a%2520b``)."""
    with httpx.Client(base_url=stack.url, auth=signer("dana"), timeout=30) as gateway:
        gateway.get(f"/v1/engagements/acme-2026/reports/{sent}/content")
    seen = [s for s in stack.seen("reports") if "content" in s["path"]][-1]
    assert seen["raw_path"] == f"/engagements/acme-2026/reports/{sent}/content"


OUR_REPORTS = "/v1/engagements/acme-2026/reports"
UPSTREAM_OF_OURS = "/engagements/acme-2026/reports"


@pytest.mark.parametrize(
    ("sent", "report", "query"),
    [
        pytest.param(f"{OUR_REPORTS}/%52-0001/content", "R-0001", "", id="encoded-unreserved"),
        pytest.param(f"{OUR_REPORTS}/R-0001/content/", "R-0001", "", id="trailing-slash"),
        pytest.param(f"{OUR_REPORTS}/x/../R-0001/content", "R-0001", "", id="dot-segments"),
        pytest.param("/v1//engagements/acme-2026/reports/R-0001/content", "R-0001", "",
                     id="empty-segment"),
        pytest.param("/v1/engagements/initech-redteam/reports/%2e%2e/%2e%2e/acme-2026/reports/"
                     "R-0001/content", "R-0001", "", id="encoded-dots-into-her-engagement"),
        pytest.param(f"{OUR_REPORTS}/%2a/content", "%2A", "", id="escape-upper-cased"),
        pytest.param(f"{OUR_REPORTS}/%23/content", "%23", "", id="encoded-hash-kept"),
        pytest.param(f"{OUR_REPORTS}/R-0001/content?../../../initech-redteam/reports/R-0001",
                     "R-0001", "../../../initech-redteam/reports/R-0001",
                     id="query-that-looks-like-a-path"),
    ],
)  # fmt: skip
def test_the_service_receives_the_path_that_was_decided(
    stack: OrchestrationStack,
    captured_logs: list[dict[str, Any]],
    sent: str,
    report: str,
    query: str,
) -> None:
    """Red team r31: the decided object and the forwarded path are one path, however
    the caller spells it (carol is a client viewer of acme-2026 only)."""
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        request = gateway.build_request("GET", "/")
        request.url = request.url.copy_with(raw_path=sent.encode())
        response = gateway.send(request)
    assert response.status_code < 500, response.text
    seen = [s for s in stack.seen("reports") if "content" in s["path"]][-1]
    assert seen["raw_path"] == f"{UPSTREAM_OF_OURS}/{report}/content"
    assert seen["query"] == query
    [decided] = [e for e in captured_logs if e.get("event") == "decision"]
    assert (decided["decision"], decided["engagement"]) == ("allow", "acme-2026")
    assert decided["object"] == f"{OUR_REPORTS}/{report}/content"


@pytest.mark.parametrize(
    ("method", "sent", "status"),
    [
        pytest.param("GET", f"{OUR_REPORTS}/%2e%2e/%2e%2e/initech-redteam/reports/R-0001/content",
                     403, id="encoded-dots-out-of-her-engagement"),
        pytest.param("GET", f"{OUR_REPORTS}/R-0001%2F..%2F..%2FR-0002/content", 400,
                     id="encoded-slash"),
        pytest.param("GET", f"{OUR_REPORTS}/R-0001%252F/content", 400, id="double-encoding"),
        pytest.param("GET", f"{OUR_REPORTS}/%2e/content", 404, id="dot-segment-leaves-no-route"),
        pytest.param("GET", f"{OUR_REPORTS}/R-0001;x/content", 400, id="matrix-param"),
        pytest.param("GET", "/v1/engagements/Acme-2026/reports/R-0001/content", 400,
                     id="engagement-case"),
        pytest.param("HEAD", f"{OUR_REPORTS}/R-0001/content", 405, id="head-on-a-get-route"),
        pytest.param("DELETE", f"{OUR_REPORTS}/R-0001/content", 405, id="unrouted-method"),
    ],
)  # fmt: skip
def test_a_confusing_path_reaches_no_service(
    stack: OrchestrationStack, method: str, sent: str, status: int
) -> None:
    before = len(stack.seen("reports"))
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        request = gateway.build_request(method, "/")
        request.url = request.url.copy_with(raw_path=sent.encode())
        response = gateway.send(request)
    assert response.status_code == status, response.text
    if method != "HEAD":
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["corr_id"] == response.headers["x-request-id"]
    assert len(stack.seen("reports")) == before


def test_a_services_404_is_the_gateways_problem_not_its_body(stack: OrchestrationStack) -> None:
    """Issue 12: ``GET .../reports/00/content`` relayed ``404 {"detail":"no such report"}``."""
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        response = gateway.get("/v1/engagements/acme-2026/reports/00/content")
    assert_problem(response, 404, "not_found")
    assert "no such report" not in response.text


def refusing_service() -> FastAPI:
    """A service that answers ``/status/{code}`` with that status and a body of its own."""
    app = FastAPI()

    @app.api_route("/status/{code}", methods=["GET", "POST"])
    async def refuse(code: int) -> Response:
        headers = {"retry-after": "9", "content-range": "bytes */42", "x-internal": "leak"}
        body = b'{"detail":"internal: table findings_v2 locked"}'
        return Response(body, code, headers=headers, media_type="application/json")

    return app


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "bad_gateway"),
        (403, "bad_gateway"),
        (404, "not_found"),
        (409, "conflict"),
        (412, "precondition_failed"),
        (416, "range_not_satisfiable"),
        (422, "unprocessable_content"),
        (429, "rate_limited"),
        (418, "bad_gateway"),
    ],
)
def test_pass_through_errors_are_problems_that_keep_a_meaningful_status(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, status: int, code: str
) -> None:
    service = live_server(refusing_service())
    route = {
        "path": "/v1/engagements/{engagement_id}/status/{code}",
        "service": "reports",
        "upstream_path": "/status/{code}",
        # Authorized as report content, which the auditor may read everywhere.
        "policy_object": "/v1/engagements/{engagement_id}/reports/any/content",
    }
    settings = make_settings({"reports": service.url}, orchestration={"passthrough": [route]})
    gateway = live_server(create_app(settings))
    with httpx.Client(base_url=gateway.url, auth=signer("dana"), timeout=30) as client:
        response = client.get(f"/v1/engagements/acme-2026/status/{status}")
    body = assert_problem(response, status if code != "bad_gateway" else 502, code)
    assert "findings_v2" not in response.text
    assert "x-internal" not in response.headers
    assert ("retry-after" in response.headers) == (status == 429)
    assert ("service" in body) == (code == "bad_gateway")


def redirecting_service() -> FastAPI:
    """Answers ``?status=`` with ``?to=`` as Location and Content-Location; ``{self}``: its URL."""
    app = FastAPI()

    @app.get("/engagements/{engagement_id}/docs/{doc_id}")
    async def doc(request: Request) -> Response:
        to = request.query_params["to"].replace("{self}", str(request.base_url).rstrip("/"))
        status = int(request.query_params.get("status", "302"))
        response = Response(b"", status, headers={"location": to, "content-location": to})
        own = str(request.base_url).rstrip("/")
        response.raw_headers += [
            (b"set-cookie", b"a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/"),
            (b"set-cookie", b"b=2"),
            (b"link", f'<{own}/engagements/acme-2026/docs/D-9>; rel="next"'.encode()),
        ]
        return response

    return app


@pytest.mark.parametrize(
    ("status", "to", "location"),
    [
        (
            302,
            "{self}/engagements/acme-2026/docs/D-2?v=1",
            "/v1/engagements/acme-2026/docs/D-2?v=1",
        ),
        (303, "D-3", "/v1/engagements/acme-2026/docs/D-3"),
        (307, "https://objects.example/b/D-1?X-Sig=s", "https://objects.example/b/D-1?X-Sig=s"),
        (201, "{self}/admin/users", None),  # created; the internal URL is dropped
    ],
)
def test_a_services_location_is_mapped_to_the_gateway_or_dropped(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    status: int,
    to: str,
    location: str | None,
) -> None:
    service = live_server(redirecting_service())
    gateway = live_server(create_app(_docs_settings(service)))
    with httpx.Client(base_url=gateway.url, auth=signer("dana"), timeout=30) as client:
        response = client.get(
            "/v1/engagements/acme-2026/docs/D-1", params={"to": to, "status": str(status)}
        )
    assert response.status_code == status
    assert response.headers.get("location") == location
    assert response.headers.get("content-location") == location
    assert f":{service.port}" not in str(response.headers)
    # Every copy relayed as a copy, Link mapped like Location.
    assert response.headers.get_list("set-cookie") == [
        "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/",
        "b=2",
    ]
    assert response.headers["link"] == '</v1/engagements/acme-2026/docs/D-9>; rel="next"'


def test_a_redirect_to_an_unserved_url_of_the_service_is_502(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str
) -> None:
    service = live_server(redirecting_service())
    gateway = live_server(create_app(_docs_settings(service)))
    with httpx.Client(base_url=gateway.url, auth=signer("dana"), timeout=30) as client:
        response = client.get(
            "/v1/engagements/acme-2026/docs/D-1", params={"to": "{self}/admin/users"}
        )
    assert_problem(response, 502, "bad_gateway")
    assert "admin" not in response.text
    assert f":{service.port}" not in response.text


def _docs_settings(service: LiveServer) -> Settings:
    route = {
        "path": "/v1/engagements/{engagement_id}/docs/{doc_id}",
        "service": "reports",
        "upstream_path": "/engagements/{engagement_id}/docs/{doc_id}",
        # Authorized as report content, which the auditor may read everywhere.
        "policy_object": "/v1/engagements/{engagement_id}/reports/any/content",
    }
    return make_settings({"reports": service.url}, orchestration={"passthrough": [route]})


def test_a_client_that_aborts_an_upload_is_logged_once_not_a_500(
    stack: OrchestrationStack, captured_logs: list[dict[str, Any]]
) -> None:
    """Issue 12: a signed POST declaring 1,000 bytes sends 3, then shuts its write side."""
    url = stack.url + EVIDENCE
    headers = signed_headers(url, b"abc")
    labels = {"route": "/v1/engagements/{engagement_id}/evidence", "method": "POST"}
    errors_before = REGISTRY.get_sample_value(
        "gateway_http_requests_total", {**labels, "status": "500"}
    )
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=10) as sock:
        sock.sendall(
            f"POST {EVIDENCE} HTTP/1.1\r\n{head}"  # head has the Host field (one)
            "Content-Length: 1000\r\n\r\nabc".encode()
        )
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass

    def completed() -> list[dict[str, Any]]:
        return [
            line
            for line in captured_logs
            if line["event"] == "request_completed" and line["path"] == EVIDENCE
        ]

    wait_for(lambda: bool(completed()), "the aborted request to complete")
    disconnected = [line for line in captured_logs if line["event"] == "client_disconnected"]
    assert len(disconnected) == 1
    assert "exc_info" not in disconnected[0]
    assert not [line for line in captured_logs if line["event"] == "unhandled_error"]
    assert completed()[0]["status"] == 499
    assert (
        REGISTRY.get_sample_value("gateway_http_requests_total", {**labels, "status": "500"})
        == errors_before
    )
    assert REGISTRY.get_sample_value("gateway_http_requests_total", {**labels, "status": "499"})
    assert not any(u["done"] for u in stack.stub("findings").state.uploads)


def test_a_service_answer_that_breaks_off_is_aborted_and_counted_by_the_breaker(
    stack: OrchestrationStack, captured_logs: list[dict[str, Any]]
) -> None:
    """Found by an audit: a service that drops its connection after the status line
    reached the caller as a 200 ending cleanly enough for uvicorn, with a traceback in
    the log, and its breaker never counted it. Now the caller's message is cut (never a
    clean end), one ``response_aborted`` line, and the breaker and a metric count it."""
    before = REGISTRY.get_sample_value(
        "gateway_downstream_body_failures_total", {"service": "reports"}
    )
    stack.faults("reports", reset=True)
    cut = 0
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                gateway.get(CONTENT).read()
            cut += 1
    stack.faults("reports")
    with httpx.Client(base_url=stack.url, auth=signer("sam"), timeout=30) as admin:
        breakers = {b["service"]: b for b in admin.get("/admin/breakers").json()["breakers"]}
    assert breakers["reports"]["failures"] == cut
    after = REGISTRY.get_sample_value(
        "gateway_downstream_body_failures_total", {"service": "reports"}
    )
    assert (after or 0) - (before or 0) == cut
    aborted = [line for line in captured_logs if line["event"] == "response_aborted"]
    assert [line["service"] for line in aborted] == ["reports"] * cut
    assert not [line for line in captured_logs if line["event"] == "unhandled_error"]


def _raw_service_gateway(
    live_server: Callable[[FastAPI], LiveServer],
    service: RawService,
    transport: str,
    route: dict[str, Any] = ROUTES[1],
) -> LiveServer:
    """A gateway whose only pass-through ``route`` (evidence by default) goes to ``service``."""
    settings = Settings(
        signing={"keys": [{"id": TEST_KEY_ID, "secret_env": TEST_KEY_ENV}]},
        policy={"dir": str(POLICY_DIR)},
        services={route["service"]: {"url": service.url, "transport": transport}},
        orchestration={"passthrough": [route]},
        edge={"max_body_bytes": 32 * MIB},
    )
    return live_server(create_app(settings))


def _read_head(sock: socket.socket, got: bytes = b"") -> bytes:
    """What ``sock`` sends until a whole answer head is in (``got``: read already)."""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole head: {got!r}"
        got += chunk
    return got


def _answers_before_the_body(status: bytes) -> Callable[[socket.socket, bytes], None]:
    """A service that answers right after the head and closes, the body unread."""
    body = b'{"stored":true}'

    def answer(sock: socket.socket, head: bytes) -> None:
        sock.sendall(b"HTTP/1.1 %b\r\nContent-Length: %d\r\n\r\n%b" % (status, len(body), body))

    return answer


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
@pytest.mark.parametrize(
    ("status", "digest_ok", "expected", "code"),
    [
        (b"201 Created", False, 401, "unauthenticated"),
        (b"201 Created", True, 502, "bad_gateway"),
        (b"413 Payload Too Large", False, 401, "unauthenticated"),
        (b"413 Payload Too Large", True, 413, "payload_too_large"),
    ],
    ids=["201-wrong-digest", "201-right-digest", "413-wrong-digest", "413-right-digest"],
)
def test_an_answer_before_the_body_is_relayed_only_once_the_whole_body_is_checked(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    transport: str,
    status: bytes,
    digest_ok: bool,
    expected: int,
    code: str,
) -> None:
    """Audit h32: a service that answered ``201`` right after the head and closed, never
    reading the body, had its 201 relayed for a body whose digest did not match (the
    transport stopped sending, so the check at the body's end never ran). The rest of
    the body is sent only once the service has closed: the gateway must read and check
    it itself; a success for a body the service never got whole is a 502."""
    chunks = payload(2 * MIB)
    signed_for = b"".join(chunks if digest_ok else payload(2 * MIB, seed=2))
    with RawService(_answers_before_the_body(status)) as service:
        gateway = _raw_service_gateway(live_server, service, transport)
        url = gateway.url + EVIDENCE

        def after_the_service_closed() -> Iterator[bytes]:
            yield chunks[0]
            assert service.closed.wait(10), "the service never closed"
            time.sleep(0.2)  # the gateway has seen the answer and the close
            yield from chunks[1:]

        response = httpx.post(
            url, content=after_the_service_closed(), headers=signed_headers(url, signed_for)
        )
    body = assert_problem(response, expected, code)
    assert "stored" not in response.text
    if expected == 502:
        assert body["detail"] == "The findings service answered before it received the whole body."


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
def test_a_report_in_a_transfer_coding_other_than_chunked_is_502_never_the_coded_bytes(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, transport: str
) -> None:
    """Audit h32: a service's ``Transfer-Encoding: gzip`` answer reached the caller as
    ``200 application/pdf`` whose body was gzip (the hop-by-hop field dropped, the coding
    kept): a corrupted document passed off as a success."""
    pdf = gzip.compress(b"%PDF-1.7 " * 100)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\n"
    answer += b"Transfer-Encoding: gzip\r\nConnection: close\r\n\r\n" + pdf
    with RawService(lambda sock, head: sock.sendall(answer)) as service:
        gateway = _raw_service_gateway(live_server, service, transport, ROUTES[0])
        with httpx.Client(base_url=gateway.url, auth=signer("carol"), timeout=30) as client:
            response = client.get(CONTENT)
    assert_problem(response, 502, "bad_gateway")
    assert len(service.heads) == 1, "a wrong answer is not retried"


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\nX-Kept: yes\r\n\r\n",
        # A 304 may declare the length of the 200 it stands for: no body's size, not checked.
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100000000\r\nX-Kept: yes\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n",
    ],
    ids=["204-length", "304-length", "204-chunked"],
)
def test_a_bodiless_answer_is_relayed_without_framing_fields(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, transport: str, answer: bytes
) -> None:
    """Audit h32: a service's ``204`` with ``Content-Length: 10`` was relayed with that
    field (RFC 9110 section 8.6: a 204 must not carry one), and no body; a client that
    trusts it waits for 10 bytes, or takes the next answer's first 10 as them."""
    with RawService(lambda sock, head: sock.sendall(answer)) as service:
        gateway = _raw_service_gateway(live_server, service, transport, ROUTES[0])
        request = httpx.Request("GET", gateway.url + CONTENT)
        signed = next(signer("carol").auth_flow(request))
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(request_head(signed))
            head = _read_head(sock)
    status_line, *fields = head.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert status_line.split()[1] == answer.split()[1]
    names = [field.partition(b":")[0] for field in fields]
    assert b"content-length" not in names
    assert b"transfer-encoding" not in names
    assert b"x-kept" in names


# A HEAD route decided as the GET it stands for (docs/decisions/0014-head-is-decided-as-head.md).
HEAD_ROUTE = {**ROUTES[0], "methods": ["GET", "HEAD"], "action": "GET"}


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
@pytest.mark.parametrize(
    ("answer", "length"),
    [
        # The size a GET would get, over the route's 16 MiB limit: no body comes.
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Length: 100000000\r\n",
            b"100000000",
        ),
        # Over the 64 KiB relayed whole, under the limit: no stream is opened for nothing.
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Length: 1000000\r\n",
            b"1000000",
        ),
        # A chunked GET's size is unknown: the HEAD answer gets no made-up length.
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nTransfer-Encoding: chunked\r\n",
            None,
        ),
    ],
    ids=["over-the-limit", "streamed-size", "chunked"],
)
def test_a_head_answer_is_relayed_with_the_services_length_whatever_it_declares(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    transport: str,
    answer: bytes,
    length: bytes | None,
) -> None:
    """A HEAD answer carries no body, whatever length it declares: a report over the
    route's ``max_response_bytes`` was a 502 for its HEAD although no byte of it would
    come. One under the limit, or without a length, is relayed as it was: no stream is
    opened for it and no ``Content-Length`` is made up."""
    with RawService(lambda sock, head: sock.sendall(answer + b"X-Kept: yes\r\n\r\n")) as service:
        gateway = _raw_service_gateway(live_server, service, transport, HEAD_ROUTE)
        request = httpx.Request("HEAD", gateway.url + CONTENT)
        signed = next(signer("carol").auth_flow(request))
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(request_head(signed))
            head = _read_head(sock)
            # The same again on this connection: the first answer left no bytes behind.
            again = next(signer("carol").auth_flow(httpx.Request("HEAD", gateway.url + CONTENT)))
            sock.sendall(request_head(again))
            rest = _read_head(sock, head.partition(b"\r\n\r\n")[2])
    assert service.heads[0].startswith(b"HEAD "), service.heads[0]
    for received in (head, rest):
        status_line, *lines = received.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
        fields = dict(line.split(b": ", 1) for line in lines)
        assert status_line.split()[1] == b"200", received
        assert fields.get(b"content-length") == length
        assert b"transfer-encoding" not in fields
        assert fields[b"x-kept"] == b"yes"
        assert fields[b"content-type"] == b"application/pdf"
    assert rest.partition(b"\r\n\r\n")[2] == b"", "a HEAD answer has no body"


# --- the request's deadline, up to the answer's head -------------------------------------------

# One attempt (connect 0.1 + read 0.4 s) fits the 0.6 s deadline; the retry budget is 3.
DEADLINE_SECONDS = 0.6
REPORTS = "/engagements/acme-2026/reports"


def deadline_stack(
    live_server: Callable[[FastAPI], LiveServer], monkeypatch: pytest.MonkeyPatch, transport: str
) -> OrchestrationStack:
    return StackBuilder(live_server, monkeypatch)(
        service={"connect_timeout": 0.1, "read_timeout": 0.4, "transport": transport},
        orchestration={"passthrough": ROUTES, "downstream_deadline_seconds": DEADLINE_SECONDS},
        edge={"max_body_bytes": 32 * MIB},
    )


def deadline_cuts(logs: list[dict[str, Any]]) -> list[str]:
    return [line["service"] for line in logs if line["event"] == "downstream_deadline"]


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
def test_a_slow_service_holds_a_bodiless_pass_through_no_longer_than_the_deadline(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    """A GET is retried: each attempt ran to its read timeout and the retries went on,
    past the deadline, to the whole retry budget (3 attempts, then a plain 504)."""
    stack = deadline_stack(live_server, monkeypatch, transport)
    stack.faults("reports", latency_ms=5000, path_prefix=REPORTS)
    with (
        capture_logs() as logs,
        httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway,
    ):
        response = gateway.get(CONTENT)
    body = assert_problem(response, 504, "gateway_timeout")
    assert body["service"] == "reports"
    assert "deadline" in str(body["detail"])
    assert deadline_cuts(logs) == ["reports"]
    attempts = stack.requests_seen("reports")
    assert 1 <= attempts < FAST_RETRY["attempts"], "no retry started past the deadline"
    stack.faults("reports")
    with httpx.Client(base_url=stack.url, auth=signer("sam"), timeout=30) as admin:
        breakers = {b["service"]: b for b in admin.get("/admin/breakers").json()["breakers"]}
    assert breakers["reports"]["failures"] == 1, "one request failed, as on a typed route"
    with httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway:
        assert gateway.get(CONTENT).status_code == 200  # the cut left the pool sound


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
def test_a_streamed_answer_longer_than_the_deadline_is_not_cut(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    """The head came in time: the body (16 pauses of 0.1 s, each within the read
    timeout) runs on past the deadline, as a download may."""
    stack = deadline_stack(live_server, monkeypatch, transport)
    stack.faults("reports", slow_body_ms=100, slow_chunk_bytes=CHUNK, path_prefix=REPORTS)
    size = 16 * CHUNK
    expected = hashlib.sha256(b"".join(report_chunks("R-0001", size))).hexdigest()
    with (
        capture_logs() as logs,
        httpx.Client(base_url=stack.url, auth=signer("carol"), timeout=30) as gateway,
        gateway.stream("GET", CONTENT, params={"size": str(size)}) as response,
    ):
        assert response.status_code == 200
        received = b"".join(response.iter_raw())
    assert hashlib.sha256(received).hexdigest() == expected
    assert deadline_cuts(logs) == []
    assert stack.requests_seen("reports") == 1


def _stores_after_the_whole_body(sock: socket.socket, head: bytes) -> None:
    """A service that reads a chunked body to its end, takes 0.1 s, then answers 201."""
    received = b""
    while not received.endswith(b"\r\n0\r\n\r\n") and (chunk := sock.recv(65536)):
        received += chunk
    time.sleep(0.1)
    body = b'{"stored":true}'
    sock.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
def test_an_upload_slower_than_the_deadline_is_not_cut(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, transport: str
) -> None:
    """A request with a body is not bounded by the deadline (``app.workflows.passthrough``):
    the caller's own pace (1.2 s here) must not use up a budget the head then lacks."""
    chunks = payload(4 * CHUNK)
    whole = b"".join(chunks)

    def slowly() -> Iterator[bytes]:
        for chunk in chunks:
            time.sleep(0.3)
            yield chunk

    with RawService(_stores_after_the_whole_body) as service:
        timeouts = {"transport": transport, "connect_timeout": 0.1, "read_timeout": 0.4}
        settings = Settings(
            signing={"keys": [{"id": TEST_KEY_ID, "secret_env": TEST_KEY_ENV}]},
            policy={"dir": str(POLICY_DIR)},
            services={"findings": {"url": service.url, **timeouts}},
            orchestration={"passthrough": [ROUTES[1]], "downstream_deadline_seconds": 0.6},
            edge={"max_body_bytes": 32 * MIB},
        )
        url = live_server(create_app(settings)).url + EVIDENCE
        with capture_logs() as logs:
            response = httpx.post(url, content=slowly(), headers=signed_headers(url, whole))
    assert (response.status_code, response.json()) == (201, {"stored": True})
    assert deadline_cuts(logs) == []


def test_an_upload_the_service_answers_slowly_is_bounded_by_its_one_attempt(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent once, never retried: the service's read timeout ends it, not the deadline."""
    stack = deadline_stack(live_server, monkeypatch, "native")
    stack.faults("findings", latency_ms=5000, path_prefix="/engagements/acme-2026/evidence")
    whole = b"evidence"
    url = stack.url + EVIDENCE
    with capture_logs() as logs:
        response = httpx.post(url, content=iter([whole]), headers=signed_headers(url, whole))
    body = assert_problem(response, 504, "gateway_timeout")
    assert "deadline" not in str(body["detail"])
    assert deadline_cuts(logs) == []
    assert stack.requests_seen("findings") == 1
