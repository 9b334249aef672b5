"""Nonce stores: accept once within the TTL, bounded memory, Redis fails closed."""

from __future__ import annotations

import asyncio

import pytest

from app.authn.nonces import (
    MemoryNonceStore,
    NonceStoreUnavailable,
    RedisNonceStore,
    create_nonce_store,
)
from app.core.redis import create_redis
from tests.conftest import make_settings
from tests.redis_server import RedisServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_accepts_a_pair_once_until_it_expires() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(capacity=10, clock=clock)

    async def scenario() -> list[bool]:
        results = [await store.claim("k1", "n1", 300), await store.claim("k1", "n1", 300)]
        results.append(await store.claim("k2", "n1", 300))  # another key's nonce space
        clock.now += 299
        results.append(await store.claim("k1", "n1", 300))
        clock.now += 1
        results.append(await store.claim("k1", "n1", 300))
        return results

    assert asyncio.run(scenario()) == [True, False, True, False, True]


def test_full_memory_store_refuses_rather_than_evicting_an_unexpired_nonce() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(capacity=2, clock=clock)

    async def scenario() -> None:
        assert await store.claim("k1", "a", 10)
        assert await store.claim("k1", "b", 100)
        with pytest.raises(NonceStoreUnavailable) as caught:
            await store.claim("k1", "c", 10)
        assert caught.value.status_code == 503
        assert caught.value.headers["Retry-After"] == "1"
        assert not await store.claim("k1", "a", 10), "a is still remembered"
        assert (await store.check())[0] is False
        clock.now += 10  # "a" expires, making room
        assert await store.claim("k1", "c", 10)
        assert not await store.claim("k1", "b", 100)
        assert len(store) == 2

    asyncio.run(scenario())


def test_store_is_chosen_by_the_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert isinstance(create_nonce_store(make_settings()), MemoryNonceStore)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert isinstance(create_nonce_store(make_settings()), RedisNonceStore)
    explicit = make_settings(redis={"url": "redis://127.0.0.1:2/0"})
    assert explicit.redis.url == "redis://127.0.0.1:2/0"


def test_redis_key_keeps_key_id_and_nonce_apart() -> None:
    assert RedisNonceStore.key("a:b", "c") != RedisNonceStore.key("a", "b:c")


def test_redis_store_claims_once_with_a_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[bool, bool, int]:
        client = create_redis(redis_server.url)
        store = RedisNonceStore(client)
        try:
            first = await store.claim("k1", "n1", 300)
            second = await store.claim("k1", "n1", 300)
            ttl = await client.ttl(RedisNonceStore.key("k1", "n1"))
            return first, second, int(ttl)
        finally:
            await store.aclose()

    first, second, ttl = asyncio.run(scenario())
    assert (first, second) == (True, False)
    assert 0 < ttl <= 300


def test_redis_store_fails_closed_when_redis_is_down_and_recovers(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        store = RedisNonceStore(create_redis(redis_server.url))
        try:
            assert await store.claim("k1", "before", 60)
            redis_server.stop()
            with pytest.raises(NonceStoreUnavailable):
                await store.claim("k1", "during", 60)
            assert (await store.check())[0] is False
            redis_server.start()
            assert await store.claim("k1", "after", 60)
            assert (await store.check()) == (True, "redis")
        finally:
            await store.aclose()

    asyncio.run(scenario())
