"""Signature base, MAC, signer and verifier: RFC vector, round trip, each tamper."""

from __future__ import annotations

import base64
import math
from dataclasses import replace
from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from app.authn.asgi import message_from_scope
from app.authn.base import (
    Message,
    build_signature_base,
    hmac_sha256,
    serialize_signature_params,
)
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import sign_headers
from app.authn.verifier import (
    CLOCK_TOLERANCE_SECONDS,
    OtherNonce,
    SignatureVerifier,
)
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
    kw.setdefault("created", NOW)
    added = sign_headers(message, body, key_id="k1", secret=SECRET, **kw)  # type: ignore[arg-type]
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


def test_a_field_that_is_not_ascii_is_verified_as_the_octets_sent() -> None:
    """A signer that sends UTF-8 signs its UTF-8 bytes; the gateway reads each received
    octet as one character (latin-1): the base is compared as those octets, so the request
    is refused on the value's own rules later, not as a bad signature."""
    uri = "/v1/engagements/acme-2026/findings?q=caf\u00e9"
    signer_view = _request()
    sent = replace(signer_view, headers={**signer_view.headers, "x-original-uri": [uri]})
    added = sign_headers(
        sent, b"", key_id="k1", secret=SECRET, created=NOW, cover=["x-original-uri"]
    )
    scope = {
        "type": "http",
        "method": "GET",
        "path": sent.path,
        "raw_path": sent.path.encode(),
        "query_string": b"",
        "scheme": "http",
        "headers": [
            (b"host", b"gateway.internal"),
            (b"x-auth-subject", b"alice"),
            (b"content-type", b"application/json"),
            (b"x-original-uri", uri.encode("utf-8")),
            *((name.encode(), value.encode()) for name, value in added.items()),
        ],
    }
    received = message_from_scope(scope)
    assert received.header("x-original-uri") == uri.encode("utf-8").decode("latin-1")
    identity = _verifier().verify(received, b"", now=NOW)
    assert identity.subject == "alice"


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


def test_the_window_is_as_wide_behind_as_ahead_at_any_fraction_of_a_second() -> None:
    """``created`` is whole seconds: compared with the clock's whole second, both ways."""
    message = _signed(_request())  # created = NOW
    for fraction in (0.0, 0.05, 0.5, 0.95):
        assert _verifier().verify(message, b"", now=NOW + 300 + fraction).subject == "alice"
        assert _verifier().verify(message, b"", now=NOW - 300 + fraction).subject == "alice"
        assert _reason(message, now=NOW + 301 + fraction) == "stale"
        assert _reason(message, now=NOW - 301 + fraction) == "future"


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


def _with_headers(message: Message, **extra: list[str]) -> Message:
    return replace(message, headers={**message.headers, **extra})


def _verifier_with_label(label: str | None) -> SignatureVerifier:
    return SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), 300, label=label)


def _two_signatures(first_secret: bytes) -> Message:
    """sig1 made with ``first_secret`` (wrong unless it is SECRET), sig2 with SECRET."""
    bad = sign_headers(_request(), b"", key_id="k1", secret=first_secret, created=NOW, nonce="n1")
    good = sign_headers(_request(), b"", key_id="k1", secret=SECRET, created=NOW, nonce="n2")
    return _with_headers(
        _request(),
        **{
            "signature-input": [
                bad["signature-input"],
                good["signature-input"].replace("sig1", "sig2"),
            ],
            "signature": [bad["signature"], good["signature"].replace("sig1", "sig2")],
        },
    )


def test_first_label_satisfying_the_profile_wins() -> None:
    verified = _verifier_with_label(None).verify_signature(_two_signatures(b"x" * 32), b"", NOW)
    assert (verified.label, verified.nonce) == ("sig2", "n2")


def test_no_label_satisfying_reports_the_first_failure() -> None:
    message = _two_signatures(b"x" * 32)
    message = _with_headers(message, **{"x-auth-subject": ["mallory"]})  # breaks both MACs
    with pytest.raises(AuthenticationFailed) as caught:
        _verifier_with_label(None).verify(message, b"", NOW)
    assert caught.value.reason == "signature_invalid"


def test_configured_label_is_the_only_one_considered() -> None:
    message = _two_signatures(b"x" * 32)
    with pytest.raises(AuthenticationFailed) as caught:
        _verifier_with_label("sig1").verify(message, b"", NOW)
    assert caught.value.reason == "signature_invalid"
    assert _verifier_with_label("sig2").verify_signature(message, b"", NOW).nonce == "n2"
    with pytest.raises(AuthenticationFailed) as absent:
        _verifier_with_label("proxy").verify(message, b"", NOW)
    assert absent.value.reason == "signature_missing"


def test_configured_label_ignores_the_shape_of_other_labels() -> None:
    """Another hop's signature, however it is shaped, is not the gateway's business."""
    good = _signed(_request())
    value, sig = good.header("signature-input") or "", good.header("signature") or ""
    foreign = [
        ('other=("@method");created=1', None),  # no Signature member at all
        ("junk=1", "junk=1"),  # not an Inner List, not a Byte Sequence
        ('other=("@METHOD");created="x"', "other=:AAAA:"),  # upper case, string created
    ]
    for extra_input, extra_sig in foreign:
        inputs = f"{value}, {extra_input}"
        sigs = sig if extra_sig is None else f"{sig}, {extra_sig}"
        message = _with_headers(good, **{"signature-input": [inputs], "signature": [sigs]})
        assert _verifier_with_label("sig1").verify(message, b"", NOW).subject == "alice"
        assert _reason(message) == "signature_malformed"  # no label: every member counts


def test_configured_label_in_signature_input_only_is_malformed() -> None:
    good = _signed(_request())
    bare = _with_headers(good, **{"signature": ["other=:AAAA:"]})
    with pytest.raises(AuthenticationFailed) as caught:
        _verifier_with_label("sig1").verify(bare, b"", NOW)
    assert caught.value.reason == "signature_malformed"


def test_the_winner_carries_every_other_signature_nonce_once() -> None:
    verified = _verifier_with_label(None).verify_signature(_two_signatures(SECRET), b"", NOW)
    assert (verified.label, verified.nonce) == ("sig1", "n1")
    assert [(o.key_id, o.nonce, o.created) for o in verified.others] == [("k1", "n2", NOW)]
    single = _verifier().verify_signature(_signed(_request()), b"", NOW)
    assert single.others == ()


def test_too_many_signatures_are_malformed() -> None:
    message = _signed(_request())
    inputs = ", ".join(f'l{i}=("@method");created={NOW};keyid="k1";nonce="n"' for i in range(9))
    sigs = ", ".join(f"l{i}=:AAAA:" for i in range(9))
    forged = _with_headers(message, **{"signature-input": [inputs], "signature": [sigs]})
    assert _reason(forged) == "signature_malformed"


@pytest.mark.parametrize("label", [None, "sig1"])
def test_too_many_signature_members_are_malformed_beside_a_valid_one(label: str | None) -> None:
    """The limit holds for both fields: nine ``Signature`` members, one of them valid."""
    message = _signed(_request())
    extra = ", ".join(f"l{i}=:AAAA:" for i in range(8))
    signature = f"{message.header('signature')}, {extra}"
    forged = _with_headers(message, signature=[signature])
    with pytest.raises(AuthenticationFailed) as caught:
        _verifier_with_label(label).verify(forged, b"", NOW)
    assert caught.value.reason == "signature_malformed"
    eight = ", ".join(f"l{i}=:AAAA:" for i in range(7))  # eight in all: accepted
    accepted = _with_headers(message, signature=[f"{message.header('signature')}, {eight}"])
    assert _verifier_with_label(label).verify(accepted, b"", NOW).subject == "alice"


@pytest.mark.parametrize("dropped", ["nonce", "keyid", "created"])
def test_each_required_parameter(dropped: str) -> None:
    params = {"created": NOW, "keyid": "k1", "nonce": "n-1"}
    del params[dropped]
    components = ["@method", "@path", "x-auth-subject"]
    base = build_signature_base(_request(), components, params)
    mac = base64.b64encode(hmac_sha256(SECRET, base)).decode()
    value = f"sig1={serialize_signature_params(components, params)}"
    message = _with_headers(
        _request(), **{"signature-input": [value], "signature": [f"sig1=:{mac}:"]}
    )
    assert _reason(message) == "param_missing"


def test_nonce_longer_than_the_limit_is_malformed() -> None:
    message = _signed(_request(), nonce="n" * 129)
    assert _reason(message) == "signature_malformed"


def test_alg_other_than_hmac_sha256_is_refused() -> None:
    message = _signed(_request())
    value = message.header("signature-input") or ""
    forged = _with_headers(
        message, **{"signature-input": [value.replace("hmac-sha256", "ed25519")]}
    )
    assert _reason(forged) == "algorithm_unsupported"


def test_sha512_and_both_digests_are_accepted() -> None:
    body = b'{"title": "x"}'
    for algorithms in (("sha-512",), ("sha-256", "sha-512")):
        message = _signed(_request(body), body, digest_algorithms=algorithms)
        assert _verifier().verify(message, body, now=NOW).subject == "alice"


def test_key_outside_its_validity_is_key_expired() -> None:
    retired = SigningKey("k1", SECRET, not_after=datetime.fromtimestamp(NOW - 1, UTC))
    future = SigningKey("k1", SECRET, not_before=datetime.fromtimestamp(NOW + 60, UTC))
    for key in (retired, future):
        with pytest.raises(AuthenticationFailed) as caught:
            _verifier(key).verify(_signed(_request()), b"", now=NOW)
        assert caught.value.reason == "key_expired"


def test_two_keys_active_during_rotation() -> None:
    new_secret = b"rotated-secret-0123456789abcdef-0123"
    verifier = _verifier(SigningKey("k1", SECRET), SigningKey("k2", new_secret))
    old = _signed(_request())
    added = sign_headers(_request(), b"", key_id="k2", secret=new_secret, created=NOW)
    new = _with_headers(_request(), **{k: [v] for k, v in added.items()})
    assert verifier.verify(old, b"", NOW).key_id == "k1"
    assert verifier.verify(new, b"", NOW).key_id == "k2"


@pytest.mark.parametrize(
    ("created_offset", "expires_offset", "now_offset", "ttl"),
    [
        (0, None, 0, 301 + 2),  # acceptable until created + skew, plus the clock tolerance
        (0, 10, 0, 10 + 2),  # expires sooner than the skew window: refused from expires on
        (200, None, 0, 501 + 2),  # created in the (tolerated) future: remembered longer
        (0, None, 299, 2 + 2),
        (0, None, 300.999, 1 + 2),  # the window's last instant
    ],
)
def test_replay_ttl_covers_the_whole_acceptance_window(
    created_offset: int, expires_offset: int | None, now_offset: float, ttl: int
) -> None:
    expires = None if expires_offset is None else NOW + expires_offset
    message = _signed(_request(), expires=expires, created=NOW + created_offset)
    verified = _verifier().verify_signature(message, b"", now=NOW + now_offset)
    assert verified.replay_ttl(NOW + now_offset, 300) == ttl


# The documented bound between gateways sharing a replay store (signing.md §4), fixed
# here rather than read from the code: an audit's gateways were 0.8 s apart.
GATEWAY_CLOCK_BOUND = 2


def _accepted_at(
    created: int, skew: int, now: float, lifetime: int | None
) -> tuple[SignatureVerifier, Message, int] | None:
    """A signature made at ``created`` (valid ``lifetime`` s, or no ``expires``) as a
    gateway with window ``skew`` checks it at ``now``: verifier, message and nonce TTL,
    or ``None`` when it is refused."""
    expires = None if lifetime is None else created + lifetime
    assume(now >= 0 and (expires is None or expires >= 0))
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), max_skew_seconds=skew)
    message = _signed(_request(), created=created, expires=expires)
    try:
        verified = verifier.verify_signature(message, b"", now=now)
    except AuthenticationFailed:
        return None
    return verifier, message, verified.replay_ttl(now, skew)


def last_reading_by(now: float, seconds: int) -> float:
    """The clock's last reading at or before exactly ``now + seconds``: the float sum
    rounds to the nearest reading, which just before a whole second can be that second
    (a moment the clock cannot tell apart from it)."""
    later = now + seconds
    if Fraction(later) > Fraction(now) + seconds:
        later = math.nextafter(later, -math.inf)
    return later


@given(
    created=st.integers(0, 2**34),
    skew=st.integers(1, 3600),
    offset=st.floats(-4000, 4000, allow_nan=False),
    lifetime=st.none() | st.integers(-10, 8000),
)
# Just before a whole second: near 4097 the clock's readings are 2**-40 s apart, so
# now + 3601 (exactly 4096.9999999999996) reads as 4097.0, past the window (then expires).
@example(created=496, skew=3600, offset=-4.0510553531529577e-13, lifetime=None)
@example(created=2049, skew=2048, offset=-4.0510553531529577e-13, lifetime=2048)
def test_replay_ttl_ends_exactly_where_acceptance_ends(
    created: int, skew: int, offset: float, lifetime: int | None
) -> None:
    """Over the whole range (a clock near 0 included): a signature accepted at ``now`` is
    still accepted at ``now + ttl - tolerance - 1`` (kept no longer than needed) and
    refused at ``now + ttl - GATEWAY_CLOCK_BOUND``, so when its nonce expires it is
    refused by a gateway whose clock is behind by up to the bound; never over 2 windows
    plus the tolerance."""
    now = created + offset
    accepted = _accepted_at(created, skew, now, lifetime)
    if accepted is None:
        return
    verifier, message, ttl = accepted
    tolerance = CLOCK_TOLERANCE_SECONDS
    assert 1 + tolerance <= ttl <= 2 * skew + 1 + tolerance
    still = last_reading_by(now, ttl - tolerance - 1)
    assert verifier.verify(message, b"", now=still).subject == "alice"
    with pytest.raises(AuthenticationFailed) as caught:
        verifier.verify(message, b"", now=now + ttl - GATEWAY_CLOCK_BOUND)
    assert caught.value.reason in ("stale", "expired")


@given(
    created=st.integers(0, 2**34),
    skew=st.integers(1, 3600),
    offset=st.floats(-4000, 4000, allow_nan=False),
    lifetime=st.none() | st.integers(-10, 8000),
    behind=st.floats(0, GATEWAY_CLOCK_BOUND, allow_nan=False),
    after=st.floats(0, 10_000, allow_nan=False),
)
def test_a_gateway_whose_clock_is_behind_refuses_once_the_nonce_expired(
    created: int, skew: int, offset: float, lifetime: int | None, behind: float, after: float
) -> None:
    """The audit's edge: claimed on A at ``now``, replayed to B (clock behind A's by up
    to the tolerance) at or after the nonce's expiry on A's clock: B refuses it."""
    now = created + offset
    accepted = _accepted_at(created, skew, now, lifetime)
    if accepted is None:
        return
    verifier, message, ttl = accepted
    with pytest.raises(AuthenticationFailed) as caught:
        verifier.verify(message, b"", now=now + ttl + after - behind)
    assert caught.value.reason in ("stale", "expired")


@given(
    created=st.integers(0, 2**34),
    skew=st.integers(1, 3600),
    offset=st.floats(-8000, 8000, allow_nan=False),
    lifetime=st.none() | st.integers(-10, 8000),
)
def test_another_signature_s_nonce_outlives_it_by_the_tolerance_within_two_windows(
    created: int, skew: int, offset: float, lifetime: int | None
) -> None:
    """The other signatures of a request (claimed beside the winner, never verified):
    capped at two windows plus the tolerance, and the cap never cuts the tolerance off
    one that could be accepted."""
    now = created + offset
    expires = None if lifetime is None else created + lifetime
    assume(now >= 0 and (expires is None or expires >= 0))
    ttl = OtherNonce("k1", "n", created, expires).replay_ttl(now, skew)
    assert 1 <= ttl <= 2 * skew + 1 + CLOCK_TOLERANCE_SECONDS
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), max_skew_seconds=skew)
    message = _signed(_request(), created=created, expires=expires)
    try:
        verifier.verify_signature(message, b"", now=now)
    except AuthenticationFailed:
        return
    with pytest.raises(AuthenticationFailed):
        verifier.verify(message, b"", now=now + ttl - GATEWAY_CLOCK_BOUND)


def test_multiple_subject_lines_are_malformed_identity() -> None:
    message = _signed(_with_headers(_request(), **{"x-auth-subject": ["alice", "dana"]}))
    assert _reason(message) == "identity_malformed"


def test_tampered_groups_is_invalid() -> None:
    message = _signed(_with_headers(_request(), **{"x-auth-groups": ["analysts"]}))
    assert _reason(_with_headers(message, **{"x-auth-groups": ["admins"]})) == "signature_invalid"


@pytest.mark.parametrize(
    ("components", "query"),
    [
        (["@method", "@path"], ""),  # x-auth-subject not covered
        (["@path", "x-auth-subject"], ""),  # @method not covered
        (["@method", "x-auth-subject"], ""),  # @path not covered
        (["@method", "@path", "x-auth-subject"], "page=2"),  # @query not covered
    ],
)
def test_signature_omitting_a_required_component(components: list[str], query: str) -> None:
    request = _request(query=query)
    params = {"created": NOW, "keyid": "k1", "nonce": "n-1"}
    base = build_signature_base(request, components, params)
    mac = base64.b64encode(hmac_sha256(SECRET, base)).decode()
    value = f"sig1={serialize_signature_params(components, params)}"
    message = _with_headers(request, **{"signature-input": [value], "signature": [f"sig1=:{mac}:"]})
    assert _reason(message) == "component_missing"


def test_authority_is_the_host_lower_cased_with_its_port_as_sent() -> None:
    """signing.md §2, step 4: ``Gateway.Internal:8443`` is signed as ``gateway.internal:8443``."""
    message = replace(_request(), authority="Gateway.Internal:8443")
    params: dict[str, int | str] = {"created": NOW, "keyid": "k1", "nonce": "n-authority"}
    base = build_signature_base(message, ["@authority"], params)
    assert base.splitlines()[0] == '"@authority": gateway.internal:8443'
    http = replace(_request(), authority="Gateway.Internal:80")  # a default port stays
    assert build_signature_base(http, ["@authority"], params).startswith(
        '"@authority": gateway.internal:80\n'
    )
