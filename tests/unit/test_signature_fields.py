"""The canonical-shape parser of the signature fields answers exactly as http_sf does.

``parse_signature_headers`` parses the common shape with regular expressions and
everything else with http_sf; on any input the shortcut accepts, both must give
the same signatures, or fail with the same reason.
"""

from __future__ import annotations

import base64

from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.authn.base import Message, serialize_signature_params
from app.authn.signer import sign_headers
from app.authn.verifier import (
    SignatureInput,
    _parse_canonical,
    parse_signature_headers,
    parse_with_http_sf,
)
from app.core.errors import AuthenticationFailed

Outcome = list[SignatureInput] | str

key = st.from_regex(r"\A[a-z*][a-z0-9_.*-]{0,10}\Z")
# Strings as signers write them, plus characters that must be escaped or are not allowed.
text = st.text(st.characters(min_codepoint=0x1F, max_codepoint=0x7F), max_size=12)
component = st.one_of(
    st.sampled_from(["@method", "@path", "@query", "x-auth-subject", "content-digest"]), text
)
integer = st.integers(-(10**16), 10**16)
param = st.tuples(
    st.one_of(st.sampled_from(["created", "expires", "keyid", "nonce", "alg", "tag"]), key),
    st.one_of(integer, text, integer.map(lambda i: f"0{abs(i)}")),
)
b64 = st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode())
noisy_b64 = st.one_of(b64, b64.map(lambda v: v.rstrip("=")), st.text("AZaz09+/=", max_size=12))


def _value(value: int | str) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + value + '"'


@st.composite
def fields(draw: st.DrawFn) -> tuple[str, str]:
    label = draw(key)
    names = draw(st.lists(component, max_size=6))
    sep = draw(st.sampled_from([" ", " ", " ", "  "]))
    inner = sep.join(f'"{n}"' for n in names)
    params = "".join(f";{k}={_value(v)}" for k, v in draw(st.lists(param, max_size=6)))
    sig_label = draw(st.one_of(st.just(label), key))
    return f"{label}=({inner}){params}", f"{sig_label}=:{draw(noisy_b64)}:"


def _outcome(parse: object, signature_input: str, signature: str, label: str | None) -> Outcome:
    assert callable(parse)
    try:
        result: list[SignatureInput] = parse(signature_input, signature, label)
    except AuthenticationFailed as exc:
        return exc.reason
    return result


@settings(max_examples=600, deadline=None)
@given(fields(), st.one_of(st.none(), st.just("sig1"), key))
@example(('a=(" ")', "a=::"), None)  # a String holding a space: an item, not two (found by CI)
@example(('a=("x y" "z");k="a b"', "a=::"), None)
@example(('a=("@METHOD")', "a=::"), "b")  # another label's member is not checked
def test_the_shortcut_agrees_with_http_sf(pair: tuple[str, str], label: str | None) -> None:
    """Same answer for every label wanted (``None``: all); the shortcut's ``[]`` (not the
    wanted label) is http_sf's ``signature_missing``."""
    signature_input, signature = pair
    try:
        fast: Outcome | None = _parse_canonical(signature_input, signature, label)
    except AuthenticationFailed as exc:
        fast = exc.reason
    if fast is None:
        return  # not the canonical shape: http_sf alone decides
    if fast == []:
        fast = "signature_missing"
    assert fast == _outcome(parse_with_http_sf, signature_input, signature, label)


@settings(max_examples=200, deadline=None)
@given(
    subject=st.from_regex(r"\A[a-z][a-z0-9]{0,20}\Z"),
    query=st.sampled_from(["", "page=2"]),
    body=st.binary(max_size=64),
    nonce=st.one_of(st.none(), st.from_regex(r"\A[A-Za-z0-9_-]{1,40}\Z")),
)
def test_what_the_reference_signer_sends_takes_the_shortcut(
    subject: str, query: str, body: bytes, nonce: str | None
) -> None:
    message = Message("POST", "/v1/x", query, "https", "gw", {"x-auth-subject": [subject]})
    added = sign_headers(message, body, key_id="k1", secret=b"s" * 32, nonce=nonce)
    fast = _parse_canonical(added["signature-input"], added["signature"])
    assert fast is not None
    assert fast == parse_with_http_sf(added["signature-input"], added["signature"])
    assert parse_signature_headers(added["signature-input"], added["signature"]) == fast


def test_shapes_outside_the_shortcut_still_parse() -> None:
    """Two members, a padding-free byte sequence, a Token: http_sf's work, same result."""
    single = 'a=("@method");created=1;keyid="k";nonce="n"'
    mac = base64.b64encode(b"x" * 32).decode()
    assert _parse_canonical(f"{single}, b=()", f"a=:{mac}:") is None
    assert _parse_canonical(single, f"a=:{mac.rstrip('=')}:") is None
    assert len(parse_signature_headers(single, f"a=:{mac}:, b=:{mac}:")) == 1


@settings(max_examples=600, deadline=None)
@given(fields())
@example(('a=("@method");created=0;nonce="n"', "a=::"))
@example(('a=("@method");created=007', "a=::"))  # leading zeros: not this shape
@example(("a=();created=0;created=0", "a=::"))  # a repeated parameter: serialised once
def test_the_shortcut_keeps_the_member_text_only_when_it_is_the_serialisation(
    pair: tuple[str, str],
) -> None:
    """The verifier signs over the kept text: it must be what serialising would give."""
    signature_input, signature = pair
    try:
        fast = _parse_canonical(signature_input, signature)
    except AuthenticationFailed:
        return
    if fast is None:
        assert all(s.serialized is None for s in _http_sf_or_empty(signature_input, signature))
        return
    (parsed,) = fast
    expected = serialize_signature_params(parsed.components, parsed.params)
    if parsed.serialized is None:  # kept only when it is exactly that; else re-serialised
        assert expected != signature_input.partition("=")[2]
    else:
        assert parsed.serialized == expected


def _http_sf_or_empty(signature_input: str, signature: str) -> list[SignatureInput]:
    try:
        return parse_with_http_sf(signature_input, signature)
    except AuthenticationFailed:
        return []
