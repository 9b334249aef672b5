"""The engagement lock on a real redis-server, and in memory: one holder, owner-only
release, a lease that a dead holder lets lapse, and fail closed when Redis is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.core.config import RedisSettings
from app.core.redis import SharedRedis, create_redis
from app.workflows.engagement_lock import (
    EngagementBusy,
    EngagementLockLost,
    EngagementLocks,
    EngagementLockUnavailable,
    MemoryEngagementLocks,
    RedisEngagementLocks,
)
from tests.redis_server import RedisServer, redis_binary

pytestmark = pytest.mark.integration


def on_two(
    server: RedisServer,
    scenario: Callable[[RedisEngagementLocks, RedisEngagementLocks, SharedRedis], Awaitable[None]],
    lease_seconds: float = 60.0,
) -> None:
    """Two gateways' locks (a client each) on one Redis; the third argument a raw client."""

    async def run() -> None:
        clients = [create_redis(RedisSettings(url=server.url)) for _ in range(3)]
        try:
            one, two = (RedisEngagementLocks(c, lease_seconds) for c in clients[:2])
            await scenario(one, two, clients[2])
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(run())


async def busy_with(locks: EngagementLocks, engagement: str) -> str:
    """The detail of the 409 ``locks`` answers for ``engagement``; fails if it is free."""
    with pytest.raises(EngagementBusy) as refused:
        async with locks.hold(engagement, "reopen"):
            pytest.fail("taken while held")
    assert refused.value.status_code == 409
    assert refused.value.headers == {"Retry-After": "1"}  # a run in progress ends by itself
    return refused.value.detail


def test_memory_one_holder_per_engagement_released_on_failure_too() -> None:
    async def scenario() -> None:
        locks = MemoryEngagementLocks()
        async with locks.hold("acme-2026", "close"):
            assert "A close of acme-2026 is running" in await busy_with(locks, "acme-2026")
            async with locks.hold("initech-2025", "reopen"):  # another engagement: free
                assert locks.running("initech-2025") == "reopen"
        with pytest.raises(RuntimeError):
            async with locks.hold("acme-2026", "close"):
                raise RuntimeError("a step failed")
        assert locks.running("acme-2026") is None
        async with locks.hold("acme-2026", "reopen"):
            assert locks.running("acme-2026") == "reopen"

    asyncio.run(scenario())


def test_redis_one_holder_across_gateways(redis_server: RedisServer) -> None:
    async def scenario(
        one: RedisEngagementLocks, two: RedisEngagementLocks, raw: SharedRedis
    ) -> None:
        async with one.hold("acme-2026", "close"):
            assert "A close of acme-2026 is running" in await busy_with(two, "acme-2026")
            assert "A close of acme-2026" in await busy_with(one, "acme-2026")  # its own too
            async with two.hold("initech-2025", "reopen"):  # another engagement: free
                held = await raw.get(RedisEngagementLocks.key("initech-2025"))
                assert held is not None
                assert held.startswith(b"reopen|")
        assert await raw.exists(RedisEngagementLocks.key("acme-2026")) == 0  # released
        with pytest.raises(RuntimeError):
            async with two.hold("acme-2026", "reopen"):
                raise RuntimeError("a step failed")
        async with one.hold("acme-2026", "reopen"):  # a failure released it too
            assert await raw.exists(RedisEngagementLocks.key("acme-2026")) == 1
        assert await raw.keys(RedisEngagementLocks.PREFIX + "*") == []

    on_two(redis_server, scenario)


def test_redis_a_run_longer_than_the_lease_keeps_its_lock(redis_server: RedisServer) -> None:
    """The lease is renewed every third of it while the holder runs."""

    async def scenario(
        one: RedisEngagementLocks, two: RedisEngagementLocks, raw: SharedRedis
    ) -> None:
        async with one.hold("acme-2026", "close"):
            for _ in range(4):  # 4 leases' worth of time, checked at each
                await asyncio.sleep(0.3)
                await busy_with(two, "acme-2026")

    on_two(redis_server, scenario, lease_seconds=0.3)


def test_redis_a_dead_holder_lets_its_lock_lapse_and_never_frees_another(
    redis_server: RedisServer,
) -> None:
    """A gateway that died mid-close left its lock (no renewal): it lapses with its
    lease. A holder whose lease lapsed does not release the lock someone took since."""

    async def scenario(
        one: RedisEngagementLocks, two: RedisEngagementLocks, raw: SharedRedis
    ) -> None:
        key = RedisEngagementLocks.key("acme-2026")
        await raw.set(key, b"close|dead-gateway-token", px=300)
        assert "A close of acme-2026" in await busy_with(two, "acme-2026")
        for _ in range(200):  # bounded: the lease is 0.3 s
            if not await raw.exists(key):
                break
            await asyncio.sleep(0.05)
        async with two.hold("acme-2026", "reopen"):
            # Our lease lapsed (a long pause) and another gateway took the lock...
            await raw.set(key, b"close|someone-else", px=60_000)
        # ...and leaving did not delete the other holder's lock.
        assert await raw.get(key) == b"close|someone-else"

    on_two(redis_server, scenario, lease_seconds=0.3)


def test_redis_unreachable_is_a_503_and_runs_nothing() -> None:
    async def scenario() -> None:
        client = create_redis(RedisSettings(url="redis://127.0.0.1:1/0"))
        ran = False
        try:
            with pytest.raises(EngagementLockUnavailable) as refused:
                async with RedisEngagementLocks(client, 60).hold("acme-2026", "close"):
                    ran = True
        finally:
            await client.aclose()
        assert not ran
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "1"}

    asyncio.run(scenario())


def test_an_unknown_holder_is_named_neutrally(redis_server: RedisServer) -> None:
    async def scenario(
        one: RedisEngagementLocks, two: RedisEngagementLocks, raw: SharedRedis
    ) -> None:
        await raw.set(RedisEngagementLocks.key("acme-2026"), b"<script>|x", px=60_000)
        detail = await busy_with(one, "acme-2026")
        assert "A close or reopen of acme-2026 is running" in detail
        assert "script" not in detail

    on_two(redis_server, scenario)


def test_redis_a_release_redis_missed_is_retried_until_it_answers(
    redis_server: RedisServer,
) -> None:
    """Redis stalled as a close ended (CLIENT PAUSE): the release failed and the
    engagement stayed locked (409 "a close is running") for the whole lease. The
    release is retried in the background, so it is free again within a moment."""

    async def scenario(
        one: RedisEngagementLocks, two: RedisEngagementLocks, raw: SharedRedis
    ) -> None:
        async with one.hold("acme-2026", "close"):
            await raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        deadline = asyncio.get_running_loop().time() + 10  # the lease is 60 s
        while True:
            try:
                async with two.hold("acme-2026", "reopen"):
                    return
            except (EngagementBusy, EngagementLockUnavailable):
                assert asyncio.get_running_loop().time() < deadline, "still locked"
                await asyncio.sleep(0.1)

    on_two(redis_server, scenario)


def test_redis_a_held_lock_is_confirmed_until_redis_loses_it(redis_server: RedisServer) -> None:
    """A holder confirms its lock before the steps that make a change final: confirmed
    (and its lease extended) while the key is its own; lost when the key vanished (data
    loss) or another holder took it since, so the step does not run."""

    async def scenario(
        one: RedisEngagementLocks, two: RedisEngagementLocks, raw: SharedRedis
    ) -> None:
        key = RedisEngagementLocks.key("acme-2026")
        async with one.hold("acme-2026", "close") as held:
            await raw.pexpire(key, 500)
            await held.confirm()
            assert await raw.pttl(key) > 500  # extended to the lease again
            await raw.delete(key)  # lost: evicted, or a restart without the write
            with pytest.raises(EngagementLockLost) as lost:
                await held.confirm()
            assert lost.value.status_code == 503
            assert lost.value.headers == {"Retry-After": "1"}
            async with two.hold("acme-2026", "reopen"):  # the gap a reopen ran in
                with pytest.raises(EngagementLockLost):
                    await held.confirm()
                assert (await raw.get(key) or b"").startswith(b"reopen|")
            assert await raw.exists(key) == 0

    on_two(redis_server, scenario)


def test_redis_a_lock_that_cannot_be_confirmed_is_lost() -> None:
    """Redis gone while a run holds the lock: the next confirmation fails (closed)."""
    server = RedisServer(redis_binary())
    server.start()

    async def scenario() -> None:
        client = create_redis(RedisSettings(url=server.url))
        try:
            locks = RedisEngagementLocks(client, 60.0)
            async with locks.hold("acme-2026", "close") as held:
                await held.confirm()
                server.kill()
                with pytest.raises(EngagementLockLost):
                    await held.confirm()
        finally:
            await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
