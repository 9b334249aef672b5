"""The signing profile end to end: a real gateway on loopback in front of real stubs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.authn.identity import INBOUND_ONLY_HEADERS
from app.authn.signer import HttpSignatureAuth, message_from_httpx, sign_headers
from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import TEST_KEY_ID, TEST_SECRET, LiveServer, make_settings, signer
from tests.integration.conftest import Stack
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"


@dataclass
class LibraryRequest:
    """The message interface http-message-signatures signs: method, url, headers."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def library_signed(method: str, url: str, body: bytes | None, nonce: str) -> LibraryRequest:
    """A request signed by the independent RFC 9421 implementation."""
    message = LibraryRequest(method, url, {"X-Auth-Subject": "alice"})
    if body:
        message.headers["Content-Type"] = "application/json"
    keys = MappingKeyResolver(
        public_keys={TEST_KEY_ID: TEST_SECRET}, private_keys={TEST_KEY_ID: TEST_SECRET}
    )
    covered = ["@method", "@path", "x-auth-subject"]
    if "?" in url:
        covered.insert(2, "@query")
    HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=keys).sign(
        message, key_id=TEST_KEY_ID, nonce=nonce, covered_component_ids=covered, body=body
    )
    return message


def presigned(url: str, method: str = "GET", **kw: Any) -> httpx.Request:
    """One signed request that can be sent more than once."""
    return next(signer().auth_flow(httpx.Request(method, url, **kw)))


def send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.send(request)


def deny_reasons(logs: list[dict[str, Any]]) -> list[str]:
    return [line["reason"] for line in logs if line.get("stage") == "authn"]


def test_independent_rfc9421_implementation_is_accepted(stack: Stack) -> None:
    get = library_signed("GET", f"{stack.url}{FINDINGS}?severity=high", None, "lib-nonce-1")
    response = httpx.get(get.url, headers=get.headers)
    assert response.status_code == 200, response.text
    body = b'{"title": "Found by a proxy in another language", "severity": "low"}'
    post = library_signed("POST", f"{stack.url}{FINDINGS}", body, "lib-nonce-2")
    assert "content-digest" in post.headers["Signature-Input"]
    created = httpx.post(post.url, headers=post.headers, content=body)
    assert created.status_code == 201, created.text
    assert created.json()["created_by"] == "alice"


def test_replayed_request_is_401_with_reason(
    stack: Stack, captured_logs: list[dict[str, Any]]
) -> None:
    request = presigned(stack.url + FINDINGS)
    assert send(request).status_code == 200
    replay = send(request)
    assert replay.status_code == 401
    assert replay.json()["title"] == "Authentication required"
    assert "replayed" not in replay.text, "the client never learns the reason"
    assert deny_reasons(list(captured_logs)) == ["replayed"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"key_id": "retired-2025"}, "unknown_key"),
        ({"created_offset": -400}, "stale"),
        ({"created_offset": 400}, "future"),
        ({"expires_offset": -1}, "expired"),
    ],
)
def test_rejections_reach_the_decision_log(
    stack: Stack, captured_logs: list[dict[str, Any]], change: dict[str, Any], reason: str
) -> None:
    request = httpx.Request("GET", stack.url + FINDINGS, headers={"x-auth-subject": "alice"})
    now = int(time.time())
    created = now + change.get("created_offset", 0)
    expires = now + change["expires_offset"] if "expires_offset" in change else None
    request.headers.update(
        sign_headers(
            message_from_httpx(request),
            b"",
            key_id=change.get("key_id", TEST_KEY_ID),
            secret=TEST_SECRET,
            created=created,
            expires=expires,
        )
    )
    response = send(request)
    assert response.status_code == 401
    assert response.json()["corr_id"] == response.headers["x-request-id"]
    assert deny_reasons(list(captured_logs)) == [reason]


def test_inbound_identity_and_signature_headers_never_reach_downstream(stack: Stack) -> None:
    """Downstream sees the gateway's own identity headers, never the proxy's copies.

    The gateway re-creates ``x-auth-subject``/``x-auth-groups`` from the verified
    identity (and signs them with a per-service key when one is configured: see
    test_orchestration.py); the proxy's signature and digest are never forwarded.
    """
    request = next(signer(groups=("analysts",)).auth_flow(presigned(stack.url + FINDINGS)))
    inbound_signature = request.headers["signature"]
    assert send(request).status_code == 200
    seen = stack.stub_app("findings").state.seen
    assert seen, "the stub was called"
    for entry in seen:
        headers = {name.lower(): value for name, value in entry["headers"].items()}
        assert INBOUND_ONLY_HEADERS - {"x-auth-subject", "x-auth-groups"} & set(headers) == set()
        assert inbound_signature not in headers.values()
        assert headers["x-auth-subject"] == "alice"
        assert headers["x-auth-groups"] == "analysts"


@pytest.fixture
def small_cap_gateway(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str
) -> LiveServer:
    findings = live_server(create_stub_app("findings"))
    settings = make_settings({"findings": findings.url}, edge={"max_body_bytes": 1024})
    return live_server(create_app(settings))


def test_oversized_body_is_413_declared_or_chunked(small_cap_gateway: LiveServer) -> None:
    url = small_cap_gateway.url + FINDINGS
    declared = send(presigned(url, "POST", content=b"x" * 2048))
    assert declared.status_code == 413
    assert declared.headers["content-type"] == "application/problem+json"

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    with httpx.Client(timeout=10) as client:
        chunked = client.post(url, content=chunks(), auth=signer())
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413
    assert chunked.json()["corr_id"] == chunked.headers["x-request-id"]
    assert (
        send(presigned(url, "POST", json={"title": "fits", "severity": "low"})).status_code == 201
    )


def test_replay_is_refused_across_two_gateways_sharing_redis(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, redis_server: RedisServer
) -> None:
    findings = live_server(create_stub_app("findings"))
    services = {"findings": findings.url}
    gateways = [
        live_server(create_app(make_settings(services, redis={"url": redis_server.url})))
        for _ in range(2)
    ]
    request = presigned(gateways[0].url + FINDINGS)
    assert send(request).status_code == 200
    request.url = request.url.copy_with(port=gateways[1].port)
    assert send(request).status_code == 401
    fresh = presigned(gateways[1].url + FINDINGS)
    assert send(fresh).status_code == 200

    redis_server.stop()
    down = send(presigned(gateways[0].url + FINDINGS))
    assert down.status_code == 503
    assert down.json()["type"] == "urn:authz-gateway:problem:replay_check_unavailable"
    assert down.headers["retry-after"] == "1"
    assert httpx.get(gateways[0].url + "/readyz").status_code == 503
    assert httpx.get(gateways[0].url + FINDINGS).status_code == 401, "unsigned is still 401"


def test_default_signer_options_round_trip(stack: Stack) -> None:
    auth = HttpSignatureAuth(
        TEST_KEY_ID, TEST_SECRET, "alice", label="proxy", expires_in=30,
        digest_algorithms=("sha-256", "sha-512"),
    )  # fmt: skip
    with httpx.Client(base_url=stack.url, auth=auth, timeout=10) as client:
        created = client.post(FINDINGS, json={"title": "Two digests", "severity": "info"})
    assert created.status_code == 201
    assert "sha-512=" in created.request.headers["content-digest"]
    assert created.request.headers["signature"].startswith("proxy=")


# Printable ASCII without outer spaces: what an HTTP client puts on the wire unchanged.
wire_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200).map(
    str.strip
)
GARBAGE_TOKENS = ["sig1=", "(", ")", '"@method"', ";created=1", ';keyid="k"', ":AAAA:", ",", "?0"]
garbage = st.one_of(wire_text, st.lists(st.sampled_from(GARBAGE_TOKENS), max_size=20).map("".join))


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(signature_input=garbage, signature=garbage)
def test_garbage_signature_fields_against_a_live_gateway_are_401(
    stack: Stack, signature_input: str, signature: str
) -> None:
    headers = {
        "x-auth-subject": "alice",
        "signature-input": signature_input,
        "signature": signature,
    }
    response = httpx.get(stack.url + FINDINGS, headers=headers, timeout=10)
    assert response.status_code == 401, (signature_input, signature, response.text)
    assert response.headers["content-type"] == "application/problem+json"
