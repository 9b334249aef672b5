"""Differential: what the njs signer puts on the wire against ``app.authn.base``.

nginx (the shipped signer, its groups taken from a test header instead of the
shipped empty value) proxies to a recorder instead of the gateway. The recorder
rebuilds the signature base with ``app.authn.base.build_signature_base`` from the
request exactly as received and checks the njs MAC against HMAC-SHA256 over it,
then runs the gateway's own ``SignatureVerifier`` (the whole profile) on it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import http_sf
import pytest
from fastapi import FastAPI, Request

from app.authn.asgi import message_from_scope
from app.authn.base import build_signature_base, hmac_sha256
from app.authn.keys import KeyRing, SigningKey
from app.authn.verifier import SignatureVerifier
from app.core.errors import AuthenticationFailed
from tests.conftest import LiveServer
from tests.integration.nginx_stack import NGINX_KEY_ID, NGINX_SECRET, NginxSite, write_secrets

pytestmark = pytest.mark.integration


def _recorder() -> FastAPI:
    app = FastAPI()
    verifier = SignatureVerifier(KeyRing([SigningKey(NGINX_KEY_ID, NGINX_SECRET)]))

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def record(request: Request) -> dict[str, Any]:
        body = await request.body()
        if "signature-input" not in request.headers:
            return {"signed": False, "subject": request.headers.get("x-auth-subject")}
        message = message_from_scope(request.scope)
        parsed = http_sf.parse(request.headers["signature-input"].encode(), tltype="dictionary")
        inner, params = parsed["sig1"]  # type: ignore[index]
        components = [name for name, _ in inner]
        base = build_signature_base(message, components, params)
        mac = base64.b64encode(hmac_sha256(NGINX_SECRET, base)).decode()
        try:
            outcome = verifier.verify(message, body, time.time()).subject
        except AuthenticationFailed as exc:
            outcome = exc.reason
        return {
            "signed": True,
            "base": base,
            "mac_matches": request.headers["signature"] == f"sig1=:{mac}:",
            "verified": outcome,
            "path": message.path,
            "query": message.query,
            "groups": request.headers.get("x-auth-groups"),
        }

    return app


@pytest.fixture
def nginx_to_recorder(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> Iterator[NginxSite]:
    write_secrets(tmp_path)
    recorder = live_server(_recorder())
    site = NginxSite(
        tmp_path,
        recorder.port,
        http_overrides={
            'js_var $authz_user_groups "";': "js_var $authz_user_groups $http_x_test_groups;"
        },
    ).start()
    yield site
    site.stop()


CASES = [
    ("GET", "/v1/engagements/acme-2026/findings", b"", ""),
    ("GET", "/v1/engagements/acme-2026/findings?severity=high&page=2", b"", "analysts,red-team"),
    ("GET", "/v1/a/%7Euser/b%20c/%2e%2e/d?x=%2F&y=&z", b"", ""),
    ("GET", "/v1/only/a/question?", b"", ""),
    ("GET", "/v1/q?a=1&a=2&b=caf%C3%A9", b"", "g1"),
    ("POST", "/v1/engagements/acme-2026/findings", b'{"title":"t","severity":"high"}', ""),
    ("PUT", "/v1/binary?k=v", bytes(range(256)) * 8, "red-team"),
    ("PATCH", "/v1/x", b"x", ""),
    ("DELETE", "/v1/engagements/acme-2026/findings/F-0001", b"", ""),
]


@pytest.mark.parametrize(("method", "target", "body", "groups"), CASES)
def test_the_njs_signature_base_is_the_gateways(
    nginx_to_recorder: NginxSite, method: str, target: str, body: bytes, groups: str
) -> None:
    headers = {"X-Test-Groups": groups} if groups else {}
    with nginx_to_recorder.client("alice") as client:
        request = client.build_request(method, target, content=body or None, headers=headers)
        request.url = request.url.copy_with(raw_path=target.encode())
        answer = client.send(request).json()
    assert answer["mac_matches"], answer["base"]
    assert answer["verified"] == "alice"
    path, _, query = target.partition("?")
    assert (answer["path"], answer["query"]) == (path, query)
    assert answer["groups"] == (groups or None)
    assert ('"@query"' in answer["base"]) == bool(query)
    assert ('"content-digest"' in answer["base"]) == bool(body)


def test_a_malformed_group_is_not_signed(nginx_to_recorder: NginxSite) -> None:
    """Fail closed: nothing is signed, the gateway would answer 401."""
    with nginx_to_recorder.client("alice") as client:
        answer = client.get("/v1/x", headers={"X-Test-Groups": "ok,bad group"}).json()
    assert answer == {"signed": False, "subject": None}
    assert "malformed group" in nginx_to_recorder.error_log()


def test_signatures_differ_between_requests(nginx_to_recorder: NginxSite) -> None:
    with nginx_to_recorder.client("alice") as client:
        bases = {client.get("/v1/same").json()["base"] for _ in range(3)}
    assert len(bases) == 3  # a fresh nonce every time
