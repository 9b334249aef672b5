"""GCRA arithmetic, the in-memory limiter, the headers and the 429 guard."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from app.api.pipeline import Gate, Target
from app.core.errors import TooManyRequests
from app.core.ops_settings import RateLimitRule, RateLimitSettings
from app.domain.identity import Identity
from app.ops import ratelimit
from app.ops.ratelimit import (
    MICROS,
    Bucket,
    MemoryRateLimiter,
    RateLimitGuard,
    gcra,
    interval_micros,
    rate_limit_headers,
    to_micros,
)
from app.ops.runtime import ops_lifespan
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

FIVE_PER_10S = RateLimitRule(limit=5, window_seconds=10)
S = MICROS  # gcra() counts in whole microseconds


def test_gcra_allows_a_full_burst_then_refuses() -> None:
    tat = None
    remaining = []
    for _ in range(5):
        allowed, tat, left, _reset, retry = gcra(tat, 100 * S, FIVE_PER_10S)
        assert allowed
        assert retry == 0
        remaining.append(left)
    assert remaining == [4, 3, 2, 1, 0]
    allowed, same_tat, left, reset, retry = gcra(tat, 100 * S, FIVE_PER_10S)
    assert not allowed
    assert same_tat == tat
    assert left == 0
    assert retry == pytest.approx(2.0)  # one emission interval: 10 s / 5
    assert reset == pytest.approx(10.0)


def test_gcra_refills_evenly() -> None:
    tat = None
    for _ in range(5):
        _, tat, *_ = gcra(tat, 100 * S, FIVE_PER_10S)
    allowed, *_ = gcra(tat, 101_900_000, FIVE_PER_10S)
    assert not allowed
    allowed, _, left, _, _ = gcra(tat, 102 * S, FIVE_PER_10S)
    assert allowed
    assert left == 0


def test_interval_rounds_up_to_a_whole_microsecond() -> None:
    assert interval_micros(FIVE_PER_10S) == 2 * S
    assert interval_micros(RateLimitRule(limit=3, window_seconds=1)) == 333_334
    assert interval_micros(RateLimitRule(limit=1_000_000, window_seconds=0.001)) == 1
    assert to_micros(0.1) == 100_000


def test_gcra_never_banks_more_than_the_limit() -> None:
    allowed, _, left, _, _ = gcra(50 * S, 1_000 * S, FIVE_PER_10S)
    assert allowed
    assert left == 4


async def test_memory_limiter_spends_both_buckets_or_neither() -> None:
    limiter = MemoryRateLimiter()
    tight = Bucket("subject", "alice", RateLimitRule(limit=1, window_seconds=60))
    loose = Bucket("engagement", "acme", RateLimitRule(limit=3, window_seconds=60))
    first = await limiter.acquire([tight, loose])
    assert [s.allowed for s in first] == [True, True]
    second = await limiter.acquire([tight, loose])
    assert [s.allowed for s in second] == [False, True]
    # The refused request spent nothing from the engagement: two are left.
    other = Bucket("subject", "bob", RateLimitRule(limit=1, window_seconds=60))
    third = await limiter.acquire([other, loose])
    assert third[1].remaining == 1


async def test_memory_limiter_keeps_keys_apart() -> None:
    limiter = MemoryRateLimiter()
    rule = RateLimitRule(limit=1, window_seconds=60)
    assert (await limiter.acquire([Bucket("subject", "alice", rule)]))[0].allowed
    assert (await limiter.acquire([Bucket("subject", "bob", rule)]))[0].allowed
    assert not (await limiter.acquire([Bucket("subject", "alice", rule)]))[0].allowed


async def test_memory_limiter_prunes_refilled_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MemoryRateLimiter, "PRUNE_EVERY", 2)
    clock = iter([0.0, 100.0])
    limiter = MemoryRateLimiter(clock=lambda: next(clock))
    rule = RateLimitRule(limit=1, window_seconds=1)
    await limiter.acquire([Bucket("subject", "alice", rule)])
    await limiter.acquire([Bucket("subject", "bob", rule)])
    assert list(limiter._tats) == ["subject:bob"]


async def test_memory_limiter_keeps_at_most_max_buckets() -> None:
    """Engagement ids come from the path: a caller minting one per request (each bucket
    kept for a day's interval) cannot grow the table past its bound."""
    limiter = MemoryRateLimiter(max_buckets=100)
    rule = RateLimitRule(limit=1, window_seconds=86_400)
    for n in range(1_000):
        await limiter.acquire([Bucket("engagement", f"e-{n}", rule)])
        assert len(limiter) <= 100
    assert len(limiter) == 100


async def test_memory_limiter_forgets_the_least_recently_spent_bucket() -> None:
    clock = iter(float(t) for t in range(10))
    limiter = MemoryRateLimiter(clock=lambda: next(clock), max_buckets=2)
    rule = RateLimitRule(limit=2, window_seconds=3_600)
    alice, bob, carol = (Bucket("subject", name, rule) for name in ("alice", "bob", "carol"))
    await limiter.acquire([alice])
    await limiter.acquire([bob])
    await limiter.acquire([alice])  # spent again: now the most recent
    await limiter.acquire([carol])  # full: bob, spent least recently, is forgotten
    assert not (await limiter.acquire([alice]))[0].allowed  # alice's spends are kept
    assert (await limiter.acquire([bob]))[0].remaining == 1  # a full bucket again


async def test_forgetting_buckets_is_logged_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, captured_logs: list[dict[str, Any]]
) -> None:
    monkeypatch.setattr(MemoryRateLimiter, "PRUNE_EVERY", 1)
    seconds = iter([0.0, 1.0, 2.0, 30.0, 62.0])
    limiter = MemoryRateLimiter(clock=lambda: next(seconds), max_buckets=1)
    rule = RateLimitRule(limit=1, window_seconds=3_600)
    for name in ("a", "b", "c", "d", "e"):  # each but the first forgets the one before
        await limiter.acquire([Bucket("engagement", name, rule)])
    lines = [line for line in captured_logs if line["event"] == "rate_limit_buckets_full"]
    # Logged before each spend: at 2 s (a forgotten), not at 30 s (within the minute),
    # at 62 s (b and c forgotten since).
    assert [(line["forgotten"], line["max_buckets"]) for line in lines] == [(1, 1), (2, 1)]


async def test_the_setting_bounds_the_process_limiter() -> None:
    app = FastAPI()
    async with ops_lifespan(app, make_settings(ops={"rate_limit": {"max_buckets": 7}})):
        limiter = app.state.rate_limit.limiter
    assert isinstance(limiter, MemoryRateLimiter)
    assert limiter.max_buckets == 7
    assert RateLimitSettings().max_buckets == 100_000


def test_headers_follow_the_ietf_draft() -> None:
    states = [
        ratelimit.BucketState(Bucket("subject", "a", FIVE_PER_10S), True, 3, 4.2, 0),
        ratelimit.BucketState(
            Bucket("engagement", "e", RateLimitRule(limit=100, window_seconds=60)), True, 99, 0.6, 0
        ),
    ]
    headers = rate_limit_headers(states)
    assert headers == {
        "RateLimit-Policy": '"subject";q=5;w=10, "engagement";q=100;w=60',
        "RateLimit": '"subject";r=3;t=5, "engagement";r=99;t=1',
    }
    assert rate_limit_headers([]) == {}


def test_a_fractional_window_is_not_rounded_into_the_policy() -> None:
    """The draft's ``w`` is whole seconds: 2 per 0.5 s is not "2 per 1 s" (half the rate)."""
    rule = RateLimitRule(limit=2, window_seconds=0.5)
    state = ratelimit.BucketState(Bucket("subject", "a", rule), True, 1, 0.25, 0)
    assert rate_limit_headers([state]) == {
        "RateLimit-Policy": '"subject";q=2',
        "RateLimit": '"subject";r=1;t=1',
    }


async def test_guard_raises_429_with_retry_after() -> None:
    settings = RateLimitSettings(subject=RateLimitRule(limit=1, window_seconds=30))
    guard = RateLimitGuard(settings, MemoryRateLimiter())
    spent = await guard.spend_subject("alice")
    allowed = await guard.spend_engagement("acme-2026", spent)
    assert allowed["RateLimit"] == '"subject";r=0;t=30'
    with pytest.raises(TooManyRequests) as caught:
        await guard.spend_subject("alice")
    assert caught.value.status_code == 429
    assert caught.value.headers["Retry-After"] == "30"
    assert caught.value.headers["RateLimit-Policy"] == '"subject";q=1;w=30'


async def test_guard_without_rules_spends_nothing() -> None:
    guard = RateLimitGuard(RateLimitSettings(), MemoryRateLimiter())
    for _ in range(3):
        assert await guard.spend_subject("alice") == []
        assert await guard.spend_engagement("acme-2026") == {}
    assert not guard.enabled


async def test_engagement_bucket_needs_an_engagement() -> None:
    rule = RateLimitRule(limit=1, window_seconds=60)
    limiter = MemoryRateLimiter()
    guard = RateLimitGuard(RateLimitSettings(subject=rule, engagement=rule), limiter)
    assert await guard.spend_engagement(None) == {}
    assert len(limiter) == 0
    headers = await guard.spend_engagement("acme", await guard.spend_subject("alice"))
    assert headers["RateLimit-Policy"] == '"subject";q=1;w=60, "engagement";q=1;w=60'
    assert len(limiter) == 2


async def test_the_engagement_limit_refuses_after_the_subject_unit_is_spent() -> None:
    """Two steps (decision 0013): the subject's unit, then, once allowed, the
    engagement's; a refusal by the second leaves the first spent, and names itself."""
    one = RateLimitRule(limit=1, window_seconds=60)
    ten = RateLimitRule(limit=10, window_seconds=60)
    guard = RateLimitGuard(RateLimitSettings(subject=ten, engagement=one), MemoryRateLimiter())
    await guard.spend_engagement("acme", await guard.spend_subject("bob"))
    spent = await guard.spend_subject("alice")
    assert [s.remaining for s in spent] == [9]
    with pytest.raises(TooManyRequests) as caught:
        await guard.spend_engagement("acme", spent)
    assert caught.value.headers["RateLimit-Policy"] == '"engagement";q=1;w=60'
    assert (await guard.spend_subject("alice"))[0].remaining == 8


class _FlakyRedis:
    """Just enough of a Redis client for ``RedisRateLimiter``: its script fails on demand."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    def register_script(self, _source: str) -> _FlakyRedis:
        return self

    async def __call__(self, keys: list[str], args: list[int]) -> list[list[int]]:
        self.calls += 1
        if self.down:
            raise ConnectionError("redis down")
        return [[1, 4, 2 * S, 0] for _ in keys[1:]]  # keys[0]: the request's record


@given(origin=st.one_of(st.just(0.0), st.floats(0, 1e12)))
def test_redis_limiter_skips_redis_for_one_second_after_a_failure_from_any_clock(
    origin: float,
) -> None:
    """Pins the fresh-machine behaviour (passes before this test was written): from a
    monotonic clock at 0 or one up for ages, the first request asks Redis, a failure
    skips Redis (open: no limit) for ``REDIS_RETRY_SECONDS``, then it is asked again."""
    client, now = _FlakyRedis(), [origin]
    bucket = Bucket("subject", "alice", RateLimitRule(limit=5, window_seconds=10))

    async def scenario() -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ratelimit.time, "monotonic", lambda: now[0])
            limiter = ratelimit.RedisRateLimiter(client, "rl:", "open")  # type: ignore[arg-type]  # a stand-in
            assert await limiter.acquire([bucket]) == []
            assert client.calls == 1
            now[0] = origin + ratelimit.REDIS_RETRY_SECONDS / 2
            client.down = False
            assert await limiter.acquire([bucket]) == []
            assert client.calls == 1, "Redis is skipped for the retry interval"
            now[0] = origin + ratelimit.REDIS_RETRY_SECONDS
            assert [s.allowed for s in await limiter.acquire([bucket])] == [True]
            assert client.calls == 2

    asyncio.run(scenario())


async def test_limits_switched_off_between_the_two_spends_keep_the_spent_headers() -> None:
    """A settings reload may replace the guard between the subject's spend and the
    engagement's: the unit the subject spent is still reported (an audit)."""
    rule = RateLimitRule(limit=5, window_seconds=60)
    guards = iter(
        [
            RateLimitGuard(RateLimitSettings(subject=rule), MemoryRateLimiter()),
            RateLimitGuard(RateLimitSettings(), MemoryRateLimiter()),
        ]
    )
    gate = Gate(cast(Any, None), cast(Any, None), lambda: next(guards))
    spent = await gate.spend_subject(Identity("alice", (), "k1"))
    headers = await gate.spend_engagement(Target("acme-2026", "/x", "GET"), spent)
    assert headers["RateLimit"] == '"subject";r=4;t=12'
