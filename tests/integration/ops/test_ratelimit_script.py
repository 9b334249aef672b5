"""The GCRA Lua script on a real redis-server, with the clock injected.

In production the script reads ``now`` from Redis ``TIME``; here the same steps
(``_GCRA_STEPS``) run behind lines that read ``now`` (whole microseconds) from
the last argument, so clock values from 0 to 1e9 s, and beyond 2**32 s, are
reachable. The in-memory twin is checked over the same range in
tests/unit/ops/test_ratelimit_properties.py; here both must also agree step by step.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.core.ops_settings import RateLimitRule
from app.ops.ratelimit import _GCRA_STEPS, MICROS, gcra, interval_micros
from tests.redis_server import RedisServer, redis_binary

pytestmark = pytest.mark.integration

# `now` from the last argument. Keys expire on Redis's real clock, not the injected one:
# an hour more on every expiry keeps a 1 ms window's key alive through the pipeline.
INJECTED_NOW = """
local now = tonumber(ARGV[#ARGV])
local real = redis
local redis = {call = function(command, key, value, px, ttl)
  if command == 'SET' then return real.call('SET', key, value, px, ttl + 3600000) end
  return real.call(command, key)
end}
"""
# Clock readings in whole microseconds: 0 to 1e9 s (examples add the far end of the range).
clock_micros = st.integers(min_value=0, max_value=10**9 * MICROS)
rules = st.builds(
    RateLimitRule,
    limit=st.integers(min_value=1, max_value=1_000),
    window_seconds=st.floats(min_value=0.001, max_value=86_400),
)
RECORD_MS = 10_000
LATE = 2**33 * MICROS - 10**11  # the year 2242: beyond 2**32 s, inside 2**53 us with a window
BUGGY_FLOAT_CASE = {"rule": RateLimitRule(limit=2, window_seconds=0.001), "start": 2 * MICROS}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class InjectedClockScript:
    """The production GCRA steps with ``now`` passed in; one fresh key per run."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.script = client.register_script(INJECTED_NOW + _GCRA_STEPS)
        self.keys = (f"rl:test:{n}" for n in itertools.count())
        self.records = (f"rl:request:{n}" for n in itertools.count())
        self.last_key = ""

    def run(self, rule: RateLimitRule, readings: list[int], again: bool = False) -> list[list[int]]:
        """One request per reading (each with its own record) on a fresh key (``again``:
        the last one), in one pipeline; the script's replies."""
        key = self.last_key = self.last_key if again else next(self.keys)
        args = [RECORD_MS, interval_micros(rule), rule.limit]
        pipe = self.client.pipeline(transaction=False)
        for now in readings:
            self.script(keys=[next(self.records), key], args=[*args, now], client=pipe)
        return [reply[0] for reply in pipe.execute()]


@pytest.fixture(scope="module")
def script() -> Iterator[InjectedClockScript]:
    server = RedisServer(redis_binary()).start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        yield InjectedClockScript(client)
    finally:
        client.close()
        server.stop()


@st.composite
def readings(draw: st.DrawFn, start: int, span: int, count: int) -> list[int]:
    """``count`` non-decreasing readings in ``[start, start + span]`` (often one instant)."""
    width = draw(st.sampled_from([0.0, 1.0]) | st.floats(min_value=0.0, max_value=1.0))
    rng = draw(st.randoms(use_true_random=False))
    return sorted(start + rng.randint(0, int(max(span, 0) * width)) for _ in range(count))


@SETTINGS
@given(rule=rules, start=clock_micros, earlier=st.integers(0, 3), data=st.data())
@example(earlier=0, data=None, **BUGGY_FLOAT_CASE)
@example(rule=RateLimitRule(limit=1_000, window_seconds=86_400), start=LATE, earlier=2, data=None)
def test_the_first_limit_requests_after_a_quiet_period_are_allowed(
    script: InjectedClockScript,
    rule: RateLimitRule,
    start: int,
    earlier: int,
    data: st.DataObject | None,
) -> None:
    window = rule.limit * interval_micros(rule)
    quiet_since = start - window - 1_000
    before = [quiet_since] * earlier if quiet_since >= 0 else []
    spread = data.draw(readings(start, window, rule.limit)) if data else [start] * rule.limit
    replies = script.run(rule, before + spread)[len(before) :]
    assert [reply[0] for reply in replies] == [1] * rule.limit


@SETTINGS
@given(rule=rules, start=clock_micros, data=st.data())
@example(data=None, **BUGGY_FLOAT_CASE)
@example(rule=RateLimitRule(limit=7, window_seconds=3), start=LATE, data=None)
def test_request_limit_plus_one_inside_one_interval_is_refused(
    script: InjectedClockScript, rule: RateLimitRule, start: int, data: st.DataObject | None
) -> None:
    count = rule.limit + 1
    interval = interval_micros(rule)
    spread = data.draw(readings(start, interval - 1, count)) if data else [start] * count
    replies = script.run(rule, spread)
    assert [reply[0] for reply in replies] == [1] * rule.limit + [0]
    assert 0 < replies[-1][3] <= interval  # retry after: until the interval has passed


@SETTINGS
@given(rule=rules, start=clock_micros, gaps=st.lists(st.integers(0, 10**8), max_size=40))
@example(rule=RateLimitRule(limit=3, window_seconds=1), start=LATE, gaps=[0, 1, 333_333, 10**6])
def test_the_script_and_the_in_memory_step_agree(
    script: InjectedClockScript, rule: RateLimitRule, start: int, gaps: list[int]
) -> None:
    clock = list(itertools.accumulate(gaps, initial=start))
    replies = script.run(rule, clock)
    tat = None
    for now, (ok, left, reset_us, retry_us) in zip(clock, replies, strict=True):
        allowed, tat, remaining, reset, retry = gcra(tat, now, rule)
        assert (bool(ok), left, reset_us / MICROS, retry_us / MICROS) == (
            allowed,
            remaining,
            reset,
            retry,
        )
    # The TAT is stored as decimal seconds to the exact microsecond, as before the fix.
    assert tat is not None
    assert script.client.get(script.last_key) == f"{tat // MICROS}.{tat % MICROS:06d}".encode()


@SETTINGS
@given(
    old=rules, new=rules, start=clock_micros, spent=st.integers(1, 30), later=st.integers(0, 10**7)
)
@example(
    old=RateLimitRule(limit=6, window_seconds=30),
    new=RateLimitRule(limit=1000, window_seconds=1),
    start=LATE,
    spent=6,
    later=0,
)
def test_after_a_rule_change_a_spent_bucket_waits_at_most_the_new_window(
    script: InjectedClockScript,
    old: RateLimitRule,
    new: RateLimitRule,
    start: int,
    spent: int,
    later: int,
) -> None:
    """A limit raised from 6/30 s to 1000/1 s (a rolling config change) answered 429 with
    Retry-After 19 under RateLimit-Policy q=1000;w=1: the TAT stored under the old window
    held. A bucket spent under the old rule is now an empty bucket under the new one."""
    script.run(old, [start] * spent)
    [(ok, left, reset_us, retry_us)] = script.run(new, [start + later], again=True)
    assert reset_us <= new.limit * interval_micros(new)
    assert retry_us <= interval_micros(new)
    tat = None
    for _ in range(spent):
        tat = gcra(tat, start, old)[1]
    allowed, _, remaining, reset, retry = gcra(tat, start + later, new)
    assert (bool(ok), left, reset_us / MICROS, retry_us / MICROS) == (
        allowed,
        remaining,
        reset,
        retry,
    )


@SETTINGS
@given(rule=rules, start=clock_micros, later=st.integers(0, 10**8))
@example(rule=RateLimitRule(limit=1, window_seconds=60), start=LATE, later=1)
def test_a_run_again_under_its_record_answers_the_first_and_spends_nothing(
    script: InjectedClockScript, rule: RateLimitRule, start: int, later: int
) -> None:
    """redis-py's retry of a spend Redis ran (its reply lost) carries the same record:
    answered as the first run was, the bucket unchanged; a refusal keeps no record."""
    key = script.last_key = next(script.keys)
    record = next(script.records)
    args = [RECORD_MS, interval_micros(rule), rule.limit]
    first = script.script(keys=[record, key], args=[*args, start])
    tat = script.client.get(key)
    assert first[0][0] == 1
    assert script.script(keys=[record, key], args=[*args, start + later]) == first
    assert script.client.get(key) == tat, "spent once"
    script.run(rule, [start] * rule.limit, again=True)  # the bucket is empty now
    refused = next(script.records)
    assert script.script(keys=[refused, key], args=[*args, start])[0][0] == 0
    assert script.client.exists(refused) == 0
