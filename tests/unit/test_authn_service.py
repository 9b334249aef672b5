"""The authn stage: verify, then claim the nonce; replays and store failures."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from hashlib import sha256

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from app.authn import service as service_module
from app.authn.base import Message
from app.authn.identity import INBOUND_ONLY_HEADERS, strip_inbound_headers
from app.authn.keys import KeyRing, SigningKey
from app.authn.nonces import Claim, MemoryNonceStore, NonceStoreUnavailable
from app.authn.rotation import KeyReloader
from app.authn.service import MAX_FENCE_WAIT_SECONDS, AuthnService, wait_past_fence
from app.authn.signer import HttpSignatureAuth, message_from_httpx, sign_headers
from app.authn.verifier import SignatureVerifier
from app.core.config import SigningSettings
from app.core.errors import AuthenticationFailed

NOW = 1_790_000_000
SECRET = b"unit-test-secret-0123456789abcdef-xyz"


class UnreachableStore(MemoryNonceStore):
    async def claim(
        self, key_id: str, nonce: str, created: int, ttl_seconds: int, until: int | None = None
    ) -> Claim:
        raise NonceStoreUnavailable()


class RecordingStore(MemoryNonceStore):
    """Remembers each claim's (nonce, TTL, until)."""

    def __init__(self) -> None:
        super().__init__(100, fence=NOW - 60)
        self.claims: list[tuple[str, int, int | None]] = []

    async def claim(
        self, key_id: str, nonce: str, created: int, ttl_seconds: int, until: int | None = None
    ) -> Claim:
        self.claims.append((nonce, ttl_seconds, until))
        return await super().claim(key_id, nonce, created, ttl_seconds, until)


def _store(fence: float = NOW - 60) -> MemoryNonceStore:
    return MemoryNonceStore(100, fence=fence)


def _service(store: MemoryNonceStore | None = None) -> AuthnService:
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), 300)
    return AuthnService(
        verifier,
        store if store is not None else _store(),
        KeyReloader(SigningSettings(), verifier),
    )


def _message(nonce: str, secret: bytes = SECRET, created: int = NOW) -> Message:
    bare = Message(
        "GET", "/v1/engagements/acme-2026/findings", headers={"x-auth-subject": ["alice"]}
    )
    added = sign_headers(bare, b"", key_id="k1", secret=secret, created=created, nonce=nonce)
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


def test_a_claim_says_until_when_its_nonce_is_held_on_any_clock() -> None:
    """Besides the TTL from the gateway's clock, the store learns the Unix second until
    which to hold the nonce (the end of acceptance plus the tolerance): Redis then holds
    it by its own clock too, for a gateway stepped back after it claimed."""
    store = RecordingStore()
    asyncio.run(_service(store).authenticate(_message("n1"), b"", NOW + 10.5))
    assert store.claims == [("n1", 291 + 2, NOW + 301 + 2)]


def test_a_forged_request_does_not_consume_the_nonce() -> None:
    store = _store()
    service = _service(store)
    assert _reason(service, _message("n1", secret=b"w" * 40)) == "signature_invalid"
    assert len(store) == 0
    assert asyncio.run(service.authenticate(_message("n1"), b"", NOW)).key_id == "k1"


def test_unreachable_store_is_503_never_accepted() -> None:
    service = _service(UnreachableStore(100, fence=NOW - 60))
    with pytest.raises(NonceStoreUnavailable) as caught:
        asyncio.run(service.authenticate(_message("n1"), b"", NOW))
    assert caught.value.status_code == 503


def test_the_reference_signer_digests_a_chunked_body_that_turns_out_empty() -> None:
    """An audit streamed an empty upload through ``HttpSignatureAuth``: chunked, no
    bytes, so no ``Content-Digest`` was signed, and the gateway (which requires the
    field for a declared body before reading it) refused it as component_missing."""

    def no_chunks() -> Iterator[bytes]:
        yield from ()

    request = httpx.Request(
        "POST", "http://gw/v1/engagements/acme-2026/evidence", content=no_chunks()
    )
    request.read()
    signed = next(HttpSignatureAuth("k1", SECRET, "alice").auth_flow(request))
    message = message_from_httpx(signed)
    assert message.header("transfer-encoding") == "chunked"
    assert (
        message.header("content-digest")
        == f"sha-256=:{base64.b64encode(sha256().digest()).decode()}:"
    )
    service = _service(_store(fence=time.time() - 60))
    assert asyncio.run(service.authenticate(message, b"")).subject == "alice"


def test_a_signature_created_before_the_fence_is_refused_without_consuming_its_nonce() -> None:
    store = _store(fence=NOW + 0.5)
    service = _service(store)
    assert _reason(service, _message("n1")) == "replay_window_reset"
    assert _reason(service, _message("n1", created=NOW - 10)) == "replay_window_reset"
    assert len(store) == 0
    fresh = _message("n1", created=NOW + 1)
    assert asyncio.run(service.authenticate(fresh, b"", NOW + 1)).subject == "alice"
    assert _reason(service, fresh) == "replayed"


def test_start_up_waits_past_a_fence_set_in_the_current_second() -> None:
    """Entering ``running()`` returns only when a signature made now clears the fence."""
    store = MemoryNonceStore(100)
    service = _service(store)

    async def start() -> float:
        async with service.running():
            return time.time()

    started = asyncio.run(start())
    assert int(started) >= store.fence, "created = int(now) is no longer before the fence"


@pytest.mark.parametrize(
    ("fence_from_now", "slept"),
    [(-5.0, []), (0.0, [0.5]), (0.25, [0.5]), (3600.0, [MAX_FENCE_WAIT_SECONDS])],
)
def test_start_up_wait_is_bounded_and_skipped_for_an_old_fence(
    monkeypatch: pytest.MonkeyPatch, fence_from_now: float, slept: list[float]
) -> None:
    """An old fence costs nothing; a new or far-ahead one (skewed Redis) at most a second."""
    now = 1_800_000_000.5  # fence == now: a signature made now (created = int(now)) is before it
    monkeypatch.setattr(service_module.time, "time", lambda: now)
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(service_module.asyncio, "sleep", record)
    asyncio.run(wait_past_fence(now + fence_from_now))
    assert delays == slept
    delays.clear()
    asyncio.run(wait_past_fence(None))
    assert delays == [], "no fence (Redis unreachable at start-up): no wait"


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


def _joined(*signed: tuple[str, Message]) -> Message:
    """One request carrying each (label, message)'s signature under that label, in order."""
    inputs, sigs = [], []
    for label, message in signed:
        inputs.append((message.header("signature-input") or "").replace("sig1=", f"{label}=", 1))
        sigs.append((message.header("signature") or "").replace("sig1=", f"{label}=", 1))
    first = signed[0][1]
    return replace(first, headers={**first.headers, "signature-input": inputs, "signature": sigs})


OTHER_SECRET = b"other-unit-test-secret-0123456789abcdef"


def _two_keys(store: MemoryNonceStore, *, second_known: bool = True) -> AuthnService:
    keys = [SigningKey("k1", SECRET)]
    if second_known:
        keys.append(SigningKey("k2", OTHER_SECRET))
    verifier = SignatureVerifier(KeyRing(keys), 300)
    return AuthnService(verifier, store, KeyReloader(SigningSettings(), verifier))


def _with_key(nonce: str, key_id: str, secret: bytes) -> Message:
    bare = _message("unused")
    bare = replace(bare, headers={"x-auth-subject": ["alice"]})
    added = sign_headers(bare, b"", key_id=key_id, secret=secret, created=NOW, nonce=nonce)
    return replace(bare, headers={**bare.headers, **{k: [v] for k, v in added.items()}})


def _ok(service: AuthnService, message: Message) -> str:
    return asyncio.run(service.authenticate(message, b"", NOW)).subject


def test_a_request_with_two_signatures_cannot_be_replayed_with_either() -> None:
    """Reordered, or with one signature left out: each is a replay of the first request."""
    old, new = _with_key("a", "k1", SECRET), _with_key("b", "k2", OTHER_SECRET)
    service = _two_keys(_store())
    assert _ok(service, _joined(("sig1", old), ("sig2", new))) == "alice"
    assert _reason(service, _joined(("sig2", new), ("sig1", old))) == "replayed"
    assert _reason(service, _joined(("sig2", new))) == "replayed"
    assert _reason(service, _joined(("sig1", old))) == "replayed"


def test_a_signature_by_a_key_added_later_is_used_up_too() -> None:
    """Signed with a key the gateway does not know yet: after the rotation it would verify."""
    store = _store()
    old, new = _with_key("a", "k1", SECRET), _with_key("b", "k2", OTHER_SECRET)
    assert _ok(_two_keys(store, second_known=False), _joined(("sig1", old), ("sig2", new)))
    assert _reason(_two_keys(store), _joined(("sig2", new))) == "replayed"


def test_a_spliced_used_signature_refuses_the_request() -> None:
    """A fresh signature beside one already used: the request is refused as a replay."""
    service = _two_keys(_store())
    assert _ok(service, _with_key("b", "k2", OTHER_SECRET)) == "alice"
    fresh_beside_used = _joined(
        ("sig1", _with_key("c", "k1", SECRET)), ("sig2", _with_key("b", "k2", OTHER_SECRET))
    )
    assert _reason(service, fresh_beside_used) == "replayed"


def test_two_signatures_sharing_key_and_nonce_are_claimed_once() -> None:
    """Two labels with the same (key id, nonce) are one claim, not a replay of themselves."""
    service = _two_keys(_store())
    same = _with_key("a", "k1", SECRET)
    assert _ok(service, _joined(("sig1", same), ("sig2", same))) == "alice"
    assert _reason(service, _joined(("sig1", same), ("sig2", same))) == "replayed"


def test_a_failing_request_claims_nothing() -> None:
    """No signature verified: no nonce of it is remembered (forged requests fill nothing)."""
    store = _store()
    service = _two_keys(store)
    forged = _joined(
        ("sig1", _with_key("a", "k1", b"w" * 40)), ("sig2", _with_key("b", "k2", b"v" * 40))
    )
    assert _reason(service, forged) == "signature_invalid"
    assert len(store) == 0


def _labelled(store: MemoryNonceStore, label: str) -> AuthnService:
    keys = [SigningKey("k1", SECRET), SigningKey("k2", OTHER_SECRET)]
    verifier = SignatureVerifier(KeyRing(keys), 300, label=label)
    return AuthnService(verifier, store, KeyReloader(SigningSettings(), verifier))


def test_a_repeated_label_is_malformed_not_half_read() -> None:
    """RFC 8941 keeps a repeated member's last value: the first signature was dropped
    unseen, never claimed, and the same write could then be sent again with it alone."""
    service = _two_keys(_store())
    first, second = _with_key("a", "k1", SECRET), _with_key("b", "k2", OTHER_SECRET)
    assert _reason(service, _joined(("sig1", first), ("sig1", second))) == "signature_malformed"
    assert _ok(service, _joined(("sig1", first))) == "alice"  # nothing of it was used


def test_in_label_mode_another_label_signed_with_a_gateway_key_is_used_up_too() -> None:
    """A label is not signed: renamed to the configured one, that signature verifies."""
    service = _labelled(_store(), "sig-gw")
    ours = _with_key("a", "k1", SECRET)
    also_ours = _with_key("b", "k2", OTHER_SECRET)
    assert _ok(service, _joined(("sig1", also_ours), ("sig-gw", ours))) == "alice"
    assert _reason(service, _joined(("sig-gw", also_ours))) == "replayed"


def test_in_label_mode_another_hop_s_signature_is_not_claimed() -> None:
    """Made with a key the gateway does not hold: not the gateway's to remember."""
    store = _store()
    service = _labelled(store, "sig-gw")
    ours, theirs = _with_key("a", "k1", SECRET), _with_key("x", "hop-key", b"h" * 40)
    assert _ok(service, _joined(("hop", theirs), ("sig-gw", ours))) == "alice"
    assert len(store) == 1


def _dated_ahead(key_id: str = "k1") -> float:
    from app.ops.metrics import SIGNATURES_DATED_AHEAD

    return SIGNATURES_DATED_AHEAD.labels(key_id)._value.get()


@given(
    ahead=st.integers(min_value=-300, max_value=300),
    # Any time from when a window's oldest created (now - 300) is still a positive one.
    now=st.floats(min_value=300, max_value=4e9, allow_nan=False, allow_infinity=False),
)
def test_a_signature_dated_more_than_5_s_ahead_is_counted_only_then(ahead: int, now: float) -> None:
    """Accepted (within the 300 s window) but counted: a signer's clock ahead by d weakens
    the replay fence by d (an audit replayed a +120 s signature after a flush, unseen)."""
    second = math.floor(now)
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), 300)
    service = AuthnService(
        verifier, MemoryNonceStore(10, fence=second - 400), KeyReloader(SigningSettings(), verifier)
    )
    before = _dated_ahead()
    message = _message(f"n{ahead}", created=second + ahead)
    assert asyncio.run(service.authenticate(message, b"", now)).subject == "alice"
    assert _dated_ahead() - before == (1 if ahead > 5 else 0)


def test_a_signer_ahead_is_logged_once_a_minute_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]  # a freshly booted machine: monotonic near zero
    monkeypatch.setattr(service_module.time, "monotonic", lambda: clock[0])
    service = _service()
    with capture_logs() as logs:
        for i, at in enumerate((0.0, 30.0, 59.9, 60.0)):
            clock[0] = at
            asyncio.run(service.authenticate(_message(f"a{i}", created=NOW + 20), b"", NOW))
    lines = [e for e in logs if e["event"] == "signature_dated_ahead"]
    assert [(e["key_id"], e["seconds_ahead"]) for e in lines] == [("k1", 20), ("k1", 20)]


@given(
    start=st.floats(0, 1e12),  # the wall clock from the epoch to far in the future
    skew=st.integers(1, 3600),
    elapsed=st.floats(0, 8000),
    step=st.floats(-8000, 8000),  # NTP stepped the wall clock meanwhile, either way
)
def test_a_signature_is_accepted_once_whatever_the_wall_clock_did_meanwhile(
    start: float, skew: int, elapsed: float, step: float
) -> None:
    """One process, its in-memory store: the replay is refused (replayed, or outside the
    window on the clock as it now reads), never accepted, however the clock moved."""
    wall = [start]
    created = math.floor(start)
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), skew)
    store = MemoryNonceStore(10, clock=lambda: wall[0], fence=created)
    service = AuthnService(verifier, store, KeyReloader(SigningSettings(), verifier))
    message = _message("n1", created=created)
    assert asyncio.run(service.authenticate(message, b"", wall[0])).subject == "alice"
    wall[0] = max(0.0, start + elapsed + step)
    with pytest.raises(AuthenticationFailed) as caught:
        asyncio.run(service.authenticate(message, b"", wall[0]))
    assert caught.value.reason in ("replayed", "stale", "future")
