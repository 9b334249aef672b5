"""The gateway as the authorizer of a real nginx (auth_request), and of its sidecars.

nginx runs the shipped deploy/ files (ports and paths only): ``gateway-authorizer.conf``
asks ``/v1/decisions`` for every request and, on 200, proxies it straight to an
application stub, which records what it received. The Traefik and Envoy signing
sidecars are asked the way those proxies ask (their binaries are not available here).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request

from app.authn.asgi import message_from_scope
from app.authn.keys import KeyRing, SigningKey
from app.authn.verifier import SignatureVerifier
from app.core.errors import AuthenticationFailed
from app.core.headers import (
    INGRESS_REMOVED,
    INGRESS_STATED,
    METHOD_OVERRIDES,
    URL_REWRITES,
    never_forwarded,
)
from app.main import create_app
from tests.conftest import LiveServer, free_port, make_settings
from tests.integration.nginx_stack import NginxSite, nginx_key_spec

pytestmark = pytest.mark.integration

OURS = "/v1/engagements/acme-2026/findings"
FOREIGN = "/v1/engagements/initech-redteam/findings"
ROUTES = ["/v1/engagements/{engagement_id}/findings", "/v1/engagements/{engagement_id}/overview"]
IDENTITY_ENV = "GATEWAY_TEST_AUTHZ_IDENTITY_KEY"
IDENTITY_SECRET = b"authorizer-identity-test-secret-not-for-production"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _application(verifier: SignatureVerifier) -> FastAPI:
    """The application behind nginx: records every request it receives."""
    app = FastAPI()
    app.state.seen = []

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def record(request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            identity = verifier.verify(message_from_scope(request.scope), b"", time.time())
            signed = identity.subject
        except AuthenticationFailed as exc:
            signed = exc.reason
        app.state.seen.append(
            {"method": request.method, "path": request.url.path, "body": body, "signed": signed}
            | {"headers": dict(request.headers)}
        )
        return {"served": request.url.path}

    return app


@pytest.fixture
def site(
    tmp_path: Path,
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[NginxSite, FastAPI]]:
    monkeypatch.setenv(IDENTITY_ENV, IDENTITY_SECRET.decode())
    verifier = SignatureVerifier(KeyRing([SigningKey("gateway-authz", IDENTITY_SECRET)]))
    application = _application(verifier)
    app_server = live_server(application)
    settings = make_settings(
        signing={"keys": [nginx_key_spec(tmp_path)]},
        authorizer={
            "routes": ROUTES,
            "identity_signing_key": {"id": "gateway-authz", "secret_env": IDENTITY_ENV},
        },
    )
    gateway = live_server(create_app(settings))
    nginx = NginxSite(tmp_path, gateway.port, app_server.port, sidecars=True).start()
    yield nginx, application
    nginx.stop()


def _seen(application: FastAPI) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = application.state.seen
    return seen


# --- nginx auth_request -------------------------------------------------------------


def test_an_allowed_request_reaches_the_application_with_the_answer_headers(
    site: tuple[NginxSite, FastAPI],
) -> None:
    nginx, application = site
    with nginx.client("alice", authorizer=True) as client:
        forged = {
            "X-Auth-Subject": "dana",
            "X-Original-URI": "/admin/policy/reload",
            "X-Original-Method": "POST",
            "X-Forwarded-Uri": "/admin/policy/reload",
            "X-Forwarded-Method": "POST",
            "X-Auth-User": "sam",
            **{name: "POST" for name in METHOD_OVERRIDES},
            **{name: "/admin/policy/reload" for name in URL_REWRITES},
        }
        response = client.get(OURS, params={"page": "2"}, headers=forged)
    assert response.status_code == 200, response.text
    assert response.json() == {"served": OURS}
    [seen] = _seen(application)
    headers = seen["headers"]
    assert headers["x-auth-subject"] == "alice"  # the gateway's answer, not the client's
    assert headers["x-gateway-engagement"] == "acme-2026"
    assert len(headers["x-gateway-decision-id"]) == 32
    assert headers["x-gateway-policy-revision"]
    assert "authorization" not in headers
    assert "x-auth-groups" not in headers  # empty in the answer: nginx sends none
    # The authorizer contract's fields: nobody decided on the client's copies.
    assert not {"x-original-uri", "x-original-method"} & set(headers)
    assert not {"x-forwarded-uri", "x-forwarded-method"} & set(headers)
    # Nor an override or a rewrite: the application would act on another method or path.
    assert not (METHOD_OVERRIDES | URL_REWRITES | {"x-auth-user"}) & set(headers)
    assert seen["signed"] == "alice"  # the gateway's identity signature verifies


def test_a_client_s_forwarding_and_sso_headers_never_reach_the_application(
    site: tuple[NginxSite, FastAPI],
) -> None:
    """An audit sent X-Forwarded-Prefix, Forwarded, X-Real-IP, X-Auth-Request-User,
    Remote-User...: the application received them unchanged, beside the gateway's
    answer. Now nginx states the peer and scheme itself and removes the rest."""
    nginx, application = site
    forged = {
        **{name: "sam" for name in INGRESS_REMOVED},
        "X-Forwarded-Prefix": "/admin",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=1.2.3.4;host=evil.example;proto=https",
        "X-Forwarded-For": "7.7.7.7",
        "X-Real-IP": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Auth-Whatever": "sam",  # no well-known name: nginx cannot drop a prefix
    }
    with nginx.client("alice", authorizer=True) as client:
        response = client.get(OURS, headers=forged)
    assert response.status_code == 200, response.text
    [seen] = _seen(application)
    headers = seen["headers"]
    assert not INGRESS_REMOVED & set(headers), INGRESS_REMOVED & set(headers)
    # nginx's own view of the hop, not the client's.
    assert {name: headers.get(name) for name in INGRESS_STATED} == {
        "x-forwarded-for": "127.0.0.1",
        "x-real-ip": "127.0.0.1",
        "x-forwarded-proto": "http",
    }
    assert headers["x-auth-whatever"] == "sam"  # documented: the application ignores it
    assert seen["signed"] == "alice"


def _nginx_location_headers(conf: str, location: str) -> dict[str, str]:
    """proxy_set_header name -> value of one location block of an nginx example."""
    start = conf.index(f"location {location} {{")
    block = conf[start : conf.index("\n    }", start)]
    return {
        name.lower(): value
        for name, value in re.findall(r"^\s*proxy_set_header\s+(\S+)\s+(.+?);", block, re.M)
    }


# Traefik's entryPoint sets these itself, replacing a client's copies while its
# forwardedHeaders trust nobody: a headers middleware removing them would remove Traefik's.
TRAEFIK_STATED = INGRESS_STATED | {"x-forwarded-host", "x-forwarded-port", "x-forwarded-server"}


def test_the_ingress_examples_strip_every_override_rewrite_and_forwarding_header() -> None:
    """Not run (no binaries here): the Envoy and Traefik configurations name every
    header nginx blanks, from app/core/headers.py, and state the hop themselves."""
    ingress = METHOD_OVERRIDES | URL_REWRITES | INGRESS_REMOVED
    # The names come from the never-forwarded families (Remote-User: the SSO one).
    assert {n for n in INGRESS_REMOVED | INGRESS_STATED if not never_forwarded(n)} == {
        "remote-user"
    }
    nginx = _nginx_location_headers((DEPLOY / "nginx" / "gateway-authorizer.conf").read_text(), "/")
    assert {name for name, value in nginx.items() if value == '""'} >= ingress
    assert {name: nginx[name] for name in INGRESS_STATED} == {
        "x-forwarded-for": "$remote_addr",
        "x-real-ip": "$remote_addr",
        "x-forwarded-proto": "$scheme",
    }
    envoy = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text())
    removed = {
        m["remove"]
        for f in _envoy_filters(envoy)
        if f["name"] == "envoy.filters.http.header_mutation"
        for m in f["typed_config"]["mutations"]["request_mutations"]
    }
    assert removed >= ingress
    manager = _envoy_manager(envoy)
    # The edge: Envoy overwrites a client's x-forwarded-proto and appends the peer to
    # x-forwarded-for, which the route then replaces by the peer alone.
    assert manager["use_remote_address"] is True
    assert manager.get("xff_num_trusted_hops", 0) == 0
    added = {
        h["header"]["key"]: (h["header"]["value"], h["append_action"])
        for h in manager["route_config"]["request_headers_to_add"]
    }
    peer = ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "OVERWRITE_IF_EXISTS_OR_ADD")
    assert added == {"x-forwarded-for": peer, "x-real-ip": peer}
    traefik = yaml.safe_load((DEPLOY / "traefik" / "dynamic.yml").read_text())["http"]
    strip = traefik["middlewares"]["app-strip-overrides"]["headers"]["customRequestHeaders"]
    blanked = {name.lower() for name, value in strip.items() if value == ""}
    assert blanked >= ingress - TRAEFIK_STATED
    assert not blanked & TRAEFIK_STATED
    assert traefik["routers"]["app"]["middlewares"][0] == "app-strip-overrides"


def _envoy_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def _envoy_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = _envoy_manager(config)["http_filters"]
    return filters


def test_a_post_with_a_body_passes_to_the_application_unseen_by_the_gateway(
    site: tuple[NginxSite, FastAPI],
) -> None:
    nginx, application = site
    with nginx.client("alice", authorizer=True) as client:
        response = client.post(OURS, json={"title": "x", "severity": "low"})
    assert response.status_code == 200, response.text
    [seen] = _seen(application)
    assert seen["method"] == "POST"
    assert seen["body"] == b'{"title":"x","severity":"low"}'


def test_a_foreign_engagement_is_403_and_the_application_receives_nothing(
    site: tuple[NginxSite, FastAPI], captured_logs: list[dict[str, Any]]
) -> None:
    nginx, application = site
    with nginx.client("alice", authorizer=True) as client:
        foreign = client.get(FOREIGN)
        assert client.get("/v1/unlisted/route").status_code == 403
        assert client.get(OURS, headers={"X-Original-URI": FOREIGN}).status_code == 200
    assert [s["path"] for s in _seen(application)] == [OURS]
    # A problem, not nginx's page, whose corr_id finds the gateway's decision line.
    body = _assert_nginx_problem(foreign, 403, "forbidden")
    decided = [e for e in captured_logs if e["event"] == "decision"]
    [line] = [e for e in decided if e.get("corr_id") == body["corr_id"]]
    assert (line["stage"], line["decision"], line["mode"]) == ("authz", "deny", "nginx")


def test_an_unsigned_decision_request_is_401_and_the_application_receives_nothing(
    site: tuple[NginxSite, FastAPI],
) -> None:
    """ "bad user" passes basic auth but is no valid subject: the signer refuses to sign."""
    nginx, application = site
    with nginx.client("bad user", authorizer=True) as client:
        _assert_nginx_problem(client.get(OURS), 401, "unauthenticated")
    with httpx.Client(timeout=10) as anonymous:  # nginx's own basic-auth challenge
        challenged = anonymous.get(f"http://127.0.0.1:{nginx.authorizer_port}{OURS}")
    _assert_nginx_problem(challenged, 401, "unauthenticated")
    assert challenged.headers["www-authenticate"] == 'Basic realm="authz-gateway"'
    assert _seen(application) == []
    assert "no well-formed subject" in nginx.error_log()


def test_ten_identical_requests_all_pass(site: tuple[NginxSite, FastAPI]) -> None:
    nginx, application = site
    with nginx.client("alice", authorizer=True) as client:
        statuses = [client.get(OURS).status_code for _ in range(10)]
    assert statuses == [200] * 10
    assert len({s["headers"]["x-gateway-decision-id"] for s in _seen(application)}) == 10


def _assert_nginx_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """nginx's own problem+json: its ``corr_id`` is the ``X-Request-ID`` it answers with."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:authz-gateway:problem:{code}"
    assert body["status"] == status
    assert re.fullmatch(r"[0-9a-f]{32}", body["corr_id"])
    assert response.headers["x-request-id"] == body["corr_id"]
    return body


def test_a_rate_limited_decision_is_429_with_retry_after_not_a_500(
    tmp_path: Path,
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    captured_logs: list[dict[str, Any]],
) -> None:
    """auth_request turns every refusal but 401 and 403 into a 500: a client over its
    quota got nginx's HTML 500, no Retry-After, nothing to retry on. The shipped
    server answers the gateway's 429 as a 429 problem with its Retry-After."""
    application = _application(SignatureVerifier(KeyRing([SigningKey("x", b"x" * 32)])))
    app_server = live_server(application)
    settings = make_settings(
        signing={"keys": [nginx_key_spec(tmp_path)]},
        authorizer={"routes": ROUTES},
        ops={"rate_limit": {"subject": {"limit": 1, "window_seconds": 60}}},
    )
    gateway = live_server(create_app(settings))
    nginx = NginxSite(tmp_path, gateway.port, app_server.port).start()
    try:
        with nginx.client("alice", authorizer=True) as client:
            first, second = client.get(OURS), client.get(OURS)
    finally:
        nginx.stop()
    assert first.status_code == 200, first.text
    body = _assert_nginx_problem(second, 429, "rate_limited")
    assert 1 <= int(second.headers["retry-after"]) <= 60
    # The gateway's RateLimit fields too (draft-ietf-httpapi-ratelimit-headers).
    assert second.headers["ratelimit-policy"] == '"subject";q=1;w=60'
    assert second.headers["ratelimit"].startswith('"subject";r=0;t=')
    assert "rate limit" in body["detail"]
    assert [s["path"] for s in _seen(application)] == [OURS]
    # The gateway's line of that decision request carries the same id.
    [line] = [e for e in captured_logs if e["event"] == "rate_limited"]
    assert line["corr_id"] == body["corr_id"]


def test_a_gateway_that_does_not_answer_is_a_problem_never_nginx_s_html_page(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> None:
    """Nothing listens on the gateway's port: the authorizer server answers 503 (was
    nginx's HTML 500) and the signing proxy 502 (was nginx's HTML 502), both
    problem+json; the application receives nothing."""
    application = _application(SignatureVerifier(KeyRing([SigningKey("x", b"x" * 32)])))
    app_server = live_server(application)
    nginx_key_spec(tmp_path)  # the signing key and htpasswd nginx reads
    nginx = NginxSite(tmp_path, free_port(), app_server.port).start()
    try:
        with nginx.client("alice", authorizer=True) as client:
            decided = client.get(OURS)
        with nginx.client("alice") as client:
            proxied = client.get(OURS)
    finally:
        nginx.stop()
    _assert_nginx_problem(decided, 503, "unavailable")
    assert "retry-after" not in decided.headers  # the gateway gave none
    _assert_nginx_problem(proxied, 502, "bad_gateway")
    assert _seen(application) == []


# --- Traefik forwardAuth through the nginx sidecar ---------------------------------


def _traefik(
    nginx: NginxSite,
    method: str,
    uri: str,
    user: str | None,
    more: Sequence[tuple[str, str]] = (),
) -> httpx.Response:
    """Traefik's forwardAuth call: GET to the address, client headers, X-Forwarded-*."""
    headers = {
        "Accept": "*/*",
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.example.com",
        "X-Forwarded-Uri": uri,
        "X-Forwarded-For": "203.0.113.7",
        "Signature": "sig1=:AAAA:",  # a client's forgery rides along; the sidecar replaces it
    }
    if user is not None:
        headers["X-Auth-User"] = user  # set by Traefik's basicAuth headerField
    url = f"http://127.0.0.1:{nginx.traefik_port}/v1/decisions/traefik"
    return httpx.get(url, headers=[*headers.items(), *more], timeout=10)


def test_traefik_forward_auth_through_the_sidecar(site: tuple[NginxSite, FastAPI]) -> None:
    nginx, _ = site
    allowed = _traefik(nginx, "POST", f"{OURS}?x=1", "alice")
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["x-auth-subject"] == "alice"
    assert allowed.json()["mode"] == "traefik"
    assert allowed.json()["action"] == "POST"
    assert _traefik(nginx, "GET", FOREIGN, "alice").status_code == 403
    assert _traefik(nginx, "GET", OURS, None).status_code == 401


@pytest.mark.parametrize(
    "repeated",
    [
        ("X-Forwarded-Uri", "/admin/policy"),
        ("X-Forwarded-Method", "DELETE"),
        ("X-Auth-User", "sam"),
    ],
)
def test_the_traefik_sidecar_signs_no_repeated_field(
    site: tuple[NginxSite, FastAPI], repeated: tuple[str, str]
) -> None:
    """nginx's $http_* keeps the first copy: the gateway would decide on it while another
    hop may read the second. The sidecar does not sign (401), as the gateway refuses it."""
    nginx, _ = site
    response = _traefik(nginx, "GET", OURS, "alice", more=[repeated])
    assert response.status_code == 401, response.text
    assert f"the request repeats {repeated[0].lower()}; not signing" in nginx.error_log()


# --- Envoy ext_authz through the nginx sidecar -------------------------------------


def _envoy(nginx: NginxSite, method: str, target: str, user: str | None) -> httpx.Response:
    """Envoy's check request: original method, path_prefix + path, Content-Length 0."""
    headers = {"Content-Length": "0", "Host": "app.example.com"}
    if user is not None:
        headers["X-Auth-User"] = user  # set by Envoy's authentication filter
    url = f"http://127.0.0.1:{nginx.envoy_port}/v1/decisions/envoy{target}"
    with httpx.Client(timeout=10) as client:
        return client.send(httpx.Request(method, url, headers=headers))


def test_envoy_ext_authz_through_the_sidecar(site: tuple[NginxSite, FastAPI]) -> None:
    nginx, _ = site
    allowed = _envoy(nginx, "DELETE", f"{OURS}?dry=1", "alice")
    assert allowed.status_code == 403  # analysts may not DELETE: the original method decides
    allowed = _envoy(nginx, "POST", f"{OURS}?dry=1", "alice")
    assert allowed.status_code == 200, allowed.text
    assert (allowed.json()["mode"], allowed.json()["object"]) == ("envoy", OURS)
    assert _envoy(nginx, "GET", FOREIGN, "alice").status_code == 403
    assert _envoy(nginx, "GET", OURS, None).status_code == 401


def test_the_shipped_server_blocks_drop_header_names_with_underscores() -> None:
    """An audit's note: X_Auth_Subject was dropped only by nginx's default; an operator
    turning underscores_in_headers on reopens it for CGI-style applications."""
    for name in ("gateway-authorizer.conf", "gateway-proxy.conf"):
        text = (DEPLOY / "nginx" / name).read_text()
        assert "    underscores_in_headers off;\n" in text, name
    for conf in (DEPLOY / "nginx").glob("*.conf"):
        assert "underscores_in_headers on" not in conf.read_text(), conf.name
