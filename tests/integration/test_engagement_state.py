"""The engagement state on a real redis-server: shared, atomic, fail closed, never half written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from app.authz.closed import NOT_SYNCED, ClosedFact, MemoryEngagementState
from app.authz.closed_redis import RedisEngagementState
from app.core.config import RedisSettings, ServiceSettings
from app.core.engagement_settings import EngagementStateSettings
from app.core.errors import ServiceUnavailable
from app.core.redis import create_redis
from app.domain.engagements import CloseRequest
from app.domain.identity import Identity
from app.downstream.client import ServiceRegistry
from app.downstream.propagation import CallContext, bind_call_context
from app.workflows.closing import CloseService
from app.workflows.engagement_lock import MemoryEngagementLocks
from app.workflows.idempotency import MemoryIdempotencyStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

SETTINGS = EngagementStateSettings(check_interval_seconds=60, startup_timeout_seconds=2)
FACT = ClosedFact("acme-2026", "close_saga", "corr-1", 1_800_000_000.0, "bob")


def on_two(
    server: RedisServer,
    scenario: Callable[[RedisEngagementState, RedisEngagementState], Awaitable[None]],
) -> None:
    async def run() -> None:
        clients = [create_redis(RedisSettings(url=server.url)) for _ in range(2)]
        one, two = (RedisEngagementState(c, SETTINGS) for c in clients)
        try:
            async with one.running(), two.running():
                await asyncio.wait_for(two.listening.wait(), 10)
                await scenario(one, two)
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(run())


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (the state has no event to wait on); bounded by the caller's wait_for."""
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0.01)


def test_a_close_is_pushed_to_the_other_process(redis_server: RedisServer) -> None:
    async def scenario(one: RedisEngagementState, two: RedisEngagementState) -> None:
        assert two.get("acme-2026") is None
        await one.close(FACT)
        assert one.get("acme-2026") == FACT  # its own snapshot at once
        # The other checks only every 60 s: seeing it now proves the notice arrived.
        await asyncio.wait_for(until(lambda: two.get("acme-2026") == FACT), 10)
        assert await two.reopen("acme-2026") == FACT
        await asyncio.wait_for(until(lambda: one.get("acme-2026") is None), 10)
        assert await one.reopen("acme-2026") is None  # already open: nothing to undo

    on_two(redis_server, scenario)


def test_reconciliation_only_adds_and_yields_to_a_concurrent_change(
    redis_server: RedisServer,
) -> None:
    async def scenario(one: RedisEngagementState, two: RedisEngagementState) -> None:
        await one.close(FACT)
        seen = await one.current_version()
        assert await one.add_reconciled(["acme-2026", "globex-cloud"], seen) == ["globex-cloud"]
        assert one.get("acme-2026") == FACT  # the saga's fact is kept, not overwritten
        assert one.get("globex-cloud").source == "engagements_service"  # type: ignore[union-attr]
        stale = await one.current_version()
        await two.reopen("globex-cloud")  # an admin reopens while a reconcile is under way
        assert await one.add_reconciled(["globex-cloud"], stale) == []
        await asyncio.wait_for(until(lambda: one.get("globex-cloud") is None), 10)

    on_two(redis_server, scenario)


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_redis_losing_its_data_reopens_nothing(redis_server: RedisServer, loss: str) -> None:
    """An audit found every closed engagement reopened on every gateway once Redis came
    back empty (the empty hash was read as the truth): the processes write back what
    they hold, with its origin, and no read in between saw the engagement open."""
    fast = EngagementStateSettings(check_interval_seconds=0.1, startup_timeout_seconds=2)

    async def run() -> None:
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        clients = [create_redis(RedisSettings(url=redis_server.url)) for _ in range(3)]
        one, two, late = (RedisEngagementState(c, fast) for c in clients)
        try:
            async with one.running(), two.running():
                await one.close(FACT)
                await asyncio.wait_for(until(lambda: two.get("acme-2026") == FACT), 10)
                if loss == "flushall":
                    await raw.flushall()
                else:
                    redis_server.stop()
                    redis_server.start()
                assert await raw.hgetall("{gw:engagements}:closed") == {}

                async def restored() -> None:
                    while not await raw.hget("{gw:engagements}:closed", "acme-2026"):
                        assert one.get("acme-2026") == two.get("acme-2026") == FACT
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(restored(), 20)
                async with late.running():  # a gateway started after the loss
                    assert late.get("acme-2026") == FACT  # the origin kept: bob, corr-1
        finally:
            for client in clients:
                await client.aclose()
            await raw.aclose()

    with capture_logs() as logs:
        asyncio.run(run())
    assert any(line["event"] == "engagement_state_restored" for line in logs)


def test_redis_down_keeps_the_snapshot_and_refuses_writes(redis_server: RedisServer) -> None:
    async def run() -> None:
        client = create_redis(RedisSettings(url=redis_server.url))
        state = RedisEngagementState(client, SETTINGS)
        async with state.running():
            await state.close(FACT)
            redis_server.stop()
            with pytest.raises(ServiceUnavailable) as info:
                await state.close(ClosedFact("globex-cloud", "close_saga"))
            assert info.value.headers == {"Retry-After": "1"}
            with pytest.raises(ServiceUnavailable):
                await state.reopen("acme-2026")
            assert state.get("acme-2026") == FACT  # fail closed: still closed here
            assert state.get("globex-cloud") is None  # nothing half written
            redis_server.start()
        await client.aclose()

    asyncio.run(run())


def test_a_gateway_started_while_redis_is_down_is_not_synced(redis_server: RedisServer) -> None:
    redis_server.stop()

    async def run() -> tuple[bool, Any]:
        client = create_redis(RedisSettings(url=redis_server.url))
        state = RedisEngagementState(client, SETTINGS)
        async with state.running():
            synced = state.synced
        await client.aclose()
        return synced, state.last_error

    synced, _ = asyncio.run(run())
    assert synced is False


def test_unreadable_shared_state_fails_closed_until_it_reads_again(
    redis_server: RedisServer,
) -> None:
    """The follow task caught Redis failures only: a version key that is no integer
    (written by hand or another program) ended it silently, and the snapshot froze
    while other gateways kept closing engagements. Now the state counts as not loaded
    (every engagement closed to writes, readiness not ready) until a read works again."""
    fast = EngagementStateSettings(check_interval_seconds=0.1, startup_timeout_seconds=2)
    version = "{" + fast.key_prefix + "}:version"

    async def run() -> None:
        client = create_redis(RedisSettings(url=redis_server.url))
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        state = RedisEngagementState(client, fast)
        try:
            async with state.running():
                await asyncio.wait_for(state.listening.wait(), 10)
                assert state.synced
                await raw.set(version, "not-a-number")
                await asyncio.wait_for(until(lambda: not state.synced), 10)
                assert state.decision_fact("acme-2026") == ClosedFact("acme-2026", NOT_SYNCED)
                assert state.last_error == "unreadable shared state: ValueError"
                await raw.set(version, "0")
                await asyncio.wait_for(until(lambda: state.synced), 10)  # still following
                await state.close(FACT)
                assert state.decision_fact("acme-2026") == FACT
                assert state.decision_fact("globex-cloud") is None
        finally:
            await client.aclose()
            await raw.aclose()

    asyncio.run(run())


def test_an_error_redis_py_raises_besides_its_own_is_an_outage_not_the_end(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client with an empty slot map (no node reachable at start)
    raises KeyError on subscribe, no RedisError: the follow task ended on it, and the
    state never followed (nor became ready) once the cluster came up."""
    fast = EngagementStateSettings(check_interval_seconds=0.1, startup_timeout_seconds=2)

    async def run() -> int:
        client = create_redis(RedisSettings(url=redis_server.url))
        real = client.pubsub
        calls = 0

        def flaky(**kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyError(15835)
            return real(**kwargs)

        monkeypatch.setattr(client, "pubsub", flaky)
        state = RedisEngagementState(client, fast)
        try:
            async with state.running():
                await asyncio.wait_for(state.listening.wait(), 10)
                assert state.synced
                assert state.last_error is None
        finally:
            await client.aclose()
        return calls

    assert asyncio.run(run()) == 2


def test_a_gateway_started_on_unreadable_shared_state_is_not_synced(
    redis_server: RedisServer,
) -> None:
    """The start-up read let the same error through: the lifespan failed."""
    version = "{" + SETTINGS.key_prefix + "}:version"

    async def run() -> tuple[bool, str | None]:
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        await raw.set(version, "not-a-number")
        client = create_redis(RedisSettings(url=redis_server.url))
        state = RedisEngagementState(client, SETTINGS)
        try:
            async with state.running():
                return state.synced, state.last_error
        finally:
            await raw.delete(version)
            await client.aclose()
            await raw.aclose()

    assert asyncio.run(run()) == (False, "unreadable shared state: ValueError")


def test_a_closed_name_that_is_not_utf8_does_not_stop_the_read(
    redis_server: RedisServer,
) -> None:
    closed = "{" + SETTINGS.key_prefix + "}:closed"

    async def scenario(one: RedisEngagementState, two: RedisEngagementState) -> None:
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await raw.hset(closed, b"\xff\xfe", FACT.encode())
            await one.close(FACT)
            await asyncio.wait_for(until(lambda: two.get("acme-2026") == FACT), 10)
            assert two.synced
            assert one.synced
        finally:
            await raw.hdel(closed, b"\xff\xfe")
            await raw.aclose()

    on_two(redis_server, scenario)


def test_an_unreadable_record_still_counts_as_closed() -> None:
    fact = ClosedFact.decode("acme-2026", b"{not json")
    assert fact.source == "unreadable_record"
    assert ClosedFact.decode("acme-2026", FACT.encode()) == FACT


@pytest.mark.parametrize("at", ["1e400", "-1e400", "NaN", "-5", "1e20", "253402300800"])
def test_a_record_with_a_time_no_clock_gives_is_closed_without_one(at: str) -> None:
    # Such a time raised OverflowError (or ValueError) where the decision log formats it,
    # so every decision about the engagement was a 500 instead of a 403.
    raw = f'{{"source":"close_saga","ref":"c1","by":"alice","at":{at}}}'
    fact = ClosedFact.decode("acme-2026", raw.encode())
    assert (fact.source, fact.ref, fact.by, fact.at) == ("close_saga", "c1", "alice", 0.0)
    assert fact.log_fields() == {"source": "close_saga", "ref": "c1", "by": "alice"}
    assert "at " not in fact.describe()


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_stored_time_is_formatted_or_dropped(at: float) -> None:
    raw = json.dumps({"source": "close_saga", "at": at})  # json writes inf and nan too
    fact = ClosedFact.decode("acme-2026", raw)
    assert fact.source == "close_saga"
    fields = fact.log_fields()  # never raises
    fact.describe()
    assert ("at" in fields) == (0.0 < at < 253402300800.0)


def test_memory_state_reconciles_only_when_nothing_changed() -> None:
    async def run() -> None:
        state = MemoryEngagementState(synced=False)
        assert await state.add_reconciled(["acme-2026"], state.version + 1) == []
        assert await state.add_reconciled(["acme-2026", "acme-2026"], state.version) == [
            "acme-2026"
        ]
        assert state.get("acme-2026").source == "engagements_service"  # type: ignore[union-attr]
        assert (await state.reopen("acme-2026")) is not None
        assert state.get("acme-2026") is None

    asyncio.run(run())


def test_until_synced_every_engagement_is_decided_closed_then_only_the_closed_ones() -> None:
    state = MemoryEngagementState(synced=False)
    fact = state.decision_fact("globex-cloud")
    assert fact is not None
    assert fact.source == NOT_SYNCED
    assert "not loaded yet" in fact.describe()
    assert state.decision_fact("*") is None  # the gateway-wide domain is no engagement
    assert state.get("globex-cloud") is None  # the snapshot itself holds nothing
    state.mark_synced()
    assert state.decision_fact("globex-cloud") is None
    asyncio.run(state.close(FACT))
    assert state.decision_fact("acme-2026") == FACT


def test_an_undone_close_s_fact_that_redis_applies_late_is_taken_back(
    redis_server: RedisServer,
) -> None:
    """Redis stalled past the client's timeout: the close saga got a 503 and undid its
    steps, but Redis ran the queued write when it resumed; the engagement stayed closed
    on every gateway, in the name of the undone close (h39)."""
    import os
    import signal

    assert redis_server.proc is not None
    pid = redis_server.proc.pid

    async def scenario(one: RedisEngagementState, two: RedisEngagementState) -> None:
        # One close first: Redis then knows the script (an unknown one would not run late).
        await one.close(ClosedFact("globex-cloud", "close_saga", "corr-0", 1_800_000_000.0))
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ServiceUnavailable):
                await one.close(FACT, undone_if_unconfirmed=True)
        finally:
            os.kill(pid, signal.SIGCONT)
        probe = redis.asyncio.Redis(port=redis_server.port)
        try:
            key = "{" + SETTINGS.key_prefix + "}:closed"

            async def gone() -> bool:
                return not await probe.hexists(key, "acme-2026")

            for _ in range(200):  # 10 s at most
                if await gone():
                    break
                await asyncio.sleep(0.05)
            assert await gone(), "the unconfirmed fact stayed"
            await asyncio.sleep(0.5)  # a write applied later still is taken back...
            assert await gone()
        finally:
            await probe.aclose()
        await asyncio.wait_for(until(lambda: two.get("acme-2026") is None), 10)
        # ...and a fact that is not that one (a later close's) is left alone.
        later = ClosedFact("acme-2026", "close_saga", "corr-2", 1_800_000_100.0, "bob")
        await one.close(later)
        await asyncio.sleep(0.5)
        assert one.get("acme-2026") == later

    with capture_logs() as logs:
        on_two(redis_server, scenario)
    withdrawn = [line for line in logs if line["event"] == "engagement_closed_fact_withdrawn"]
    assert [line["engagement"] for line in withdrawn] == ["acme-2026"]


def test_withdraw_takes_back_only_the_exact_fact_on_every_gateway(
    redis_server: RedisServer,
) -> None:
    """The undo of a close cut short mid-publish: its fact goes, another close's stays."""

    async def scenario(one: RedisEngagementState, two: RedisEngagementState) -> None:
        await one.close(FACT)
        await asyncio.wait_for(until(lambda: two.get("acme-2026") == FACT), 10)
        await one.withdraw(FACT)
        assert one.get("acme-2026") is None
        await asyncio.wait_for(until(lambda: two.get("acme-2026") is None), 10)
        later = ClosedFact("acme-2026", "close_saga", "corr-2", 1_800_000_100.0, "bob")
        await one.close(later)
        await one.withdraw(FACT)  # not this close's fact any more: left alone
        assert one.get("acme-2026") == later

    on_two(redis_server, scenario)


def standalone(
    server: RedisServer, scenario: Callable[[list[RedisEngagementState]], Awaitable[None]]
) -> None:
    """Two gateways' states, loaded once and not following: what each hears is the test's."""

    async def run() -> None:
        clients = [create_redis(RedisSettings(url=server.url)) for _ in range(2)]
        states = [RedisEngagementState(c, SETTINGS) for c in clients]
        try:
            for state in states:
                await state.refresh()
            await scenario(states)
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(run())


def hold_first_read(state: RedisEngagementState) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold ``state``'s next read after Redis answered it: (answered, resume)."""
    answered, resume = asyncio.Event(), asyncio.Event()
    read = state._read_script

    async def held(**kwargs: Any) -> Any:
        reply = await read(**kwargs)
        if not answered.is_set():
            answered.set()
            await resume.wait()
        return reply

    state._read_script = held  # type: ignore[assignment]  # a script's call, held
    return answered, resume


@pytest.mark.parametrize("write", ["close", "reopen"])
def test_a_read_answered_before_a_write_here_does_not_undo_it(
    redis_server: RedisServer, write: str
) -> None:
    """The follow task's read, answered by Redis before this gateway's close (or reopen)
    and handled after it, replaced the snapshot with the older state: the close just
    reported done was open here (writes allowed) until the next read."""

    async def scenario(states: list[RedisEngagementState]) -> None:
        state = states[0]
        if write == "reopen":
            await state.close(FACT)
        answered, resume = hold_first_read(state)
        refresh = asyncio.create_task(state.refresh())
        await asyncio.wait_for(answered.wait(), 10)
        if write == "close":
            await state.close(FACT)
        else:
            assert await state.reopen("acme-2026") == FACT
        resume.set()
        await asyncio.wait_for(refresh, 10)
        assert state.get("acme-2026") == (FACT if write == "close" else None)

    standalone(redis_server, scenario)


def test_a_write_here_does_not_hide_a_change_whose_notice_was_lost(
    redis_server: RedisServer,
) -> None:
    """A close here took Redis's version as seen, though another gateway's change before
    it was never read (its notice lost): the version check, there to catch lost notices,
    then found nothing to read, and that close stayed open here until the next change."""

    async def scenario(states: list[RedisEngagementState]) -> None:
        one, two = states
        await one.close(FACT)  # two does not follow: the notice is lost
        other = ClosedFact("initech-2025", "close_saga", "corr-2", 1_800_000_000.0, "bob")
        await two.close(other)
        assert await two._changed()
        await two.refresh()
        assert two.closed() == {"acme-2026": FACT, "initech-2025": other}

    standalone(redis_server, scenario)


def _close_services() -> ServiceRegistry:
    """The three services a close calls, each answering its step's success."""

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        engagement = {"id": "acme-2026", "client": "Acme", "kind": "pentest"}
        if path.endswith("/findings/freeze"):
            return httpx.Response(200, json={"count": 2})
        if path.endswith("/reports"):
            report = {"id": "R-0009", "engagement_id": "acme-2026", "kind": "final"}
            return httpx.Response(201, json={**report, "status": "ready"})
        status = "closed" if path.endswith("/close") else "active"
        return httpx.Response(200, json={**engagement, "status": status})

    settings = {
        name: ServiceSettings.model_validate({"url": f"http://{name}.internal"})
        for name in ("findings", "reports", "engagements")
    }
    return ServiceRegistry(settings, httpx.MockTransport(handler), keys={})


def test_a_close_retried_on_a_gateway_that_has_not_heard_of_it_is_replayed_not_a_409(
    redis_server: RedisServer,
) -> None:
    """race33: a close's retry reaching another gateway before that gateway read the
    closed fact got ``409 ... reopened after this close``, though nothing reopened it;
    the answer is now taken from the shared state, not the stale snapshot."""

    async def scenario(states: list[RedisEngagementState]) -> None:
        one, two = states
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))
        services = _close_services()
        store = MemoryIdempotencyStore(ttl_seconds=60)  # the key's record, as on Redis
        body = CloseRequest(reason="Retest complete; client signed off.")
        try:
            first, replayed = await CloseService(
                services, store, one, MemoryEngagementLocks()
            ).close("acme-2026", body, "close-0001", "bob")
            assert replayed is False
            assert two.get("acme-2026") is None  # not followed: it has not heard yet
            again, replayed = await CloseService(
                services, store, two, MemoryEngagementLocks()
            ).close("acme-2026", body, "close-0001", "bob")
        finally:
            await services.aclose()
        assert (again, replayed) == (first, True)
        assert two.get("acme-2026") is not None  # and its snapshot has it now

    standalone(redis_server, scenario)


def test_confirmed_reads_the_shared_state_and_keeps_the_snapshot_when_redis_is_gone(
    redis_server: RedisServer,
) -> None:
    async def scenario(states: list[RedisEngagementState]) -> None:
        one, two = states
        await one.close(FACT)
        assert two.get("acme-2026") is None
        assert await two.confirmed("acme-2026") == FACT
        redis_server.stop()
        try:
            assert await two.confirmed("acme-2026") == FACT  # the snapshot's, no error
        finally:
            redis_server.start()

    standalone(redis_server, scenario)


def test_an_older_read_handled_last_does_not_undo_a_newer_one(redis_server: RedisServer) -> None:
    """rev33: ``confirmed`` (a replayed close's read) and the follow task's read ran at
    once. When the one Redis answered first was handled last, it put the older state
    back: a close another gateway made between them was open here (writes allowed)
    until the next version check. Reads of one process now run one at a time."""

    async def scenario(states: list[RedisEngagementState]) -> None:
        one, two = states
        answered, resume = hold_first_read(two)
        confirm = asyncio.create_task(two.confirmed("acme-2026"))
        await asyncio.wait_for(answered.wait(), 10)  # Redis answered: not closed yet
        await one.close(FACT)
        follow = asyncio.create_task(two.refresh())  # the close's notice, heard
        # Without the fix this read ends here; with it, it waits for the held one.
        await asyncio.wait([follow], timeout=2)
        resume.set()
        await asyncio.wait_for(asyncio.gather(confirm, follow), 10)
        assert two.get("acme-2026") == FACT

    standalone(redis_server, scenario)
