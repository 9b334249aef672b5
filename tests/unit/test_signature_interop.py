"""Interoperability with an independent RFC 9421 implementation, both ways."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import pytest
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)

from app.authn.base import Message
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import sign_headers
from app.authn.verifier import SignatureVerifier

KEY_ID = "interop-key"
SECRET = b"interop-test-secret-0123456789abcdef-xyz"
KEYS = MappingKeyResolver(public_keys={KEY_ID: SECRET}, private_keys={KEY_ID: SECRET})
REQUIRED = ("@method", "@path", "x-auth-subject")


@dataclass
class LibraryRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def _as_message(request: LibraryRequest) -> Message:
    path_and_query = request.url.split("gateway.internal", 1)[1]
    path, _, query = path_and_query.partition("?")
    headers = {name.lower(): [value] for name, value in request.headers.items()}
    return Message(request.method, path, query, "https", "gateway.internal", headers)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "https://gateway.internal/v1/engagements/acme-2026/findings?page=2", None),
        ("POST", "https://gateway.internal/v1/engagements/acme-2026/findings", b'{"a": "b"}'),
    ],
)
def test_library_signature_verifies_with_our_verifier(
    method: str, url: str, body: bytes | None
) -> None:
    request = LibraryRequest(method, url, {"X-Auth-Subject": "alice"})
    covered = [*REQUIRED, "@query"] if "?" in url else list(REQUIRED)
    HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=KEYS).sign(
        request, key_id=KEY_ID, nonce="lib-n-1", covered_component_ids=covered, body=body
    )
    verifier = SignatureVerifier(KeyRing([SigningKey(KEY_ID, SECRET)]), 300)
    identity = verifier.verify(_as_message(request), body or b"")
    assert (identity.subject, identity.key_id) == ("alice", KEY_ID)


@pytest.mark.parametrize("body", [b"", b'{"title": "x"}'])
def test_our_signature_verifies_with_the_library(body: bytes) -> None:
    message = Message(
        "POST" if body else "GET",
        "/v1/engagements/acme-2026/findings",
        "" if body else "page=2",
        "https",
        "gateway.internal",
        {"x-auth-subject": ["alice"], "x-auth-groups": ["analysts"]},
    )
    added = sign_headers(message, body, key_id=KEY_ID, secret=SECRET, expires=int(time.time()) + 60)
    target = message.path + (f"?{message.query}" if message.query else "")
    request = LibraryRequest(
        message.method,
        f"https://gateway.internal{target}",
        {"X-Auth-Subject": "alice", "X-Auth-Groups": "analysts", **added},
    )
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=KEYS)
    results = verifier.verify(request, body=body, require_components=REQUIRED)
    assert [r.label for r in results] == ["sig1"]
    assert results[0].parameters["keyid"] == KEY_ID
    tampered = replace(request, url=request.url.replace("acme-2026", "globex-cloud"))
    with pytest.raises(InvalidSignature):
        verifier.verify(tampered, body=body)
