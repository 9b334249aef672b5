"""Garbage in Signature-Input / Signature is a 401 reason, never an unexpected error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from app.authn.base import Message, serialize_signature_params, serialize_with_http_sf
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import sign_headers
from app.authn.verifier import Reason, SignatureVerifier, parse_signature_headers
from app.core.errors import AuthenticationFailed

NOW = 1_790_000_000
SECRET = b"fuzz-test-secret-0123456789abcdef-xyz"
VERIFIER = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), 300)
BARE = Message("POST", "/v1/x", "a=1", headers={"x-auth-subject": ["alice"]})
BODY = b'{"a": 1}'
SIGNED = sign_headers(BARE, BODY, key_id="k1", secret=SECRET, created=NOW, nonce="n")
KNOWN_REASONS = {r.value for r in Reason}

# Field values as they can arrive on the wire: latin-1, no CR/LF.
field_text = st.text(
    st.characters(min_codepoint=0x09, max_codepoint=0xFF, exclude_characters="\r\n")
)
# Fragments of the real grammar, recombined: reaches deeper than random text does.
TOKENS = [
    "sig1", "=", "(", ")", '"@method"', '"@path"', '"x-auth-subject"', '"content-digest"',
    ";created=", str(NOW), ";keyid=", '"k1"', ";nonce=", '"n"', ";expires=", ";alg=",
    '"hmac-sha256"', ":", "AAAA", ",", " ", "?1", "-5", "1e3", "\\", "*", "sig2", "%",
]  # fmt: skip
grammar_text = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)
header_value = st.one_of(field_text, grammar_text)


def mutated(original: str) -> st.SearchStrategy[str]:
    """The real field with a slice replaced: near-valid input."""
    return st.tuples(
        st.integers(0, len(original)), st.integers(0, 8), st.one_of(grammar_text, field_text)
    ).map(lambda t: original[: t[0]] + t[2] + original[t[0] + t[1] :])


def _outcome(signature_input: str, signature: str) -> str:
    headers = {
        **BARE.headers,
        "content-digest": [SIGNED["content-digest"]],
        "signature-input": [signature_input],
        "signature": [signature],
    }
    try:
        VERIFIER.verify(replace(BARE, headers=headers), BODY, now=NOW)
    except AuthenticationFailed as exc:
        return exc.reason
    return "accepted"


@settings(max_examples=300, deadline=None)
@given(signature_input=header_value, signature=header_value)
def test_garbage_in_both_fields_is_a_known_reason(signature_input: str, signature: str) -> None:
    assert _outcome(signature_input, signature) in KNOWN_REASONS


@settings(max_examples=300, deadline=None)
@given(
    signature_input=st.one_of(
        mutated(SIGNED["signature-input"]), st.just(SIGNED["signature-input"])
    ),
    signature=st.one_of(mutated(SIGNED["signature"]), st.just(SIGNED["signature"])),
)
def test_near_valid_fields_are_a_known_reason_or_the_genuine_signature(
    signature_input: str, signature: str
) -> None:
    outcome = _outcome(signature_input, signature)
    assert outcome in KNOWN_REASONS | {"accepted"}
    if outcome == "accepted":
        # Only a change the structured-field parser normalises away may still verify.
        original = parse_signature_headers(SIGNED["signature-input"], SIGNED["signature"])[0]
        # A field value has no leading or trailing OWS (RFC 9110 section 5.5): the
        # verifier reads fields as an HTTP parser hands them over, stripped.
        parsed = parse_signature_headers(signature_input.strip(" \t"), signature.strip(" \t"))
        assert any(
            (c.components, dict(c.params), c.signature)
            == (original.components, dict(original.params), original.signature)
            for c in parsed
        )


def test_the_unmodified_fields_verify() -> None:
    assert _outcome(SIGNED["signature-input"], SIGNED["signature"]) == "accepted"


sf_key = st.from_regex(r"\A[a-z*][a-z0-9_.*-]{0,12}\Z")
any_text = st.text(st.characters(min_codepoint=0x00, max_codepoint=0x17F), max_size=20)
param_value = st.one_of(
    st.integers(-(10**15) + 1, 10**15 - 1),
    any_text,
    st.integers(10**15, 10**16),  # out of the RFC 8941 Integer range
)


def _serialised(fn: Callable[..., str], components: list[str], params: dict[str, object]) -> str:
    try:
        return fn(components, params)
    except ValueError:
        return "<refused>"


@settings(max_examples=500, deadline=None)
@given(
    components=st.lists(any_text, max_size=6),
    params=st.dictionaries(sf_key, param_value, max_size=6),
)
def test_fast_params_serialiser_equals_http_sf(
    components: list[str], params: dict[str, object]
) -> None:
    fast = _serialised(serialize_signature_params, components, params)
    reference = _serialised(serialize_with_http_sf, components, params)
    assert fast == reference
