"""Retry and breaker policy, without a network."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import app.downstream.resilience as resilience
from app.core.config import BreakerSettings, RetrySettings
from app.core.errors import CircuitOpen, DownstreamError, NotFound
from app.downstream.resilience import (
    PoolExhausted,
    RetryableError,
    RetryableTimeout,
    RetryPolicy,
    ServiceBreaker,
    may_retry,
    parse_retry_after,
)

FAST = RetrySettings(attempts=3, backoff_initial_seconds=0.001, backoff_max_seconds=0.002)


def test_parse_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("method", "keyed", "replayable", "expected"),
    [
        ("GET", False, True, True),
        ("PUT", False, True, True),
        ("DELETE", False, True, True),
        ("POST", False, True, False),
        ("POST", True, True, True),
        ("PATCH", True, True, False),
        ("GET", False, False, False),
    ],
)
def test_only_repeatable_requests_may_be_retried(
    method: str, keyed: bool, replayable: bool, expected: bool
) -> None:
    assert may_retry(method, keyed, replayable) is expected


class Flaky:
    """Fails with the given errors in turn, then answers ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.attempts: list[int] = []

    async def __call__(self, number: int) -> str:
        self.attempts.append(number)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(policy: RetryPolicy, attempt: Flaky, enabled: bool = True) -> Any:
    return asyncio.run(policy.run(attempt, enabled))


def test_retryable_failures_are_retried_until_success() -> None:
    attempt = Flaky(RetryableError("s", "x"), RetryableTimeout("s"))
    assert run(RetryPolicy("s", FAST), attempt) == "ok"
    assert attempt.attempts == [1, 2, 3]


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    attempt = Flaky(*(RetryableError("s", f"failure {n}") for n in range(5)))
    with pytest.raises(RetryableError, match="failure 2"):
        run(RetryPolicy("s", FAST), attempt)
    assert attempt.attempts == [1, 2, 3]


@pytest.mark.parametrize(
    "error",
    [
        DownstreamError("s", "500"),
        PoolExhausted("s"),
        CircuitOpen("s"),
        NotFound("gone"),
    ],
)
def test_non_retryable_errors_are_raised_at_once(error: Exception) -> None:
    attempt = Flaky(error)
    with pytest.raises(type(error)):
        run(RetryPolicy("s", FAST), attempt)
    assert attempt.attempts == [1]


def test_disabled_retries_make_one_attempt() -> None:
    attempt = Flaky(RetryableError("s", "x"))
    with pytest.raises(RetryableError):
        run(RetryPolicy("s", FAST), attempt, enabled=False)
    assert attempt.attempts == [1]


def test_a_retry_after_beyond_the_cap_stops_retrying() -> None:
    settings = RetrySettings(attempts=3, max_retry_after_seconds=1)
    attempt = Flaky(RetryableError("s", "x", retry_after=30))
    with pytest.raises(RetryableError):
        run(RetryPolicy("s", settings), attempt)
    assert attempt.attempts == [1]


def test_the_deadline_stops_retrying_before_a_wait_that_would_cross_it() -> None:
    settings = RetrySettings(attempts=5, deadline_seconds=0.05, max_retry_after_seconds=10)
    attempt = Flaky(RetryableError("s", "x", retry_after=1))
    with pytest.raises(RetryableError):
        run(RetryPolicy("s", settings), attempt)
    assert attempt.attempts == [1]


class Clock:
    """A monotonic clock the test moves; its origin is 0, as on a freshly booted machine."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def fail(breaker: ServiceBreaker, error: Exception) -> None:
    with pytest.raises(type(error)):
        async with breaker.guard():
            raise error


async def succeed(breaker: ServiceBreaker) -> None:
    """A call that succeeds inside the guard (a helper: callers assert on the breaker)."""
    async with breaker.guard():
        pass


def test_breaker_opens_after_fail_max_and_fails_fast_with_retry_after() -> None:
    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=2, reset_timeout_seconds=30))
        await fail(breaker, DownstreamError("s"))
        assert breaker.state == "closed"
        await fail(breaker, DownstreamError("s"))
        assert breaker.state == "open"
        with pytest.raises(CircuitOpen) as raised:
            await succeed(breaker)
        assert 29 <= int(raised.value.headers["retry-after"]) <= 30
        assert raised.value.service == "s"

    asyncio.run(scenario())


def test_calls_admitted_before_the_breaker_opened_that_fail_after_log_no_transition() -> None:
    """Shutdown cancelled 50 requests admitted while closed: one closed -> open, then 45
    "open -> open" warnings (pybreaker opens an open breaker again). One transition."""

    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=2, reset_timeout_seconds=30))
        calls = [breaker.request() for _ in range(6)]
        for call in calls:
            call.admit()  # all admitted while closed
        for call in calls:
            error = DownstreamError("s")
            await call.__aexit__(DownstreamError, error, None)
        assert breaker.state == "open"

    with capture_logs() as logs:
        asyncio.run(scenario())
    transitions = [
        (e["from_state"], e["to_state"]) for e in logs if e["event"] == "breaker_transition"
    ]
    assert transitions == [("closed", "open")]


def test_client_errors_and_pool_timeouts_are_not_breaker_failures() -> None:
    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1))
        await fail(breaker, NotFound("no such thing"))
        await fail(breaker, PoolExhausted("s"))
        assert breaker.state == "closed"
        assert breaker.snapshot().failures == 0

    asyncio.run(scenario())


def test_a_pool_timeout_between_failures_resets_nothing() -> None:
    """pybreaker counts an excluded exception as a success: a pool timeout reset the
    failure count (an audit: a hung service behind a full pool never opened its
    breaker, 152 x 504 in 24 s). A call that sent nothing is not counted at all."""

    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=3))
        await fail(breaker, DownstreamError("s"))
        await fail(breaker, DownstreamError("s"))
        await fail(breaker, PoolExhausted("s"))
        assert breaker.snapshot().failures == 2
        await fail(breaker, DownstreamError("s"))
        assert breaker.state == "open"

    asyncio.run(scenario())


def test_a_request_sent_and_failed_whose_retry_found_no_connection_counts_as_failed() -> None:
    """A review: the request's end (no free connection for its retry) was not counted,
    although its first attempt reached the hung service and timed out: the breaker of a
    hung service behind a full pool still never opened."""

    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=2))
        for expected in ("closed", "open"):
            call = breaker.request()
            call.admit()
            call.failed(DownstreamError("s"))  # attempt 1: sent, timed out
            call.admit()  # attempt 2 admitted, then no free connection
            error = PoolExhausted("s")
            await call.__aexit__(PoolExhausted, error, None)
            assert breaker.state == expected

    asyncio.run(scenario())


def test_a_trial_ending_after_another_trial_decided_changes_nothing() -> None:
    async def scenario() -> None:
        settings = BreakerSettings(fail_max=1, reset_timeout_seconds=0.01, half_open_max_calls=2)
        breaker = ServiceBreaker("s", settings)
        await fail(breaker, DownstreamError("s"))
        await asyncio.sleep(0.02)
        first, second = breaker.request(), breaker.request()
        first.admit()
        second.admit()
        error = DownstreamError("s")
        await first.__aexit__(DownstreamError, error, None)  # reopens it
        opened_at = breaker.snapshot().opened_at
        await asyncio.sleep(0.005)
        await second.__aexit__(DownstreamError, DownstreamError("s"), None)
        assert breaker.snapshot().opened_at == opened_at  # the Retry-After given holds
        assert breaker.snapshot().trials_in_flight == 0

    asyncio.run(scenario())


def test_a_trial_that_found_no_free_connection_does_not_close_the_breaker() -> None:
    async def scenario() -> None:
        settings = BreakerSettings(fail_max=1, reset_timeout_seconds=0.01, half_open_max_calls=1)
        breaker = ServiceBreaker("s", settings)
        await fail(breaker, DownstreamError("s"))
        await asyncio.sleep(0.02)
        await fail(breaker, PoolExhausted("s"))  # the trial sent nothing
        assert breaker.state == "half-open"
        assert breaker.snapshot().trials_in_flight == 0  # its slot is free again
        await fail(breaker, DownstreamError("s"))  # the next trial decides
        assert breaker.state == "open"

    asyncio.run(scenario())


def test_calls_admitted_before_the_breaker_opened_do_not_move_its_reopening() -> None:
    """pybreaker opened an open breaker again for each late failure, so the time it
    admits a trial moved on: a caller told Retry-After: 10 was still refused after 10 s."""

    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1, reset_timeout_seconds=30))
        late = breaker.request()
        late.admit()
        await fail(breaker, DownstreamError("s"))
        opened_at = breaker.snapshot().opened_at
        assert opened_at is not None
        await asyncio.sleep(0.05)
        error = DownstreamError("s")
        await late.__aexit__(DownstreamError, error, None)
        assert breaker.snapshot().opened_at == opened_at
        assert breaker.snapshot().failures == 1

    asyncio.run(scenario())


def test_a_late_failure_during_a_trial_leaves_the_trial_to_decide() -> None:
    async def scenario() -> None:
        settings = BreakerSettings(fail_max=1, reset_timeout_seconds=0.01, half_open_max_calls=1)
        breaker = ServiceBreaker("s", settings)
        late = breaker.request()
        late.admit()
        await fail(breaker, DownstreamError("s"))
        await asyncio.sleep(0.02)
        trial = breaker.request()
        trial.admit()
        assert breaker.state == "half-open"
        error = DownstreamError("s")
        await late.__aexit__(DownstreamError, error, None)
        assert breaker.state == "half-open"
        await trial.__aexit__(None, None, None)
        assert breaker.state == "closed"

    with capture_logs() as logs:
        asyncio.run(scenario())
    transitions = [
        (e["from_state"], e["to_state"]) for e in logs if e["event"] == "breaker_transition"
    ]
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_half_open_admits_a_bounded_number_of_trial_calls() -> None:
    async def scenario() -> None:
        settings = BreakerSettings(fail_max=1, reset_timeout_seconds=0.01, half_open_max_calls=1)
        breaker = ServiceBreaker("s", settings)
        await fail(breaker, DownstreamError("s"))
        await asyncio.sleep(0.02)
        release = asyncio.Event()
        entered = asyncio.Event()

        async def trial() -> None:
            async with breaker.guard():
                entered.set()
                await release.wait()

        task = asyncio.create_task(trial())
        await entered.wait()
        assert breaker.state == "half-open"
        assert breaker.snapshot().trials_in_flight == 1
        with pytest.raises(CircuitOpen):
            await succeed(breaker)  # a second concurrent trial is refused
        release.set()
        await task
        assert breaker.state == "closed"

    asyncio.run(scenario())


def test_a_failed_trial_reopens_the_breaker() -> None:
    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1, reset_timeout_seconds=0.01))
        await fail(breaker, DownstreamError("s"))
        await asyncio.sleep(0.02)
        await fail(breaker, DownstreamError("s"))
        assert breaker.state == "open"

    asyncio.run(scenario())


def test_a_call_cancelled_by_a_deadline_counts_as_a_failure() -> None:
    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1))

        async def slow() -> None:
            async with breaker.guard():
                await asyncio.sleep(10)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow(), 0.01)
        assert breaker.state == "open"

    asyncio.run(scenario())


def test_snapshot_reports_time_to_the_next_trial() -> None:
    async def scenario() -> None:
        clock = Clock()
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1, reset_timeout_seconds=60), clock)
        assert breaker.snapshot().retry_after_seconds is None
        await fail(breaker, DownstreamError("s"))
        clock.now += 45
        snapshot = breaker.snapshot()
        assert snapshot.state == "open"
        assert 14 <= (snapshot.retry_after_seconds or 0) <= 15
        assert snapshot.opened_at is not None

    asyncio.run(scenario())


def test_snapshot_shows_half_open_once_the_reset_timeout_has_passed() -> None:
    """The state a request would meet: past the timeout the next call is a trial."""

    async def scenario() -> None:
        clock = Clock()
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1, reset_timeout_seconds=60), clock)
        await fail(breaker, DownstreamError("s"))
        assert breaker.snapshot().opened_at is not None
        clock.now += 59.5
        assert (breaker.snapshot().state, breaker.snapshot().retry_after_seconds) == ("open", 1)
        clock.now += 0.5
        snapshot = breaker.snapshot()
        assert (snapshot.state, snapshot.retry_after_seconds, snapshot.opened_at) == (
            "half-open",
            None,
            None,
        )
        assert breaker.state == "open", "nothing changed: only a request moves the breaker"

    asyncio.run(scenario())


@contextlib.contextmanager
def wall_clock_stepped(seconds: float) -> Iterator[None]:
    """The wall clock (``datetime.now``, as pybreaker and the breaker read it) moved by
    ``seconds``, as NTP steps it, and standing still there: the monotonic clock does not
    move either. (Left running, the real time between pybreaker's two readings counted
    as time the breaker had been open: a stall of a millisecond on a loaded machine let a
    call through 1 ms before the reset the property draws.)"""
    stepped = datetime.now(UTC) + timedelta(seconds=seconds)

    class Stepped(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return (
                stepped.astimezone(tz)
                if tz is not None
                else stepped.astimezone().replace(tzinfo=None)
            )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pybreaker, "datetime", Stepped)
        patch.setattr(resilience, "datetime", Stepped)
        yield


async def admitted(breaker: ServiceBreaker) -> bool:
    """Whether a call is let through now (a successful one: a trial closes the breaker)."""
    try:
        await succeed(breaker)
    except CircuitOpen:
        return False
    return True


def test_a_wall_clock_stepped_back_does_not_hold_the_breaker_open() -> None:
    """NTP stepping the clock back an hour while the breaker was open held it open for
    the hour too: every call to the service refused (503) long after its reset timeout,
    with ``Retry-After: 1``, while ``/admin/breakers`` said half-open."""

    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1, reset_timeout_seconds=0.05))
        await fail(breaker, DownstreamError("s"))
        with wall_clock_stepped(-3600):
            await asyncio.sleep(0.1)  # twice the reset timeout, on the real clocks
            assert breaker.snapshot().state == "half-open"
            assert await admitted(breaker)
        assert breaker.state == "closed"

    asyncio.run(scenario())


def test_a_wall_clock_stepped_forward_does_not_end_the_reset_timeout_early() -> None:
    async def scenario() -> None:
        breaker = ServiceBreaker("s", BreakerSettings(fail_max=1, reset_timeout_seconds=30))
        await fail(breaker, DownstreamError("s"))
        with wall_clock_stepped(3600), pytest.raises(CircuitOpen) as refused:
            await succeed(breaker)
        assert 29 <= int(refused.value.headers["retry-after"]) <= 30
        assert breaker.state == "open"

    asyncio.run(scenario())


@given(
    origin=st.floats(0, 1e12),
    step=st.floats(-1e8, 1e8),
    reset=st.floats(0.01, 3600),
    elapsed=st.floats(0, 7200),
)
# Up for ~30 years: the clock's float spacing (1/8192 s) rounds 0.99999 s to 1.0, so the
# breaker has 1.0 s left, not 1.00001 (Retry-After 1, not 2). The test expected the latter.
@example(origin=1e12, step=0.0, reset=2.0, elapsed=0.99999)
def test_the_reset_timeout_is_monotonic_time_whatever_the_clocks(
    origin: float, step: float, reset: float, elapsed: float
) -> None:
    """From a monotonic clock near 0 (a fresh machine) to one up for ages, with the wall
    clock stepped either way meanwhile: a call is a trial exactly once ``reset`` seconds
    of monotonic time have passed, and the snapshot and ``Retry-After`` agree."""
    assume(abs(elapsed - reset) > 1e-3)

    async def scenario() -> None:
        clock = Clock(origin)
        settings = BreakerSettings(fail_max=1, reset_timeout_seconds=reset)
        breaker = ServiceBreaker("s", settings, clock)
        await fail(breaker, DownstreamError("s"))
        with wall_clock_stepped(step):
            clock.now = origin + elapsed
            snapshot = breaker.snapshot()
            due = elapsed >= reset
            assert snapshot.state == ("half-open" if due else "open")
            if not due:
                # What the clock can tell apart: elapsed as the two readings differ.
                measured = (origin + elapsed) - origin
                assert snapshot.retry_after_seconds == max(1, math.ceil(reset - measured))
            assert await admitted(breaker) is due

    asyncio.run(scenario())
