"""Components a route requires on top of the profile (the decision endpoints' headers)."""

from __future__ import annotations

import time

import pytest

from app.authn.base import Message
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import sign_headers
from app.authn.verifier import SignatureVerifier
from app.core.errors import AuthenticationFailed

SECRET = b"require-test-secret-not-for-production-0123"
VERIFIER = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]))
ORIGINAL = {"x-original-method": ["GET"], "x-original-uri": ["/v1/x"], "x-auth-subject": ["alice"]}


def _signed(cover: tuple[str, ...]) -> Message:
    message = Message("GET", "/v1/decisions", headers=dict(ORIGINAL))
    added = sign_headers(message, b"", key_id="k1", secret=SECRET, cover=cover)
    return Message(
        "GET", "/v1/decisions", headers={**ORIGINAL, **{k: [v] for k, v in added.items()}}
    )


def test_a_signature_covering_the_required_headers_is_accepted() -> None:
    message = _signed(("x-original-method", "x-original-uri"))
    required = ("x-original-method", "x-original-uri")
    verified = VERIFIER.verify_signature(message, b"", time.time(), require=required)
    assert verified.identity.subject == "alice"


@pytest.mark.parametrize("cover", [(), ("x-original-method",), ("x-original-uri",)])
def test_a_signature_missing_a_required_component_is_refused(cover: tuple[str, ...]) -> None:
    message = _signed(cover)
    assert VERIFIER.verify(message, b"", time.time()).subject == "alice"  # fine elsewhere
    with pytest.raises(AuthenticationFailed) as refused:
        VERIFIER.verify_signature(
            message, b"", time.time(), require=("x-original-method", "x-original-uri")
        )
    assert refused.value.reason == "component_missing"


def test_a_required_header_covered_but_absent_is_refused() -> None:
    message = _signed(("x-original-method", "x-original-uri"))
    headers = {k: v for k, v in message.headers.items() if k != "x-original-uri"}
    stripped = Message("GET", "/v1/decisions", headers=headers)
    with pytest.raises(AuthenticationFailed) as refused:
        VERIFIER.verify_signature(stripped, b"", time.time(), require=("x-original-uri",))
    assert refused.value.reason == "component_missing"
