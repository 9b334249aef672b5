"""The authn stage: verify, then claim the nonce; replays and store failures."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from app.authn.base import Message
from app.authn.identity import INBOUND_ONLY_HEADERS, strip_inbound_headers
from app.authn.keys import KeyRing, SigningKey
from app.authn.nonces import MemoryNonceStore, NonceStoreUnavailable
from app.authn.rotation import KeyReloader
from app.authn.service import AuthnService
from app.authn.signer import sign_headers
from app.authn.verifier import SignatureVerifier
from app.core.config import SigningSettings
from app.core.errors import AuthenticationFailed

NOW = 1_790_000_000
SECRET = b"unit-test-secret-0123456789abcdef-xyz"


class UnreachableStore(MemoryNonceStore):
    async def claim(self, key_id: str, nonce: str, ttl_seconds: int) -> bool:
        raise NonceStoreUnavailable()


def _service(store: MemoryNonceStore | None = None) -> AuthnService:
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), 300)
    return AuthnService(
        verifier,
        store if store is not None else MemoryNonceStore(100),
        KeyReloader(SigningSettings(), verifier),
    )


def _message(nonce: str, secret: bytes = SECRET) -> Message:
    bare = Message(
        "GET", "/v1/engagements/acme-2026/findings", headers={"x-auth-subject": ["alice"]}
    )
    added = sign_headers(bare, b"", key_id="k1", secret=secret, created=NOW, nonce=nonce)
    return replace(bare, headers={**bare.headers, **{k: [v] for k, v in added.items()}})


def _reason(service: AuthnService, message: Message) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        asyncio.run(service.authenticate(message, b"", NOW))
    return caught.value.reason


def test_second_use_of_a_nonce_is_replayed() -> None:
    service = _service()
    assert asyncio.run(service.authenticate(_message("n1"), b"", NOW)).subject == "alice"
    assert _reason(service, _message("n1")) == "replayed"
    assert asyncio.run(service.authenticate(_message("n2"), b"", NOW)).subject == "alice"


def test_a_forged_request_does_not_consume_the_nonce() -> None:
    store = MemoryNonceStore(100)
    service = _service(store)
    assert _reason(service, _message("n1", secret=b"w" * 40)) == "signature_invalid"
    assert len(store) == 0
    assert asyncio.run(service.authenticate(_message("n1"), b"", NOW)).key_id == "k1"


def test_unreachable_store_is_503_never_accepted() -> None:
    service = _service(UnreachableStore(100))
    with pytest.raises(NonceStoreUnavailable) as caught:
        asyncio.run(service.authenticate(_message("n1"), b"", NOW))
    assert caught.value.status_code == 503


def test_inbound_only_headers_are_stripped_for_forwarding() -> None:
    headers = [
        ("X-Auth-Subject", "alice"),
        ("x-auth-groups", "admins"),
        ("Signature", "sig1=:AAAA:"),
        ("signature-input", "sig1=()"),
        ("content-digest", "sha-256=:AAAA:"),
        ("accept", "application/json"),
        ("x-request-id", "corr-123456789"),
    ]
    kept = strip_inbound_headers(headers)
    assert kept == [("accept", "application/json"), ("x-request-id", "corr-123456789")]
    assert {
        "x-auth-subject",
        "x-auth-groups",
        "signature",
        "signature-input",
    } <= INBOUND_ONLY_HEADERS
