"""The decision endpoints on a real gateway: each proxy's contract and every refusal.

Requests are shaped as each proxy's documentation describes them (nginx
auth_request with X-Original-* headers, Traefik forwardAuth with X-Forwarded-*,
the Envoy ext_authz HTTP service with the original path after a prefix) and
signed with the reference signer, as the signing proxy in front would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api.decision_schemas import DecisionAnswer
from app.authn.base import Message
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import HttpSignatureAuth, sign_headers
from app.authn.verifier import SignatureVerifier
from app.main import create_app
from tests.conftest import TEST_KEY_ID, TEST_SECRET, LiveServer, make_settings
from tests.integration.raw_http import as_response, read_answer

pytestmark = pytest.mark.integration

ROUTES = [
    "/v1/engagements/{engagement_id}/findings",
    "/v1/engagements/{engagement_id}/findings/{finding_id}",
    "/admin/{rest:path}",
]
OURS = "/v1/engagements/acme-2026/findings"
NGINX = ("x-original-method", "x-original-uri")
TRAEFIK = ("x-forwarded-method", "x-forwarded-uri")
IDENTITY_KEY_ENV = "GATEWAY_TEST_DECISION_IDENTITY_KEY"
IDENTITY_SECRET = b"decision-identity-test-secret-not-for-production"


def _auth(subject: str, groups: Sequence[str] = (), cover: Sequence[str] = NGINX) -> httpx.Auth:
    return HttpSignatureAuth(TEST_KEY_ID, TEST_SECRET, subject, groups, cover=cover)


@pytest.fixture
def gateway(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str
) -> Callable[..., LiveServer]:
    def start(**overrides: Any) -> LiveServer:
        authorizer = {"routes": ROUTES, **overrides.pop("authorizer", {})}
        services = overrides.pop("services", None)
        settings = make_settings(services, authorizer=authorizer, **overrides)
        return live_server(create_app(settings))

    return start


def nginx_ask(
    server: LiveServer, method: str, uri: str, subject: str = "alice", **kw: Any
) -> httpx.Response:
    """What nginx auth_request sends: GET, no body, the original in X-Original-*."""
    headers = {"X-Original-Method": method, "X-Original-URI": uri, **kw.pop("headers", {})}
    auth = kw.pop("auth", None) or _auth(subject, kw.pop("groups", ()))
    return httpx.get(f"{server.url}/v1/decisions", headers=headers, auth=auth, timeout=5)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["corr_id"]
    return body


def _decisions(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "decision"]


# --- nginx auth_request ------------------------------------------------------------


def test_nginx_allowed_answers_identity_headers_and_logs_one_decision(
    gateway: Callable[..., LiveServer], captured_logs: list[dict[str, Any]]
) -> None:
    server = gateway()
    response = nginx_ask(server, "GET", f"{OURS}?severity=high", groups=("analysts",))
    assert response.status_code == 200, response.text
    body = response.json()
    headers = response.headers
    assert headers["x-auth-subject"] == "alice"
    assert headers["x-auth-groups"] == "analysts"
    assert headers["x-gateway-engagement"] == "acme-2026"
    assert headers["x-gateway-decision-id"] == body["decision_id"]
    assert headers["x-gateway-policy-revision"] == body["policy_revision"]
    assert "signature" not in headers  # no identity key configured
    assert body["object"] == OURS
    assert (body["mode"], body["action"], body["engagement"]) == ("nginx", "GET", "acme-2026")
    assert body["allowed"] is True
    assert body["groups"] == ["analysts"]
    assert set(body) == set(DecisionAnswer.model_fields)
    [authz] = [e for e in _decisions(captured_logs) if e["stage"] == "authz"]
    assert authz["mode"] == "nginx"
    assert authz["decision_id"] == body["decision_id"]
    assert authz["decision"] == "allow"
    assert authz["object"] == OURS
    assert authz["corr_id"] == headers["x-request-id"]


def test_an_original_uri_that_is_not_ascii_is_invalid_path_not_a_bad_signature(
    gateway: Callable[..., LiveServer], captured_logs: list[dict[str, Any]]
) -> None:
    """nginx sends (and its signer signs) the client's raw UTF-8 bytes: the signature
    holds, and the URI is refused on the documented rule (ASCII only), 403."""
    server = gateway()
    uri = f"{OURS}?q=caf\u00e9".encode()
    headers = {"X-Original-Method": "GET", "X-Original-URI": uri}
    url = f"{server.url}/v1/decisions"
    response = httpx.get(url, headers=headers, auth=_auth("alice"), timeout=5)
    assert _problem(response, 403)["detail"] == "The original URI is malformed."
    [refusal] = [e for e in _decisions(captured_logs) if e["stage"] == "authz"]
    assert refusal["reason"] == "invalid_path"


def test_nginx_groups_header_is_present_and_empty_without_groups(
    gateway: Callable[..., LiveServer],
) -> None:
    response = nginx_ask(gateway(), "GET", OURS)
    assert response.status_code == 200
    assert response.headers["x-auth-groups"] == ""


@pytest.mark.parametrize(
    ("subject", "method", "uri"),
    [
        ("alice", "GET", "/v1/engagements/initech-redteam/findings"),  # foreign engagement
        ("carol", "POST", OURS),  # client_viewer: explicit deny on POST
        ("alice", "DELETE", f"{OURS}/F-0001"),  # no rule for the action
        ("alice", "GET", "/admin/policy/status"),  # global route, no admin role
    ],
)
def test_nginx_policy_denials_are_403(
    gateway: Callable[..., LiveServer], subject: str, method: str, uri: str
) -> None:
    _problem(nginx_ask(gateway(), method, uri, subject), 403)


def test_a_global_route_is_decided_in_the_global_domain(
    gateway: Callable[..., LiveServer],
) -> None:
    response = nginx_ask(gateway(), "POST", "/admin/policy/reload", "sam")
    assert response.status_code == 200, response.text
    assert response.json()["engagement"] == "*"
    assert response.headers["x-gateway-engagement"] == ""


@pytest.mark.parametrize(
    "uri",
    [
        "/v1/engagements/acme-2026/%2e%2e/initech-redteam/findings",  # to another engagement
        "/v1/engagements/initech-redteam/%2e%2e/acme-2026/findings",  # to one alice is on
        "/v1/engagements/x1/../acme-2026/findings",
        "/v1//engagements/acme-2026/findings",
        "/v1/%65ngagements/acme-2026/findings",
        "/v1/engagements/acme-2026/findings#frag",
    ],
)
def test_an_original_uri_that_is_not_canonical_is_refused(
    gateway: Callable[..., LiveServer], captured_logs: list[dict[str, Any]], uri: str
) -> None:
    """The asking proxy forwards the URI as the client sent it: one the service may read
    otherwise than the gateway is never decided (an audit found the second allowed)."""
    _problem(nginx_ask(gateway(), "GET", uri), 403)
    denied = [e for e in captured_logs if e.get("stage") == "authz" and e["decision"] == "deny"]
    assert denied[-1]["reason"] == "invalid_path"


def test_a_trailing_slash_is_the_same_resource(gateway: Callable[..., LiveServer]) -> None:
    allowed = nginx_ask(gateway(), "GET", f"{OURS}/")
    assert allowed.json()["object"] == OURS


@pytest.mark.parametrize(
    ("header", "values", "reason"),
    [
        ("X-Original-URI", [OURS, "/v1/engagements/initech-redteam/findings"], "invalid_path"),
        ("X-Original-Method", ["GET", "DELETE"], "invalid_method"),
    ],
)
def test_a_repeated_original_header_is_refused(
    gateway: Callable[..., LiveServer],
    captured_logs: list[dict[str, Any]],
    header: str,
    values: list[str],
    reason: str,
) -> None:
    """Signed joined ("GET, DELETE"), decided on the first copy: refused now."""
    fields = [("X-Original-Method", "GET"), ("X-Original-URI", OURS)]
    fields = [(n, v) for n, v in fields if n != header] + [(header, v) for v in values]
    request = httpx.Request("GET", f"{gateway().url}/v1/decisions", headers=fields)
    signed = next(_auth("alice", ()).auth_flow(request))
    with httpx.Client(timeout=5) as client:
        _problem(client.send(signed), 403)
    denied = [e for e in captured_logs if e.get("stage") == "authz" and e["decision"] == "deny"]
    assert denied[-1]["reason"] == reason


@pytest.mark.parametrize(
    ("method", "uri", "reason"),
    [
        ("GET", "/v1/other/thing", "no_route"),
        ("GET", "/", "no_route"),
        ("GET", "/v1/engagements/ACME/findings", "invalid_engagement"),
        ("GET", "/v1/engagements/*/findings", "invalid_engagement"),
        ("GET", "/v1/engagements/acme-2026/findings%2F..", "invalid_path"),
        ("GET", "/v1/engagements/acme-2026/findings/a;b", "invalid_path"),
        ("GET", "/../v1/engagements/acme-2026/findings", "invalid_path"),
        ("GET", "/v1/engagements/acme-2026/%c0%ae%c0%ae/findings", "invalid_path"),
        ("GET", "http://evil.example/v1/engagements/acme-2026/findings", "invalid_path"),
        ("GET", "v1/engagements/acme-2026/findings", "invalid_path"),
        ("GET", "/" + "a" * 9000, "invalid_path"),
        ("get", OURS, "invalid_method"),
        ("G T", OURS, "invalid_method"),
    ],
)
def test_nginx_unacceptable_originals_are_denied_by_default(
    gateway: Callable[..., LiveServer],
    captured_logs: list[dict[str, Any]],
    method: str,
    uri: str,
    reason: str,
) -> None:
    _problem(nginx_ask(gateway(), method, uri), 403)
    [authz] = [e for e in _decisions(captured_logs) if e["stage"] == "authz"]
    assert (authz["decision"], authz["reason"], authz["mode"]) == ("deny", reason, "nginx")


def test_no_configured_routes_denies_everything(gateway: Callable[..., LiveServer]) -> None:
    server = gateway(authorizer={"routes": []})
    _problem(nginx_ask(server, "GET", OURS), 403)


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "signature_missing"),
        (_auth("alice", cover=("x-original-method",)), "component_missing"),
        (_auth("alice", cover=("x-original-uri",)), "component_missing"),
        (_auth("alice", cover=()), "component_missing"),
    ],
)
def test_nginx_unsigned_or_uncovered_originals_are_401(
    gateway: Callable[..., LiveServer],
    captured_logs: list[dict[str, Any]],
    auth: httpx.Auth | None,
    reason: str,
) -> None:
    headers = {"X-Original-Method": "GET", "X-Original-URI": OURS, "X-Auth-Subject": "alice"}
    server = gateway()
    response = httpx.get(f"{server.url}/v1/decisions", headers=headers, auth=auth, timeout=5)
    _problem(response, 401)
    [authn] = [e for e in _decisions(captured_logs) if e["stage"] == "authn"]
    assert (authn["reason"], authn["mode"]) == (reason, "nginx")


def test_an_original_header_changed_after_signing_is_401(
    gateway: Callable[..., LiveServer],
) -> None:
    server = gateway()
    request = httpx.Request(
        "GET",
        f"{server.url}/v1/decisions",
        headers={"X-Original-Method": "GET", "X-Original-URI": OURS},
    )
    signed = next(_auth("alice").auth_flow(request))
    signed.headers["X-Original-URI"] = "/v1/engagements/initech-redteam/findings"
    with httpx.Client(timeout=5) as client:
        _problem(client.send(signed), 401)


def test_a_replayed_decision_request_is_401(gateway: Callable[..., LiveServer]) -> None:
    server = gateway()
    request = httpx.Request(
        "GET",
        f"{server.url}/v1/decisions",
        headers={"X-Original-Method": "GET", "X-Original-URI": OURS},
    )
    signed = next(_auth("alice").auth_flow(request))
    with httpx.Client(timeout=5) as client:
        assert client.send(signed).status_code == 200
        _problem(client.send(signed), 401)


def test_configured_original_header_names(gateway: Callable[..., LiveServer]) -> None:
    names = {"method_header": "x-auth-request-method", "uri_header": "x-auth-request-uri"}
    server = gateway(authorizer=names)
    headers = {"X-Auth-Request-Method": "GET", "X-Auth-Request-URI": OURS}
    auth = _auth("alice", cover=tuple(names.values()))
    response = httpx.get(f"{server.url}/v1/decisions", headers=headers, auth=auth, timeout=5)
    assert response.status_code == 200, response.text
    _problem(nginx_ask(server, "GET", OURS), 401)  # the default names are not covered


def test_decisions_spend_the_same_quota_as_direct_requests(
    gateway: Callable[..., LiveServer],
) -> None:
    limits = {"rate_limit": {"engagement": {"limit": 2, "window_seconds": 3600}}}
    server = gateway(ops=limits, services={"findings": "http://127.0.0.1:9"})
    first = nginx_ask(server, "GET", OURS)
    assert first.status_code == 200
    assert "ratelimit" in {k.lower() for k in first.headers}
    direct = httpx.get(f"{server.url}{OURS}", auth=_auth("bob", cover=()), timeout=5)
    assert direct.status_code != 429  # spent the second request (the service is down)
    body = _problem(nginx_ask(server, "GET", OURS, "dana"), 429)
    assert body["type"] == "urn:authz-gateway:problem:rate_limited"
    other = nginx_ask(server, "GET", "/v1/engagements/globex-cloud/findings")
    assert other.status_code == 200  # another engagement's quota is untouched


def test_a_denied_decision_spends_no_engagement_quota(
    gateway: Callable[..., LiveServer], captured_logs: list[dict[str, Any]]
) -> None:
    """erin (staffed on initech only) asking about acme is denied, and leaves acme's
    quota to the people on it (decision 0013); an allowed decision over that quota
    is logged allow, then refused 429."""
    limits = {"rate_limit": {"engagement": {"limit": 1, "window_seconds": 3600}}}
    server = gateway(ops=limits)
    for _ in range(3):
        assert _problem(nginx_ask(server, "GET", OURS, "erin"), 403)["type"].endswith("forbidden")
    allowed = nginx_ask(server, "GET", OURS, "bob")
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["RateLimit"] == '"engagement";r=0;t=3600'
    refused = _problem(nginx_ask(server, "GET", OURS, "alice"), 429)
    assert refused["type"] == "urn:authz-gateway:problem:rate_limited"
    alice = [e for e in _decisions(captured_logs) if e.get("subject") == "alice"]
    assert [(e["stage"], e["decision"]) for e in alice] == [("authz", "allow")]


def test_a_direct_request_refused_by_a_limit_or_the_policy_names_who_it_was(
    gateway: Callable[..., LiveServer], captured_logs: list[dict[str, Any]]
) -> None:
    """The subject was bound only once the request was admitted: a 429 (or a 403) on a
    typed route logged no subject, so nothing told an operator who was throttled."""
    limits = {"rate_limit": {"subject": {"limit": 1, "window_seconds": 3600}}}
    server = gateway(ops=limits, services={"findings": "http://127.0.0.1:9"})
    auth = _auth("bob", cover=())
    httpx.get(f"{server.url}{OURS}", auth=auth, timeout=5)  # spends bob's one request
    _problem(httpx.get(f"{server.url}{OURS}", auth=auth, timeout=5), 429)
    foreign = "/v1/engagements/initech-redteam/findings"
    _problem(httpx.get(f"{server.url}{foreign}", auth=_auth("alice", cover=()), timeout=5), 403)
    rejected = [e for e in captured_logs if e.get("event") == "request_rejected"]
    assert [(e["status"], e.get("subject"), e.get("key_id")) for e in rejected][-2:] == [
        (429, "bob", TEST_KEY_ID),
        (403, "alice", TEST_KEY_ID),
    ]


@pytest.mark.parametrize("query", ["page=2", 'q="x"&a=<b>'])
def test_the_signed_identity_verifies_for_the_original_request(
    gateway: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    """The raw query is signed as the proxy forwards it (an audit found ``"`` signed as
    ``%22``: the service's check then failed)."""
    monkeypatch.setenv(IDENTITY_KEY_ENV, IDENTITY_SECRET.decode())
    key = {"id": "gateway-authz", "secret_env": IDENTITY_KEY_ENV}
    server = gateway(authorizer={"identity_signing_key": key})
    uri = f"{OURS}?{query}"
    response = nginx_ask(server, "GET", uri, groups=("analysts",))
    assert response.status_code == 200
    names = ("x-auth-subject", "x-auth-groups", "x-gateway-engagement", "signature-input")
    headers = {name: [response.headers[name]] for name in (*names, "signature")}
    message = Message("GET", OURS, query, headers=headers)
    verifier = SignatureVerifier(KeyRing([SigningKey("gateway-authz", IDENTITY_SECRET)]))
    assert verifier.verify(message, b"", time.time()).subject == "alice"
    tampered = Message("GET", "/v1/engagements/globex-cloud/findings", query, headers=headers)
    with pytest.raises(Exception, match="The request is not signed"):
        verifier.verify(tampered, b"", time.time())


# --- Traefik forwardAuth -------------------------------------------------------------


def traefik_ask(
    server: LiveServer, method: str, uri: str, subject: str = "alice", **kw: Any
) -> httpx.Response:
    """What Traefik forwardAuth sends: GET to the address, the client's headers, X-Forwarded-*."""
    headers = {
        "Accept": "text/html",
        "User-Agent": "curl/8.0",
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.example.com",
        "X-Forwarded-Uri": uri,
        "X-Forwarded-For": "203.0.113.7",
    }
    auth = kw.pop("auth", None) or _auth(subject, cover=TRAEFIK)
    return httpx.get(f"{server.url}/v1/decisions/traefik", headers=headers, auth=auth, timeout=5)


def test_traefik_allowed(gateway: Callable[..., LiveServer]) -> None:
    response = traefik_ask(gateway(), "POST", OURS)
    assert response.status_code == 200, response.text
    assert response.headers["x-auth-subject"] == "alice"
    assert response.json()["mode"] == "traefik"
    assert response.json()["action"] == "POST"


def test_traefik_denied_and_unsigned(gateway: Callable[..., LiveServer]) -> None:
    server = gateway()
    _problem(traefik_ask(server, "GET", "/v1/engagements/initech-redteam/findings"), 403)
    _problem(traefik_ask(server, "GET", "/v1/unknown"), 403)
    _problem(traefik_ask(server, "GET", OURS, auth=_auth("alice", cover=NGINX[:0])), 401)
    _problem(traefik_ask(server, "GET", OURS, auth=_auth("alice", cover=("x-forwarded-uri",))), 401)


# --- Envoy ext_authz HTTP service ----------------------------------------------------


def envoy_ask(
    server: LiveServer, method: str, target: str, subject: str = "alice"
) -> httpx.Response:
    """What Envoy's ext_authz HTTP service sends: the original method, path_prefix + path,
    the allowed headers (Host, Authorization, ...) and Content-Length 0, no body."""
    url = httpx.URL(server.url).copy_with(raw_path=f"/v1/decisions/envoy{target}".encode())
    request = httpx.Request(
        method,
        url,
        headers={"Host": "app.example.com", "Content-Length": "0", "X-Forwarded-Proto": "https"},
    )
    with httpx.Client(timeout=5, auth=_auth(subject, cover=())) as client:
        return client.send(request)


def test_envoy_allowed_with_the_original_method_and_query(
    gateway: Callable[..., LiveServer],
) -> None:
    response = envoy_ask(gateway(), "POST", f"{OURS}?dry-run=1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["mode"], body["action"], body["object"]) == ("envoy", "POST", OURS)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/v1/engagements/initech-redteam/findings", 403),
        ("GET", "", 403),  # the prefix alone: "/" matches no route
        ("GET", "/v1/engagements/acme-2026/findings/%2e%2e/%2e%2e/initech-redteam/findings", 403),
        ("GET", "/v1/engagements/acme-2026/findings/a;b", 400),  # refused at the edge already
    ],
)
def test_envoy_refusals(
    gateway: Callable[..., LiveServer], method: str, target: str, status: int
) -> None:
    _problem(envoy_ask(gateway(), method, target), status)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/../../../admin/policy"),
        ("POST", "/../../../admin/policy/reload"),
        ("POST", "/%2e%2e/%2e%2e/engagements/acme-2026/findings"),
        ("GET", "/../nginx"),
    ],
)
def test_an_envoy_check_cannot_climb_out_of_its_prefix_into_another_route(
    gateway: Callable[..., LiveServer],
    captured_logs: list[dict[str, Any]],
    method: str,
    target: str,
) -> None:
    """Dot segments in the client's path, after the prefix, stay in it: a check request
    is never run as the route they would reach (an admin could reload the policy)."""
    server = gateway()
    path = f"/v1/decisions/envoy{target}"  # sent as is: httpx would remove the dot segments
    identity = {"host": f"127.0.0.1:{server.port}", "x-auth-subject": "sam"}
    message = Message(
        method, path, "", "http", identity["host"], {k: [v] for k, v in identity.items()}
    )
    signed = sign_headers(message, b"", key_id=TEST_KEY_ID, secret=TEST_SECRET)
    fields = {**identity, **signed, "content-length": "0"}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall((head + "\r\n").encode("ascii"))
        response = as_response(*read_answer(sock, bytearray()))
    assert _problem(response, 400)["type"].endswith(":invalid_path")
    assert "climbs above the root" in response.json()["detail"]
    assert not [e for e in captured_logs if e.get("event") in ("decision", "policy_reloaded")]


def test_envoy_unsigned_is_401(gateway: Callable[..., LiveServer]) -> None:
    server = gateway()
    response = httpx.post(f"{server.url}/v1/decisions/envoy{OURS}", timeout=5)
    _problem(response, 401)
