"""A gateway's clock stepped back while Redis holds the nonces it claimed.

The window is judged by the gateway's clock; a nonce's time to live runs on Redis's.
The production claim script runs on a real redis-server with Redis's ``TIME`` injected
(the first line swapped, as the rate-limit script's tests do), so the gateway's offset
from Redis at the claim and at the replay can be any value, a Redis clock near zero
included. The replay is tried at the first moment Redis has forgotten the nonce: a
gateway that refuses then (stale or expired) refuses at every later moment.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction

import pytest
import redis
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from app.authn.base import Message
from app.authn.keys import KeyRing, SigningKey
from app.authn.nonces import _CLAIM_STEPS, NonceKeys
from app.authn.signer import sign_headers
from app.authn.verifier import CLOCK_TOLERANCE_SECONDS, SignatureVerifier, longest_hold
from app.core.errors import AuthenticationFailed
from tests.redis_server import RedisServer, redis_binary

pytestmark = pytest.mark.integration

# Redis's TIME from the two last arguments (seconds, microseconds), as TIME answers.
INJECTED_TIME = "local now = {ARGV[#ARGV - 1], ARGV[#ARGV]}\n"
SECRET = b"clock-step-test-secret-0123456789abcdef"
REQUEST = Message(
    method="GET",
    path="/v1/engagements/acme-2026/findings",
    query="",
    authority="gateway.internal",
    headers={"x-auth-subject": ["alice"]},
)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class InjectedTimeClaims:
    """The production claim script with Redis's clock passed in; a fence at 0."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.script = client.register_script(INJECTED_TIME + _CLAIM_STEPS)
        self.nonces = (f"n{n}" for n in itertools.count())
        run_id = client.info("server")["run_id"]
        replid = client.info("replication")["master_replid"]
        client.set(NonceKeys.FENCE_KEY, f"0.000000 {run_id}:{replid}")

    def held_for(self, created: int, ttl: int, until: int, skew: int, redis_now: float) -> int:
        """Claim a fresh nonce as the gateway does at Redis time ``redis_now``; the
        seconds Redis holds it."""
        keys = NonceKeys(grouped=False).claim_keys("k1", next(self.nonces))
        seconds = math.floor(redis_now)
        micros = min(999_999, int((redis_now - seconds) * 1_000_000))
        args = [created, ttl, "token", until, longest_hold(skew), seconds, micros]
        outcome, _, _ = self.script(keys=keys, args=args)
        assert outcome == b"claimed"
        # EX: whole seconds, counted from the run; read back at once.
        return math.ceil(self.client.pttl(keys[1]) / 1000)


@pytest.fixture(scope="module")
def claims() -> Iterator[InjectedTimeClaims]:
    server = RedisServer(redis_binary()).start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        yield InjectedTimeClaims(client)
    finally:
        client.close()
        server.stop()


def assert_refused(verifier: SignatureVerifier, message: Message, now: float) -> None:
    """Refused for good (stale or expired), not as dated too far ahead."""
    with pytest.raises(AuthenticationFailed) as caught:
        verifier.verify(message, b"", now=now)
    assert caught.value.reason in ("stale", "expired")


@SETTINGS
@given(
    created=st.integers(0, 2**34),
    skew=st.integers(1, 3600),
    lifetime=st.none() | st.integers(-10, 8000),
    dated=st.floats(-1.01, 1.01, allow_nan=False),
    ahead=st.floats(-8000, 8000, allow_nan=False),
    behind=st.floats(0, CLOCK_TOLERANCE_SECONDS, allow_nan=False),
)
# A gateway 10 s ahead of Redis claims; NTP steps it back to Redis's time.
@example(created=1_790_000_000, skew=300, lifetime=None, dated=0.0, ahead=10.0, behind=0)
# Clocks near zero (a freshly booted host without a real-time clock).
@example(created=5, skew=300, lifetime=None, dated=0.0, ahead=3.0, behind=2.0)
# The window ends past 2**15 (2**33), where the float spacing doubles: composed in floats,
# Redis's now, plus held, plus the offset, less the step read 2**-37 (2**-19) s before it.
@example(
    created=32294, skew=3600, lifetime=None, dated=0.0, ahead=-0.0009246041629207074, behind=2.0
)
@example(
    created=8589932896,
    skew=3600,
    lifetime=None,
    dated=0.0,
    ahead=-0.00022234832554591535,
    behind=2.0,
)
def test_a_stepped_back_gateway_refuses_the_replay_once_redis_forgot_the_nonce(
    claims: InjectedTimeClaims,
    created: int,
    skew: int,
    lifetime: int | None,
    dated: float,
    ahead: float,
    behind: float,
) -> None:
    """Claimed by a gateway ``ahead`` s ahead of Redis (behind if negative), that judged
    ``created`` ``dated`` windows ahead of its clock (outside -1..1: refused); replayed when
    Redis has just forgotten the nonce, to a gateway whose clock was stepped back since.
    Refused if, after the step, that clock is at most the tolerance behind Redis's (the
    NTP step that corrects a clock run ahead), or was stepped back by at most the
    tolerance; the first holds unless the signature is dated more than the window ahead
    of Redis's clock. Redis never holds a nonce longer than two windows plus the
    tolerance."""
    gateway_now = created - dated * (skew + 1)
    redis_now = gateway_now - ahead
    expires = None if lifetime is None else created + lifetime
    assume(redis_now >= 0 and gateway_now >= 0 and (expires is None or expires >= 0))
    verifier = SignatureVerifier(KeyRing([SigningKey("k1", SECRET)]), max_skew_seconds=skew)
    added = sign_headers(REQUEST, b"", key_id="k1", secret=SECRET, created=created, expires=expires)
    message = replace(REQUEST, headers={**REQUEST.headers, **{k: [v] for k, v in added.items()}})
    try:
        verified = verifier.verify_signature(message, b"", now=gateway_now)
    except AuthenticationFailed:
        return
    ttl, until = verified.replay_ttl(gateway_now, skew), verified.hold_until(skew)
    held = claims.held_for(created, ttl, until, skew, redis_now)
    assert ttl <= held <= longest_hold(skew)
    # Moments are summed exactly, then read as a float clock reads them: summed in floats
    # they round at every step, and can land a step before the window's end (the examples).
    forgotten_at = Fraction(redis_now) + held  # on Redis's clock
    lead = Fraction(gateway_now) - Fraction(redis_now)  # how far the gateway led Redis at the claim
    # Stepped back a little:
    assert_refused(verifier, message, float(forgotten_at + lead - Fraction(behind)))
    if created <= math.floor(redis_now) + skew:
        # Back to Redis's time:
        assert_refused(verifier, message, float(forgotten_at - Fraction(behind)))
