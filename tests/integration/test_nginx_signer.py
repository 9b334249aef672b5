"""The shipped nginx njs signer in front of a real gateway and its stub services.

nginx runs deploy/nginx unchanged apart from ports and paths; clients use HTTP basic
auth, nginx signs who they are (RFC 9421, signing.md) and proxies to the gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import TEST_KEY_ENV, TEST_KEY_ID, LiveServer, make_settings, signer
from tests.integration.nginx_stack import NginxSite, nginx_key_spec

pytestmark = pytest.mark.integration

OURS = "/v1/engagements/acme-2026/findings"
FOREIGN = "/v1/engagements/initech-redteam/findings"
# The demo's pass-through route (config/demo.yaml): the gateway states its Forwarded.
REPORT_CONTENT = {
    "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
    "service": "reports",
    "upstream_path": "/engagements/{engagement_id}/reports/{report_id}/content",
    "methods": ["GET"],
}


@pytest.fixture
def site(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer], test_key_env: str
) -> Iterator[tuple[NginxSite, dict[str, LiveServer], LiveServer]]:
    stubs = {name: live_server(create_stub_app(name)) for name in STUB_NAMES}
    keys = [nginx_key_spec(tmp_path), {"id": TEST_KEY_ID, "secret_env": TEST_KEY_ENV}]
    settings = make_settings(
        {n: s.url for n, s in stubs.items()},
        signing={"keys": keys},
        orchestration={"passthrough": [REPORT_CONTENT]},
    )
    gateway = live_server(create_app(settings))
    nginx = NginxSite(tmp_path, gateway.port).start()
    yield nginx, stubs, gateway
    nginx.stop()


def _seen(stub: LiveServer) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = httpx.get(f"{stub.url}/_seen", timeout=5).json()
    return entries


def test_an_allowed_user_through_basic_auth_gets_200(site: tuple[NginxSite, ...]) -> None:
    nginx = site[0]
    with nginx.client("alice") as client:
        response = client.get(OURS, params={"severity": "high"})
    assert response.status_code == 200, response.text
    assert response.json()["engagement_id"] == "acme-2026"


def test_a_foreign_engagement_is_403(site: tuple[NginxSite, ...]) -> None:
    with site[0].client("alice") as client:
        response = client.get(FOREIGN)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_a_post_with_a_json_body_is_signed_with_its_digest_and_created(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer],
) -> None:
    nginx, stubs, _ = site
    finding = {"title": "SQL injection in login form", "severity": "high"}
    with nginx.client("alice") as client:
        response = client.post(OURS, json=finding)
    assert response.status_code == 201, response.text
    assert response.json()["title"] == finding["title"]
    posted = [e for e in _seen(stubs["findings"]) if e["method"] == "POST"]
    assert posted
    assert posted[-1]["headers"]["x-auth-subject"] == "alice"  # type: ignore[index]


@pytest.mark.parametrize(
    "forged",
    [
        {"X-Auth-Subject": "dana"},
        {"X-Auth-Subject": "dana", "X-Auth-Groups": "red-team"},
        {"X_Auth_Subject": "dana"},
        {"Signature-Input": 'sig1=("@method");created=1;keyid="x";nonce="n"'},
    ],
)
def test_client_identity_and_signature_headers_are_overwritten(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer], forged: dict[str, str]
) -> None:
    """dana is a global auditor and red-team may read initech-redteam: a forged
    header that survived would turn alice's 403 into a 200."""
    nginx, stubs, _ = site
    with nginx.client("alice") as client:
        assert client.get(FOREIGN, headers=forged).status_code == 403
        assert client.get(OURS, headers=forged).status_code == 200
    seen = _seen(stubs["findings"])[-1]["headers"]
    assert seen["x-auth-subject"] == "alice"  # type: ignore[index]


def test_the_same_request_straight_to_the_gateway_is_401(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer],
) -> None:
    _, _, gateway = site
    response = httpx.get(
        f"{gateway.url}{OURS}",
        headers={"X-Auth-Subject": "alice", "Authorization": "Basic YWxpY2U6YWxpY2UtcHc="},
        timeout=5,
    )
    assert response.status_code == 401
    assert response.json()["type"] == "urn:authz-gateway:problem:unauthenticated"


def test_ten_identical_requests_are_all_accepted(site: tuple[NginxSite, ...]) -> None:
    """Each request gets a fresh nonce, computed once: Signature and Signature-Input agree."""
    with site[0].client("alice") as client:
        statuses = [client.get(OURS, params={"page": "1"}).status_code for _ in range(10)]
    assert statuses == [200] * 10


def test_a_body_above_the_signing_limit_is_413_before_reaching_the_gateway(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer],
) -> None:
    nginx, stubs, _ = site
    before = len(_seen(stubs["findings"]))
    with nginx.client("alice") as client:
        response = client.post(OURS, content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:authz-gateway:problem:payload_too_large"
    assert len(_seen(stubs["findings"])) == before


def test_a_chunked_body_above_the_limit_is_413_too(site: tuple[NginxSite, ...]) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(17):
            yield b"x" * 65536

    with site[0].client("alice") as client:
        response = client.post(OURS, content=chunks())
    assert response.status_code == 413


def test_a_wrong_password_never_reaches_the_gateway(site: tuple[NginxSite, ...]) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{site[0].proxy_port}{OURS}", auth=("alice", "wrong"), timeout=5
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="authz-gateway"'
    # A problem like the gateway's own, not nginx's page (its id as X-Request-ID).
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert (body["type"], body["status"]) == ("urn:authz-gateway:problem:unauthenticated", 401)
    assert body["corr_id"] == response.headers["x-request-id"]
    assert _seen(site[1]["findings"]) == []


def test_a_client_idempotency_key_is_signed_and_a_retry_replays(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer],
) -> None:
    """The gateway acts on Idempotency-Key (a create made once), so it requires the key
    to be signed when sent; the signer covers the client's key, and the retry through
    nginx is the first finding, replayed."""
    nginx, stubs, _ = site
    finding = {"title": "Weak TLS ciphers", "severity": "low"}
    key = {"Idempotency-Key": "nginx-create-0001"}
    with nginx.client("alice") as client:
        first = client.post(OURS, json=finding, headers=key)
        again = client.post(OURS, json=finding, headers=key)
        two = client.post(OURS, json=finding, headers=[*key.items(), *key.items()])
    assert first.status_code == 201, first.text
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    assert again.json()["id"] == first.json()["id"]
    assert two.status_code == 401  # two keys: not signed, refused by the gateway
    creates = [e for e in _seen(stubs["findings"]) if e["method"] == "POST"]
    assert len(creates) == 1


def test_a_key_added_after_signing_is_refused(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer],
) -> None:
    """Straight to the gateway: a request signed without its Idempotency-Key (as a hop
    between the proxy and the gateway could add one) is a 401, not a replay."""
    _, stubs, gateway = site
    request = httpx.Request(
        "POST", f"{gateway.url}{OURS}", json={"title": "Weak TLS ciphers", "severity": "low"}
    )
    signed = next(signer("alice").auth_flow(request))
    signed.headers["idempotency-key"] = "added-after-signing-1"
    with httpx.Client(timeout=10) as client:
        response = client.send(signed)
    assert response.status_code == 401, response.text
    assert [e for e in _seen(stubs["findings"]) if e["method"] == "POST"] == []


@pytest.mark.parametrize(
    "target",
    [
        "/metrics",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/admin/policy",
        "/v1/../metrics",
        "/v1/%2e%2e/admin/policy",
        "/v1/%2E%2E/metrics",
    ],
)
def test_the_signing_proxy_forwards_the_api_only(site: tuple[NginxSite, ...], target: str) -> None:
    """An audit reached /metrics, /openapi.json and, as a security admin, /admin/policy
    on the public port: the shipped proxy forwarded every path. Now /v1/ only."""
    nginx = site[0]
    with nginx.client("dana") as client:
        request = client.build_request("GET", "/")
        request.url = request.url.copy_with(raw_path=target.encode())
        response = client.send(request)
    assert response.status_code == 404
    assert response.json()["detail"] == "This proxy forwards /v1/ only."


def test_a_client_s_x_forwarded_for_and_proto_never_become_the_gateway_s_forwarded(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer],
) -> None:
    """uvicorn trusts X-Forwarded-For/-Proto from 127.0.0.1, where nginx is: an audit's
    remote client named the `Forwarded: for=7.7.7.7;proto=https` the gateway stated to
    the service. nginx now sends its own view of the hop."""
    nginx, stubs, _ = site
    forged = {"X-Forwarded-For": "7.7.7.7", "X-Forwarded-Proto": "https"}
    with nginx.client("alice") as client:
        response = client.get("/v1/engagements/acme-2026/reports/R-0001/content", headers=forged)
    assert response.status_code == 200, response.text
    seen = _seen(stubs["reports"])[-1]["headers"]
    assert seen["forwarded"] == "for=127.0.0.1;proto=http"  # type: ignore[index]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/decisions",
        "/v1/decisions/envoy/v1/engagements/acme-2026/findings",
        "/v1/decisions/traefik",
        "/v1//decisions/envoy/v1/engagements/acme-2026/findings",
        "/v1/%64ecisions/envoy/v1/engagements/acme-2026/findings",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_signing_proxy_does_not_forward_the_decision_endpoints(
    site: tuple[NginxSite, dict[str, LiveServer], LiveServer], target: str, method: str
) -> None:
    """An audit asked /v1/decisions/envoy/... through the public proxy: a 200 with the
    decision and the gateway's identity signature, for any path and method (a policy
    oracle). The decision endpoints are the ingress's, not the end user's."""
    nginx = site[0]
    with nginx.client("alice") as client:
        request = client.build_request(method, "/")
        request.url = request.url.copy_with(raw_path=target.encode())
        response = client.send(request)
    assert response.status_code == 404, response.text
    assert "signature" not in response.headers
    assert response.json()["detail"] == "This proxy does not forward the decision endpoints."
