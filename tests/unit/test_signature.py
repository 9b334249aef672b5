"""Signature base, MAC, signer and verifier: RFC vector, round trip, each tamper."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from app.authn.base import Message, build_signature_base, hmac_sha256
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import sign_headers
from app.authn.verifier import SignatureVerifier
from app.core.errors import AuthenticationFailed

# RFC 9421 Appendix B.2.5: HMAC-SHA256 over date, @authority and content-type.
RFC_KEY = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_MESSAGE = Message(
    method="POST",
    path="/foo",
    query="param=Value&Pet=dog",
    scheme="https",
    authority="example.com",
    headers={
        "date": ["Tue, 20 Apr 2021 02:07:55 GMT"],
        "content-type": ["application/json"],
    },
)
RFC_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type")'
    ';created=1618884473;keyid="test-shared-secret"'
)
RFC_SIGNATURE = "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="

NOW = 1_790_000_000
SECRET = b"unit-test-secret-0123456789abcdef-xyz"


def test_rfc9421_b25_signature_base_and_mac() -> None:
    params = {"created": 1618884473, "keyid": "test-shared-secret"}
    base = build_signature_base(RFC_MESSAGE, ["date", "@authority", "content-type"], params)
    assert base == RFC_BASE
    assert base64.b64encode(hmac_sha256(RFC_KEY, base)).decode() == RFC_SIGNATURE


def _request(body: bytes = b"", query: str = "") -> Message:
    return Message(
        method="POST" if body else "GET",
        path="/v1/engagements/acme-2026/findings",
        query=query,
        authority="gateway.internal",
        headers={"x-auth-subject": ["alice"], "content-type": ["application/json"]},
    )


def _signed(message: Message, body: bytes = b"", **kw: object) -> Message:
    added = sign_headers(message, body, key_id="k1", secret=SECRET, created=NOW, **kw)  # type: ignore[arg-type]
    headers = {**message.headers, **{k: [v] for k, v in added.items()}}
    return replace(message, headers=headers)


def _verifier(*keys: SigningKey) -> SignatureVerifier:
    return SignatureVerifier(KeyRing(keys or [SigningKey("k1", SECRET)]), max_skew_seconds=300)


def _reason(message: Message, body: bytes = b"", now: float = NOW) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        _verifier().verify(message, body, now=now)
    return caught.value.reason


def test_round_trip_with_body_and_query() -> None:
    body = b'{"title": "x"}'
    message = _signed(_request(body, query="page=2"), body)
    identity = _verifier().verify(message, body, now=NOW)
    assert (identity.subject, identity.key_id) == ("alice", "k1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "DELETE"),
        ("path", "/v1/engagements/globex-cloud/findings"),
        ("query", "page=3"),
    ],
)
def test_tampered_derived_component_is_invalid(field: str, value: str) -> None:
    body = b'{"title": "x"}'
    message = replace(_signed(_request(body, query="page=2"), body), **{field: value})
    assert _reason(message, body) == "signature_invalid"


def test_tampered_subject_is_invalid() -> None:
    message = _signed(_request())
    message = replace(message, headers={**message.headers, "x-auth-subject": ["dana"]})
    assert _reason(message) == "signature_invalid"


def test_tampered_body_is_digest_mismatch() -> None:
    body = b'{"title": "x"}'
    assert _reason(_signed(_request(body), body), b'{"title": "y"}') == "digest_mismatch"


def test_replaced_digest_is_invalid() -> None:
    body = b'{"title": "x"}'
    message = _signed(_request(body), body)
    forged = {**message.headers, "content-digest": ["sha-256=:AAAA:"]}
    assert _reason(replace(message, headers=forged), body) == "signature_invalid"


def test_missing_signature() -> None:
    assert _reason(_request()) == "signature_missing"


@pytest.mark.parametrize(
    "signature_input",
    ['sig1=("@method"', "sig1=garbage;;", 'sig1=("@method");created="x";keyid="k1"'],
)
def test_malformed_signature_input(signature_input: str) -> None:
    message = _signed(_request())
    headers = {**message.headers, "signature-input": [signature_input]}
    assert _reason(replace(message, headers=headers)) == "signature_malformed"


def test_well_formed_input_without_required_params_is_param_missing() -> None:
    message = _signed(_request())
    headers = {**message.headers, "signature-input": ["sig1=()"]}
    assert _reason(replace(message, headers=headers)) == "param_missing"


def test_stale_and_future() -> None:
    message = _signed(_request())
    assert _reason(message, now=NOW + 301) == "stale"
    assert _reason(message, now=NOW - 301) == "future"


def test_expired() -> None:
    message = _signed(_request(), expires=NOW + 10)
    assert _reason(message, now=NOW + 11) == "expired"


def test_unknown_key() -> None:
    added = sign_headers(_request(), b"", key_id="other", secret=SECRET, created=NOW)
    message = replace(
        _request(), headers={**_request().headers, **{k: [v] for k, v in added.items()}}
    )
    assert _reason(message) == "unknown_key"


def test_uncovered_identity_header_is_rejected() -> None:
    message = _signed(_request())
    message = replace(message, headers={**message.headers, "x-auth-groups": ["admins"]})
    assert _reason(message) == "identity_unsigned"


def test_body_without_covered_digest_is_component_missing() -> None:
    message = _signed(_request())  # signed without a body
    assert _reason(message, b"smuggled") == "component_missing"
