"""GCRA over the whole clock range: a quiet key grants exactly ``limit`` requests.

Clock values run from 0 (a freshly booted machine's monotonic clock) to 1e9 s.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.ops_settings import RateLimitRule
from app.ops.ratelimit import Bucket, MemoryRateLimiter

clock_values = st.floats(min_value=0.0, max_value=1e9, allow_nan=False)
rules = st.builds(
    RateLimitRule,
    limit=st.integers(min_value=1, max_value=1_000),
    window_seconds=st.floats(min_value=0.001, max_value=86_400),
)


@st.composite
def spread(draw: st.DrawFn, start: float, span: float, count: int) -> list[float]:
    """``count`` non-decreasing clock readings in ``[start, start + span]`` (often one instant)."""
    width = draw(st.sampled_from([0.0, 1.0]) | st.floats(min_value=0.0, max_value=1.0))
    rng = draw(st.randoms(use_true_random=False))
    return sorted(start + rng.uniform(0.0, max(span, 0.0) * width) for _ in range(count))


def _outcomes(rule: RateLimitRule, readings: list[float], before: list[float]) -> list[bool]:
    """Spend one request per reading; ``before`` are earlier requests on the same key."""
    clock = iter(before + readings)
    limiter = MemoryRateLimiter(clock=lambda: next(clock))
    bucket = Bucket("subject", "alice", rule)

    async def spend_all() -> list[bool]:
        for _ in before:
            await limiter.acquire([bucket])
        return [(await limiter.acquire([bucket]))[0].allowed for _ in readings]

    return asyncio.run(spend_all())


@settings(max_examples=300, deadline=None)
@given(rule=rules, start=clock_values, earlier=st.integers(0, 3), data=st.data())
def test_the_first_limit_requests_after_a_quiet_period_are_allowed(
    rule: RateLimitRule, start: float, earlier: int, data: st.DataObject
) -> None:
    # Earlier traffic, if the clock had time for it, came a whole window before `start`.
    quiet_since = start - rule.window_seconds - 1e-3
    before = [quiet_since] * earlier if quiet_since >= 0 else []
    readings = data.draw(spread(start, rule.window_seconds, rule.limit))
    assert all(_outcomes(rule, readings, before))


@settings(max_examples=300, deadline=None)
@given(rule=rules, start=clock_values, data=st.data())
def test_request_limit_plus_one_inside_one_interval_is_refused(
    rule: RateLimitRule, start: float, data: st.DataObject
) -> None:
    # Two microseconds below one emission interval: the clock's rounding cannot reach it.
    readings = data.draw(spread(start, rule.emission_interval - 2e-6, rule.limit + 1))
    outcomes = _outcomes(rule, readings, [])
    assert outcomes == [True] * rule.limit + [False]
