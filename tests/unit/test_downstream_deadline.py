"""The request's downstream deadline: arithmetic, the client's attempts, the saga's undo."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from app.core.config import ServiceSettings, Settings
from app.core.errors import DownstreamError, DownstreamTimeout, GatewayError
from app.domain.identity import Identity
from app.downstream.client import DownstreamClient
from app.downstream.deadline import Deadline, current, lifted, within
from app.downstream.http1 import Http1Transport
from app.downstream.propagation import CallContext, bind_call_context
from app.downstream.resilience import PoolExhausted
from app.workflows.saga import Saga, Step

SETTINGS = ServiceSettings.model_validate(
    {"url": "http://findings.internal", "retry": {"backoff_initial_seconds": 0.001}}
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def run_calls(handler: Handler, scenario: Callable[[DownstreamClient], Awaitable[Any]]) -> Any:
    """``scenario(client)`` with a client whose transport is ``handler``."""

    async def main() -> Any:
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))
        client = DownstreamClient("findings", SETTINGS, httpx.MockTransport(handler))
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


# --- the deadline itself (fake clock) --------------------------------------------------------


@given(
    seconds=st.floats(min_value=0.001, max_value=3600),
    steps=st.lists(st.floats(min_value=0, max_value=1000), max_size=20),
)
def test_remaining_never_goes_below_zero_nor_up(seconds: float, steps: list[float]) -> None:
    clock = FakeClock()
    deadline = Deadline.after(seconds, clock)
    before = deadline.remaining()
    assert before == pytest.approx(seconds)
    for step in steps:
        clock.now += step
        left = deadline.remaining()
        assert 0.0 <= left <= before
        assert deadline.allows_wait(0.0) == (left > 0)
        before = left


@given(outer=st.floats(min_value=0.001, max_value=3600), inner=st.floats(0.001, 3600))
def test_a_nested_block_never_extends_the_deadline(outer: float, inner: float) -> None:
    clock = FakeClock()
    with within(outer, clock) as first, within(inner, clock) as second:
        assert first is not None
        assert second is not None
        assert second.ends_at == min(first.ends_at, clock.now + inner)
        assert current() is second
        with lifted():
            assert current() is None
        assert current() is second
    assert current() is None


def test_no_seconds_leaves_the_deadline_as_it_was() -> None:
    with within(None) as nothing:
        assert nothing is None
        assert current() is None


# --- the client's attempts ---------------------------------------------------------------------


def test_an_attempt_the_deadline_passes_is_cut_with_a_504_and_not_retried() -> None:
    """A service that never answers held the caller for every attempt's read timeout."""
    seen: list[httpx.Request] = []

    async def hangs(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await asyncio.sleep(5)  # bounded: without the deadline this test fails, not hangs
        raise httpx.ReadTimeout("no answer", request=request)

    async def scenario(client: DownstreamClient) -> GatewayError:
        with within(0.05), pytest.raises(DownstreamTimeout) as raised:
            await client.call("GET", "/x")
        return raised.value

    error = run_calls(hangs, scenario)
    assert (error.status_code, error.code, len(seen)) == (504, "gateway_timeout", 1)
    assert "deadline" in error.detail


def test_a_deadline_already_passed_sends_nothing_and_leaves_the_breaker_alone() -> None:
    seen: list[httpx.Request] = []
    clock = FakeClock()

    async def answers(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async def scenario(client: DownstreamClient) -> tuple[int, int]:
        with within(1.0, clock):
            clock.now += 1.0
            with pytest.raises(DownstreamTimeout) as raised:
                await client.call("GET", "/x")
        return raised.value.status_code, client.breaker.snapshot().failures

    assert run_calls(answers, scenario) == (504, 0)
    assert seen == []


def test_no_retry_starts_once_its_wait_would_reach_the_deadline() -> None:
    """The service answers 503 as the deadline passes: the 503 is the answer, no retry."""
    seen: list[httpx.Request] = []
    clock = FakeClock()

    async def slow_503(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        clock.now += 10.0  # the attempt took the whole budget
        return httpx.Response(503)

    async def scenario(client: DownstreamClient) -> str:
        with within(10.0, clock), pytest.raises(DownstreamError) as raised:
            await client.call("GET", "/x")
        return raised.value.code

    assert run_calls(slow_503, scenario) == "bad_gateway"
    assert len(seen) == 1, "without the deadline the retry policy sends 3 attempts"


def test_retries_still_run_inside_the_deadline() -> None:
    seen: list[httpx.Request] = []
    clock = FakeClock()

    async def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        clock.now += 1.0
        return httpx.Response(503 if len(seen) < 3 else 200, json={})

    async def scenario(client: DownstreamClient) -> int:
        with within(30.0, clock):
            return (await client.call("GET", "/x")).status_code

    assert run_calls(flaky, scenario) == 200
    assert len(seen) == 3


# --- the saga's undo ---------------------------------------------------------------------------


def test_a_saga_that_ran_out_of_time_still_undoes_its_steps() -> None:
    """Step b fails as the deadline passes; the undo of step a still reaches its service."""
    seen: list[str] = []
    clock = FakeClock()

    async def service(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={})

    async def scenario(client: DownstreamClient) -> GatewayError:
        async def do_a() -> None:
            await client.call("POST", "/freeze", json={}, idempotency_key="k-0001:freeze")

        async def undo_a(_: object) -> None:
            await client.call("POST", "/unfreeze", json={}, idempotency_key="k-0001:undo")

        async def do_b() -> None:
            clock.now += 60.0  # the step's service took the rest of the budget
            raise DownstreamTimeout("reports", "The reports service timed out.")

        saga = Saga("demo", [Step("a", "findings", do_a, undo_a), Step("b", "reports", do_b)])
        with within(30.0, clock), pytest.raises(GatewayError) as raised:
            await saga.run()
        return raised.value

    error = run_calls(service, scenario)
    assert error.status_code == 504
    assert "earlier steps were undone" in error.detail
    assert seen == ["POST /freeze", "POST /unfreeze"]


# --- settings ----------------------------------------------------------------------------------


def test_a_deadline_below_one_attempt_is_refused_naming_the_service() -> None:
    services = {"findings": {"url": "http://f.internal", "read_timeout": 10}}
    with pytest.raises(ValueError, match=r"services\.findings .*= 11"):
        Settings(services=services, orchestration={"downstream_deadline_seconds": 10})
    fits = Settings(services=services, orchestration={"downstream_deadline_seconds": 11})
    assert fits.orchestration.downstream_deadline_seconds == 11


# --- the native transport's pool wait ----------------------------------------------------------


def test_a_pool_wait_the_deadline_cut_is_a_504_that_leaves_the_breaker_alone() -> None:
    """The native transport cuts a pool wait at the deadline: nothing was sent (our own
    saturation), so the service's breaker counts no failure and a saga does not undo a
    step that never reached its service, as for any pool timeout."""
    clock = FakeClock()

    async def scenario() -> tuple[GatewayError, int, list[dict[str, Any]]]:
        settings = ServiceSettings(url="http://127.0.0.1:9", max_connections=1, pool_timeout=0.01)
        client = DownstreamClient("findings", settings)  # the native transport
        transport = client._transport
        assert isinstance(transport, Http1Transport)
        await transport._slots.acquire()  # the only connection is busy
        real_acquire = transport._slots.acquire

        async def acquire_as_the_deadline_passes() -> bool:
            clock.now += 10.0  # the wait for a free connection outlasts the deadline
            return await real_acquire()

        transport._slots.acquire = acquire_as_the_deadline_passes  # type: ignore[method-assign]
        try:
            with capture_logs() as logs, within(5.0, clock), pytest.raises(GatewayError) as cut:
                await client.call("GET", "/x")
        finally:
            transport._slots.release()
            await client.aclose()
        return cut.value, client.breaker.snapshot().failures, logs

    error, failures, logs = asyncio.run(scenario())
    assert (error.status_code, error.code) == (504, "gateway_timeout")
    assert "deadline" in error.detail
    assert failures == 0, "nothing was sent: not the service's failure"
    assert isinstance(error, PoolExhausted), "nothing sent: not a step a saga must undo"
    cuts = [e for e in logs if e.get("event") == "downstream_deadline"]
    assert [(e["attempt"], e["sent"]) for e in cuts] == [(1, False)]


@given(seconds=st.floats(min_value=0.001, max_value=3600))
def test_one_within_entered_twice_is_refused_and_leaves_no_deadline_behind(
    seconds: float,
) -> None:
    """A ``within`` holds one token: entered again it would lose the outer one, and the
    block's deadline would outlive it. The generator it replaced refused re-entry too."""
    clock = FakeClock()
    bound = within(seconds, clock)
    with bound:
        with pytest.raises(RuntimeError), bound:
            pass
        assert current() is not None
    assert current() is None
