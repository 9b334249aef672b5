"""Path, method and header confusion through the real nginx auth_request (red team r31).

nginx runs the shipped ``gateway-authorizer.conf`` and the Envoy sidecar; requests are
written on a raw socket (a client library would normalise them), as alice, who is an
analyst on acme-2026 only. The invariant for every shape: the application receives
nothing unless the gateway allowed it, and what it receives is what was decided, the
same method and the same path (one trailing slash aside, the same resource).
``test_decisions.py`` holds the same refusals sent straight to the gateway.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response

from app.main import create_app
from tests.conftest import LiveServer, make_settings
from tests.integration.nginx_stack import PASSWORDS, NginxSite, nginx_key_spec

pytestmark = pytest.mark.integration

OURS = "/v1/engagements/acme-2026/findings"
FOREIGN = "/v1/engagements/initech-redteam/findings"
ROUTES = [
    "/v1/engagements/{engagement_id}/findings",
    "/v1/engagements/{engagement_id}/findings/{finding_id}",
    "/admin/{rest:path}",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PROPFIND", "FOO"]


def _application() -> FastAPI:
    """Records the method and the raw target of every request it receives."""
    app = FastAPI()
    app.state.seen = []

    @app.api_route("/{rest:path}", methods=METHODS)
    async def record(request: Request) -> Response:
        target = request.scope["raw_path"].decode("latin-1")
        query = request.scope["query_string"].decode("latin-1")
        app.state.seen.append((request.method, target, query))
        return Response("served")

    return app


@pytest.fixture
def site(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer], test_key_env: str
) -> Iterator[tuple[NginxSite, FastAPI]]:
    application = _application()
    app_server = live_server(application)
    settings = make_settings(
        signing={"keys": [nginx_key_spec(tmp_path)]}, authorizer={"routes": ROUTES}
    )
    gateway = live_server(create_app(settings))
    nginx = NginxSite(tmp_path, gateway.port, app_server.port, sidecars=True).start()
    yield nginx, application
    nginx.stop()


def _raw(port: int, line: str, fields: list[tuple[str, str]]) -> int:
    """Send ``line`` and ``fields`` as written; the answer's status."""
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{line}\r\n{head}Connection: close\r\n\r\n".encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def _as(user: str) -> list[tuple[str, str]]:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return [("Host", "app.example.com"), ("Authorization", f"Basic {token}")]


def _authz(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "decision" and e.get("stage") == "authz"]


# (request line, status, reason of the gateway's authz line: None when nginx refused it
# before asking). Each names what it tried in its id.
REFUSED = [
    pytest.param(f"GET {OURS}/%2e%2e/%2e%2e/initech-redteam/findings HTTP/1.1", 403,
                 "invalid_path", id="encoded-dot-segments"),
    pytest.param(f"GET {OURS}/%2E%2e/..%2f..%2finitech-redteam/findings HTTP/1.1", 403,
                 "invalid_path", id="mixed-case-escapes-and-encoded-slash"),
    pytest.param(f"GET {OURS}%2F..%2F..%2Finitech-redteam/findings HTTP/1.1", 403,
                 "invalid_path", id="encoded-slash"),
    pytest.param(f"GET {OURS}/%252e%252e/x HTTP/1.1", 403, "invalid_path", id="double-encoding"),
    pytest.param(f"GET {OURS}/1/../../../initech-redteam/findings HTTP/1.1", 403,
                 "invalid_path", id="dot-segments"),
    pytest.param(f"GET {OURS}/1/../../../../../admin/policy/status HTTP/1.1", 403,
                 "invalid_path", id="dot-segments-to-admin"),
    pytest.param("GET /v1/engagements/acme-2026/./findings HTTP/1.1", 403, "invalid_path",
                 id="single-dot-segment"),
    pytest.param(f"GET /{OURS} HTTP/1.1", 403, "invalid_path", id="leading-double-slash"),
    pytest.param(f"GET {OURS}// HTTP/1.1", 403, "invalid_path", id="two-trailing-slashes"),
    pytest.param(f"GET {OURS}/1;x=..%2f HTTP/1.1", 403, "invalid_path", id="matrix-param"),
    pytest.param(f"GET {OURS}/1\\..\\..\\..\\initech-redteam\\findings HTTP/1.1", 403,
                 "invalid_path", id="backslashes"),
    pytest.param(f"GET {OURS}/%31 HTTP/1.1", 403, "invalid_path", id="encoded-unreserved"),
    pytest.param(f"GET {OURS}/%2a HTTP/1.1", 403, "invalid_path", id="lower-case-hex"),
    pytest.param(f"GET {OURS}/%E2%80%AE HTTP/1.1", 403, "invalid_path", id="encoded-non-ascii"),
    pytest.param(f"GET {OURS}/%0a HTTP/1.1", 403, "invalid_path", id="encoded-control"),
    pytest.param(f"GET {OURS}/1#/../../../initech-redteam/findings HTTP/1.1", 403,
                 "invalid_path", id="fragment-in-path"),
    pytest.param(f"GET {OURS}?a=1#/x HTTP/1.1", 403, "invalid_path", id="fragment-in-query"),
    pytest.param(f"GET {OURS}/{'a' * 5000} HTTP/1.1", 403, "invalid_path", id="long-path"),
    pytest.param(f"GET {OURS}/{'a' * 9000} HTTP/1.1", 414, None, id="longer-than-nginx-reads"),
    pytest.param("GET /v1/engagements/ACME-2026/findings HTTP/1.1", 403, "invalid_engagement",
                 id="engagement-upper-case"),
    pytest.param("GET /v1/engagements/acme-2026%20/findings HTTP/1.1", 403,
                 "invalid_engagement", id="engagement-trailing-space"),
    pytest.param("GET /v1/engagements/acme-2026./findings HTTP/1.1", 403, "invalid_engagement",
                 id="engagement-trailing-dot"),
    pytest.param("GET /v1/engagements/acme%2D2026/findings HTTP/1.1", 403, "invalid_path",
                 id="engagement-encoded"),
    pytest.param(f"GET http://app.example.com{FOREIGN} HTTP/1.1", 403, "no_matching_allow",
                 id="absolute-form-foreign"),
    pytest.param(f"FOO {OURS} HTTP/1.1", 403, "no_matching_allow", id="unknown-method"),
    pytest.param(f"PROPFIND {OURS} HTTP/1.1", 403, "no_matching_allow", id="webdav-method"),
    pytest.param(f"HEAD {OURS} HTTP/1.1", 403, "no_matching_allow", id="head-is-not-get"),
    pytest.param("GET * HTTP/1.1", 400, None, id="asterisk-form"),
    pytest.param("OPTIONS * HTTP/1.1", 400, None, id="asterisk-form-options"),
    pytest.param(f"get {OURS} HTTP/1.1", 400, None, id="lower-case-method"),
    pytest.param(f"GET {OURS}/a%00b HTTP/1.1", 400, None, id="encoded-nul"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "status", "reason"), REFUSED)
def test_a_confusing_request_never_reaches_the_application(
    site: tuple[NginxSite, FastAPI],
    captured_logs: list[dict[str, Any]],
    line: str,
    status: int,
    reason: str | None,
) -> None:
    nginx, application = site
    assert _raw(nginx.authorizer_port, line, _as("alice")) == status
    assert application.state.seen == []
    decided = _authz(captured_logs)
    if reason is None:
        assert decided == []  # nginx refused it before asking
    else:
        assert [(e["decision"], e["reason"], e["mode"]) for e in decided] == [
            ("deny", reason, "nginx")
        ]


ALLOWED = [
    pytest.param(f"GET {OURS} HTTP/1.1", "GET", OURS, "", id="plain"),
    pytest.param(f"GET {OURS}/ HTTP/1.1", "GET", f"{OURS}/", "", id="one-trailing-slash"),
    pytest.param(f"POST {OURS}?/../../initech-redteam/findings HTTP/1.1", "POST", OURS,
                 "/../../initech-redteam/findings", id="query-that-looks-like-a-path"),
    pytest.param(f"GET {OURS}/%2A HTTP/1.1", "GET", f"{OURS}/%2A", "", id="escape-kept"),
    pytest.param(f"GET http://evil.example{OURS} HTTP/1.1", "GET", OURS, "",
                 id="absolute-form"),
    pytest.param(f"GET {OURS} HTTP/1.0", "GET", OURS, "", id="http-1.0"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "method", "target", "query"), ALLOWED)
def test_what_the_application_receives_is_what_was_decided(
    site: tuple[NginxSite, FastAPI],
    captured_logs: list[dict[str, Any]],
    line: str,
    method: str,
    target: str,
    query: str,
) -> None:
    nginx, application = site
    assert _raw(nginx.authorizer_port, line, _as("alice")) == 200
    assert application.state.seen == [(method, target, query)]
    [decided] = _authz(captured_logs)
    assert (decided["decision"], decided["action"]) == ("allow", method)
    assert decided["object"] == target.removesuffix("/")


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param([("X-Original-URI", "/admin/x"), ("X-Original-URI", "/admin/y")],
                     id="original-uri-repeated"),
        pytest.param([("X-Original-Method", "POST"), ("x-original-method", "DELETE")],
                     id="original-method-repeated-other-case"),
        pytest.param([("X_Original_URI", "/admin/x"), ("X_Original_Method", "POST")],
                     id="underscores"),
        pytest.param([("X-HTTP-Method-Override", "DELETE"), ("X-Method-Override", "DELETE"),
                      ("X-Original-URL", FOREIGN), ("X-Rewrite-URL", FOREIGN)],
                     id="override-and-rewrite"),
        pytest.param([("X-Auth-Subject", "dana"), ("X-Auth-Subject", "sam"),
                      ("X-Auth-Groups", "red-team"), ("x-auth-groups", "red-team")],
                     id="identity-repeated"),
    ],
)  # fmt: skip
def test_a_client_s_original_and_identity_headers_do_not_move_the_decision(
    site: tuple[NginxSite, FastAPI],
    captured_logs: list[dict[str, Any]],
    forged: list[tuple[str, str]],
) -> None:
    """nginx states the original method and URI, and the identity, itself: the client's
    copies, repeated or spelled otherwise, decide nothing (a foreign engagement stays 403)."""
    nginx, application = site
    assert _raw(nginx.authorizer_port, f"GET {FOREIGN} HTTP/1.1", _as("alice") + forged) == 403
    assert application.state.seen == []
    [decided] = _authz(captured_logs)
    assert (decided["subject"], decided["action"], decided["object"]) == ("alice", "GET", FOREIGN)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/v1/decisions/envoy/../../../admin/policy/reload", 404),  # nginx: not its location
        ("/v1/decisions/envoy/%2e%2e/%2e%2e/%2e%2e/admin/policy/reload", 404),
        (f"/v1/decisions/envoy{OURS}/%2e%2e/%2e%2e/initech-redteam/findings", 403),
        (f"/v1/decisions/envoy{OURS}%2F..%2F..%2Finitech-redteam/findings", 400),
        (f"/v1/decisions/envoy/{OURS}", 403),
        (f"/v1/decisions/envoy{OURS}/1;x", 400),
    ],
)
def test_the_envoy_sidecar_refuses_confusing_check_paths(
    site: tuple[NginxSite, FastAPI], target: str, status: int
) -> None:
    """The check request's path is the client's path behind the prefix: whatever nginx or
    the gateway makes of it, nothing confusing is allowed."""
    nginx, _ = site
    fields = [("Host", "app.example.com"), ("X-Auth-User", "alice"), ("Content-Length", "0")]
    assert _raw(nginx.envoy_port, f"GET {target} HTTP/1.1", fields) == status
