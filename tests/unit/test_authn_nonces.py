"""Nonce stores: accept once within the TTL, bounded memory, Redis fails closed."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Sized
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from structlog.testing import capture_logs

from app.authn import nonces as nonces_module
from app.authn.nonces import (
    Claim,
    MemoryNonceStore,
    NonceKeys,
    NonceStoreUnavailable,
    RedisNonceStore,
    create_nonce_store,
)
from app.core.config import RedisSettings
from app.core.redis import ERROR_TEXT_LIMIT, create_redis, error_text
from tests.conftest import make_settings
from tests.redis_server import RedisServer, redis_binary

CLAIMED, REPLAYED, BEFORE_FENCE = Claim.CLAIMED, Claim.REPLAYED, Claim.BEFORE_FENCE


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CREATED = 1_790_000_000


def memory_store(capacity: int, clock: FakeClock) -> MemoryNonceStore:
    return MemoryNonceStore(capacity=capacity, clock=clock, fence=CREATED)


def test_memory_store_accepts_a_pair_once_until_it_expires() -> None:
    clock = FakeClock()
    store = memory_store(10, clock)

    async def scenario() -> list[Claim]:
        results = [await store.claim("k1", "n1", CREATED, 300)]
        results.append(await store.claim("k1", "n1", CREATED, 300))
        results.append(await store.claim("k2", "n1", CREATED, 300))  # another key's nonce space
        clock.now += 299
        results.append(await store.claim("k1", "n1", CREATED, 300))
        clock.now += 1
        results.append(await store.claim("k1", "n1", CREATED, 300))
        return results

    assert asyncio.run(scenario()) == [CLAIMED, REPLAYED, CLAIMED, REPLAYED, CLAIMED]


def test_full_memory_store_refuses_rather_than_evicting_an_unexpired_nonce() -> None:
    clock = FakeClock()
    store = memory_store(2, clock)

    async def claim(nonce: str, ttl: int) -> Claim:
        return await store.claim("k1", nonce, CREATED, ttl)

    async def scenario() -> None:
        assert await claim("a", 10) is CLAIMED
        assert await claim("b", 100) is CLAIMED
        with pytest.raises(NonceStoreUnavailable) as caught:
            await claim("c", 10)
        assert caught.value.status_code == 503
        assert caught.value.headers["Retry-After"] == "1"
        assert await claim("a", 10) is REPLAYED, "a is still remembered"
        assert (await store.check())[0] is False
        clock.now += 10  # "a" expires, making room
        assert await claim("c", 10) is CLAIMED
        assert await claim("b", 100) is REPLAYED
        assert len(store) == 2

    asyncio.run(scenario())


class ReferenceStore:
    """The memory store's contract, written plainly: unexpired pairs, a hard capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.expiry: dict[tuple[str, str], float] = {}

    def claim(self, pair: tuple[str, str], now: float, ttl: int) -> str:
        live = {p: t for p, t in self.expiry.items() if t > now}
        if pair in live:
            return "replayed"
        if len(live) >= self.capacity:
            return "full"
        self.expiry = {**live, pair: now + ttl}
        return "claimed"


def assert_contract(
    start: float, capacity: int, steps: list[tuple[float, tuple[str, str], int]]
) -> None:
    """The memory store answers each step as ``ReferenceStore`` does."""
    clock = FakeClock()
    clock.now = start
    store = memory_store(capacity, clock)
    reference = ReferenceStore(capacity)

    async def outcome(pair: tuple[str, str], ttl: int) -> str:
        try:
            return str(await store.claim(*pair, CREATED, ttl))
        except NonceStoreUnavailable:
            return "full"

    async def scenario() -> None:
        for advance, pair, ttl in steps:
            clock.now += advance
            assert await outcome(pair, ttl) == reference.claim(pair, clock.now, ttl)

    asyncio.run(scenario())


step = st.tuples(
    st.one_of(st.floats(0, 2, allow_nan=False), st.floats(0, 700, allow_nan=False)),
    st.tuples(st.sampled_from(["k1", "k2"]), st.sampled_from(["a", "b", "c", "d"])),
    st.integers(1, 600),
)


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(0, 1e9, allow_nan=False),
    capacity=st.integers(1, 5),
    steps=st.lists(step, max_size=40),
)
def test_memory_store_answers_as_the_plain_contract_on_any_clock(
    start: float, capacity: int, steps: list[tuple[float, tuple[str, str], int]]
) -> None:
    """Replays, expiry and capacity exactly as a plain dict would, from a clock at 0 or 1e9."""
    assert_contract(start, capacity, steps)


def test_memory_store_keeps_its_nonces_out_of_the_garbage_collectors_way() -> None:
    """No container that grows with the nonces is GC-tracked: a full collection (on the
    event loop) never walks them, however many are held (bench/micro_gc_pause.py)."""
    clock = FakeClock()
    store = memory_store(100_000, clock)

    async def fill() -> None:
        for i in range(5000):
            clock.now += 0.001
            await store.claim("k1", f"nonce-{i}", CREATED, 300)

    asyncio.run(fill())
    gc.collect()
    grown = [v for v in vars(store).values() if isinstance(v, Sized) and len(v) >= 5]
    assert grown, "the store holds its nonces somewhere"
    assert not [v for v in grown if gc.is_tracked(v)]


def test_memory_store_refuses_signatures_created_before_it() -> None:
    store = MemoryNonceStore(capacity=10, fence=CREATED + 0.25)

    async def scenario() -> list[Claim]:
        return [
            await store.claim("k1", "old", CREATED - 1, 300),
            await store.claim("k1", "same-second", CREATED, 300),
            await store.claim("k1", "new", CREATED + 1, 300),
            await store.claim("k1", "old", CREATED + 1, 300),
        ]

    assert asyncio.run(scenario()) == [BEFORE_FENCE, BEFORE_FENCE, CLAIMED, CLAIMED]
    assert len(store) == 2, "a refused signature does not consume its nonce"


def test_memory_store_fence_defaults_to_its_creation_time() -> None:
    before = time.time()
    store = MemoryNonceStore(capacity=1)
    after = time.time()
    assert before <= store.fence <= after
    assert asyncio.run(store.open()) == store.fence
    assert asyncio.run(store.claim("k1", "n1", math.floor(before) - 1, 300)) is BEFORE_FENCE
    assert asyncio.run(store.claim("k1", "n1", math.ceil(after), 300)) is CLAIMED


def test_memory_store_holds_a_nonce_while_a_stepped_back_wall_clock_is_before_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The TTL runs on the clock the signature's window is judged by: the wall clock.
    It ran on the monotonic clock, so when NTP stepped the wall clock back by more than
    the 2 s tolerance while a nonce was held, the nonce expired while its signature was
    acceptable again on the stepped-back clock, and one replay of it was accepted."""
    real, offset = time.time, [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    store = MemoryNonceStore(capacity=10)
    created = math.ceil(store.fence)

    async def scenario() -> list[Claim]:
        first = await store.claim("k1", "n1", created, 1)
        await asyncio.sleep(1.2)  # the TTL has passed on the monotonic clock
        offset[0] = -1.5  # NTP steps the wall clock back: the nonce's end is ahead again
        return [first, await store.claim("k1", "n1", created, 1)]

    assert asyncio.run(scenario()) == [CLAIMED, REPLAYED]


def test_store_is_chosen_by_the_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert isinstance(create_nonce_store(make_settings()), MemoryNonceStore)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert isinstance(create_nonce_store(make_settings()), RedisNonceStore)
    explicit = make_settings(redis={"url": "redis://127.0.0.1:2/0"})
    assert explicit.redis.url == "redis://127.0.0.1:2/0"


def test_redis_key_keeps_key_id_and_nonce_apart() -> None:
    assert RedisNonceStore.key("a:b", "c") != RedisNonceStore.key("a", "b:c")
    assert not RedisNonceStore.FENCE_KEY.startswith(RedisNonceStore.PREFIX)


@asynccontextmanager
async def redis_store(
    server: RedisServer, socket_timeout: float = 0.5
) -> AsyncIterator[tuple[RedisNonceStore, Redis]]:
    """A store and a second, independent client on the same Redis (to look and to break)."""
    store = RedisNonceStore(
        create_redis(RedisSettings(url=server.url, socket_timeout=socket_timeout))
    )
    probe = create_redis(RedisSettings(url=server.url))
    try:
        yield store, probe
    finally:
        await store.aclose()
        await probe.aclose()


async def set_fence(client: Redis, seconds: str) -> None:
    """Stamp a fence as this Redis process's own (another process's would be a reset)."""
    run_id = (await client.info("server"))["run_id"]
    replid = (await client.info("replication"))["master_replid"]
    await client.set(RedisNonceStore.FENCE_KEY, f"{seconds} {run_id}:{replid}")


async def read_fence(client: Redis) -> float:
    value = await client.get(RedisNonceStore.FENCE_KEY)
    return float(value.split()[0])


async def redis_now(client: Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1_000_000


def test_redis_store_claims_once_with_a_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[Claim, Claim, int]:
        async with redis_store(redis_server) as (store, probe):
            created = int(await redis_now(probe)) + 1  # clears the fence this claim sets
            first = await store.claim("k1", "n1", created, 300)
            second = await store.claim("k1", "n1", created, 300)
            ttl = await probe.ttl(RedisNonceStore.key("k1", "n1"))
            return first, second, int(ttl)

    first, second, ttl = asyncio.run(scenario())
    assert (first, second) == (CLAIMED, REPLAYED)
    assert 0 < ttl <= 300


def test_redis_store_holds_a_nonce_until_its_end_on_redis_s_clock_capped(
    redis_server: RedisServer,
) -> None:
    """``until`` on Redis's clock when that is longer than the gateway's TTL (a gateway
    ahead of Redis), never past two windows plus the tolerance (a skew of 10 s: 23 s)."""

    async def scenario() -> list[int]:
        client = create_redis(RedisSettings(url=redis_server.url))
        store = RedisNonceStore(client, max_skew_seconds=10)
        try:
            now = await redis_now(client)
            created = math.ceil(now) + 1  # after the fence this first claim sets
            ttls = []
            for nonce, ttl, until in [
                ("a", 5, None),
                ("b", 5, created + 15),
                ("c", 5, created + 999),
            ]:
                assert await store.claim("k1", nonce, created, ttl, until=until) is CLAIMED
                ttls.append(await client.ttl(RedisNonceStore.key("k1", nonce)))
            return ttls
        finally:
            await store.aclose()

    short, until_on_redis, capped = asyncio.run(scenario())
    assert short == 5
    assert 15 <= until_on_redis <= 17
    assert capped == 23


def test_first_use_of_an_empty_redis_sets_the_fence_to_redis_time(
    redis_server: RedisServer,
) -> None:
    """No fence yet: it becomes Redis's TIME, with no TTL, and refuses earlier signatures."""

    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            assert await probe.exists(RedisNonceStore.FENCE_KEY) == 0
            before = await redis_now(probe)
            assert await store.claim("k1", "old", math.floor(before), 300) is BEFORE_FENCE
            after = await redis_now(probe)
            fence = await read_fence(probe)
            assert before <= fence <= after
            assert await probe.ttl(RedisNonceStore.FENCE_KEY) == -1, "the fence never expires"
            assert await probe.exists(RedisNonceStore.key("k1", "old")) == 0, "not consumed"
            assert await store.open() == fence, "an existing fence is kept"
            assert await store.claim("k1", "new", math.ceil(after), 300) is CLAIMED

    asyncio.run(scenario())


def test_script_outcomes_claimed_replayed_before_fence(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            await set_fence(probe, f"{CREATED}.500000")
            assert await store.claim("k1", "n1", CREATED + 1, 60) is CLAIMED
            assert await store.claim("k1", "n1", CREATED + 1, 60) is REPLAYED
            assert await store.claim("k1", "n2", CREATED, 60) is BEFORE_FENCE
            assert await store.claim("k1", "n1", CREATED, 60) is BEFORE_FENCE, "fence first"
            await set_fence(probe, f"{CREATED}.000000")
            assert await store.claim("k1", "n2", CREATED, 60) is CLAIMED, "at the fence"

    asyncio.run(scenario())


def test_the_claim_script_is_idempotent_per_token(redis_server: RedisServer) -> None:
    """A claim run twice with its own token (redis-py's retry of a claim that went
    through) is claimed both times; any other token, or an older gateway's "1", is a
    replay, and the first token stays the nonce's value."""

    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            await set_fence(probe, f"{CREATED}.000000")
            keys = store.keys.claim_keys("k1", "n1")
            args = [CREATED + 1, 60]
            assert (await store._script(keys=keys, args=[*args, "t1"]))[0] == b"claimed"
            assert (await store._script(keys=keys, args=[*args, "t1"]))[0] == b"claimed"
            assert (await store._script(keys=keys, args=[*args, "t2"]))[0] == b"replayed"
            assert await probe.get(keys[1]) == b"t1"
            assert 0 < await probe.ttl(keys[1]) <= 60
            await probe.set(store.keys.claim_keys("k1", "old")[1], b"1", ex=60)
            assert await store.claim("k1", "old", CREATED + 1, 60) is REPLAYED
            assert (await store._script(keys=keys, args=[CREATED - 1, 60, "t1"]))[0] == (
                b"before_fence"
            ), "the fence still comes first"

    asyncio.run(scenario())


def test_a_claim_that_timed_out_but_ran_is_claimed_on_redis_py_s_retry(
    redis_server: RedisServer,
) -> None:
    """An audit: Redis stalled past the socket timeout, then ran the first EVALSHA;
    redis-py's one retry found the nonce the request had just claimed and the genuine
    request got 401 ``replayed``. Redis is stopped (SIGSTOP) past the first attempt's
    1 s timeout and continued (SIGCONT) at 1.5 s, well inside the retry's own second."""
    assert redis_server.proc is not None
    pid = redis_server.proc.pid

    async def scenario() -> tuple[Claim, Claim, float, list[str]]:
        async with redis_store(redis_server, socket_timeout=1.0) as (store, probe):
            await set_fence(probe, f"{CREATED}.000000")
            assert await store.open() == CREATED  # the script loaded, a pooled connection
            created = int(await redis_now(probe))
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with capture_logs() as logs:
                    task = asyncio.create_task(store.claim("k1", "stalled", created, 60))
                    await asyncio.sleep(1.5)
                    os.kill(pid, signal.SIGCONT)
                    first = await asyncio.wait_for(task, 5)
                elapsed = time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
            again = await store.claim("k1", "stalled", created, 60)
            return first, again, elapsed, [line["event"] for line in logs]

    first, again, elapsed, events = asyncio.run(scenario())
    assert elapsed >= 1.0, "the first attempt timed out: the answer came from the retry"
    assert first is CLAIMED
    assert again is REPLAYED, "a real second use is still a replay"
    assert "nonce_store_unreachable" not in events


def test_a_flushed_redis_moves_the_fence_and_refuses_earlier_signatures(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            await set_fence(probe, f"{CREATED}.000000")
            created = int(await redis_now(probe))
            assert await store.claim("k1", "n1", created, 300) is CLAIMED
            await probe.flushall()
            await probe.script_flush()  # the script cache is gone too: NOSCRIPT, then reload
            assert await store.claim("k1", "n1", created, 300) is BEFORE_FENCE
            fence = await read_fence(probe)
            assert fence > created
            assert await store.claim("k1", "n2", math.ceil(fence), 300) is CLAIMED

    asyncio.run(scenario())


def test_a_fence_restored_from_another_redis_process_is_a_reset(
    redis_server: RedisServer,
) -> None:
    """A snapshot, an append-only file or a replica brings back the fence, not the last nonces.

    Copying the fence and one nonce to a second redis-server with DUMP/RESTORE is what a
    restart from a stale snapshot or a failover to a lagging replica looks like: the fence
    is there but another process wrote it, so the store starts a new one.
    """
    other = RedisServer(redis_binary()).start()

    async def scenario() -> None:
        async with redis_store(redis_server) as (old, probe), redis_store(other) as (new, copy):
            created = int(await redis_now(probe))
            await set_fence(probe, f"{created - 60}.000000")
            assert await old.claim("k1", "kept", created, 300) is CLAIMED
            assert await old.claim("k1", "lost", created, 300) is CLAIMED
            for key in (RedisNonceStore.FENCE_KEY, RedisNonceStore.key("k1", "kept")):
                await copy.restore(key, 0, await probe.dump(key))
            assert await new.claim("k1", "lost", created, 300) is BEFORE_FENCE
            assert await new.claim("k1", "kept", created, 300) is BEFORE_FENCE
            assert await read_fence(copy) > created
            assert await new.claim("k1", "fresh", math.ceil(await read_fence(copy)), 300) is CLAIMED

    try:
        asyncio.run(scenario())
    finally:
        other.stop()


def test_a_fence_that_is_not_a_number_is_a_reset(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            await probe.set(RedisNonceStore.FENCE_KEY, "garbage")
            before = await redis_now(probe)
            fence = await store.open()
            assert fence is not None
            assert fence >= before
            assert await read_fence(probe) == fence
            await probe.set(RedisNonceStore.FENCE_KEY, "")
            assert await store.claim("k1", "n1", math.floor(before), 60) is BEFORE_FENCE

    asyncio.run(scenario())


def test_redis_store_fails_closed_when_redis_is_down_and_recovers(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            await set_fence(probe, f"{CREATED}.000000")
            assert await store.open() == CREATED
            created = int(await redis_now(probe))
            assert await store.claim("k1", "before", created, 60) is CLAIMED
            redis_server.stop()
            assert await store.open() is None, "start-up does not wait for Redis"
            with pytest.raises(NonceStoreUnavailable):
                await store.claim("k1", "during", created, 60)
            assert (await store.check())[0] is False
            redis_server.start()
            # Restarted empty: the nonce claimed before is forgotten, so its signature is refused.
            assert await store.claim("k1", "before", created, 60) is BEFORE_FENCE
            fresh = math.ceil(await redis_now(probe))
            assert await store.claim("k1", "after", fresh, 60) is CLAIMED
            assert (await store.check()) == (True, "redis")

    asyncio.run(scenario())


def test_an_outage_is_one_warning_and_one_recovery_line_not_one_a_request(
    redis_server: RedisServer,
) -> None:
    """A drill (chaos33): 167 ``nonce_store_unreachable`` warnings in 8 s at 20 req/s,
    one a refused request, each also logged by its own decision line."""

    async def scenario() -> list[dict[str, object]]:
        async with redis_store(redis_server) as (store, probe):
            assert await store.open() is not None
            created = int(await redis_now(probe))
            redis_server.stop()
            with capture_logs() as logs:
                for n in range(20):
                    with pytest.raises(NonceStoreUnavailable):
                        await store.claim("k1", f"during-{n}", created, 60)
                redis_server.start()
                fresh = math.ceil(await redis_now(probe))
                assert await store.claim("k1", "after", fresh, 60) is CLAIMED
                assert await store.claim("k1", "after-2", fresh, 60) is CLAIMED
            return logs

    logs = asyncio.run(scenario())
    down = [line for line in logs if line["event"] == "nonce_store_unreachable"]
    back = [line for line in logs if line["event"] == "nonce_store_unreachable_recovered"]
    assert len(down) == 1, down
    assert down[0]["log_level"] == "warning"
    assert down[0]["detail"]
    assert [(line["log_level"], line["failures"]) for line in back] == [("info", 20)]


@pytest.mark.parametrize(
    "refuse",
    [
        ("CONFIG", "SET", "maxmemory", "1"),  # full, under noeviction: OOM on every write
        ("REPLICAOF", "127.0.0.1", "1"),  # a replica (as after a failover): READONLY
    ],
)
def test_readiness_is_a_write_not_a_ping(
    redis_server: RedisServer, refuse: tuple[str, ...]
) -> None:
    """An audit: PING answered, every claim was a 503, and /readyz said ready."""

    async def scenario() -> tuple[tuple[bool, str], tuple[bool, str]]:
        async with redis_store(redis_server) as (store, probe):
            before = await store.check()
            await probe.execute_command(*refuse)
            return before, await store.check()

    before, after = asyncio.run(scenario())
    assert before == (True, "redis")
    assert after[0] is False
    assert after[1].startswith("redis cannot take a claim (")


@pytest.mark.parametrize(("policy", "warned"), [("noeviction", False), ("volatile-lru", True)])
def test_start_up_warns_when_redis_may_evict_unexpired_nonces(
    redis_server: RedisServer, policy: str, warned: bool
) -> None:
    async def scenario() -> list[dict[str, object]]:
        async with redis_store(redis_server) as (store, probe):
            await probe.config_set("maxmemory-policy", policy)
            with capture_logs() as logs:
                assert await store.open() is not None
            return logs

    events = {line["event"]: line for line in asyncio.run(scenario())}
    assert ("nonce_store_evicts" in events) is warned
    if warned:
        assert events["nonce_store_evicts"]["maxmemory_policy"] == policy


def test_start_up_warns_when_a_primary_with_replicas_can_take_claims_after_a_failover(
    tmp_path: Path,
) -> None:
    """An audit replayed 100 of 580 requests across a Sentinel failover without
    ``min-replicas-to-write``; with it, none. The gateway now says so at start-up."""
    binary = redis_binary()
    # A full resync writes an RDB file in the server's directory: the test's own.
    quick = ["--repl-diskless-sync-delay", "0", "--dir", str(tmp_path)]
    primary = RedisServer(binary, quick).start()
    replica = RedisServer(binary, [*quick, "--replicaof", "127.0.0.1", str(primary.port)]).start()

    async def scenario() -> tuple[list[str], list[str]]:
        async with redis_store(primary) as (store, probe):
            for _ in range(400):  # bounded: the replica connects within a second or two
                if (await probe.info("replication")).get("connected_slaves"):
                    break
                await asyncio.sleep(0.05)
            with capture_logs() as unguarded:
                await store.open()
            await probe.config_set("min-replicas-to-write", 1)
            await probe.config_set("min-replicas-max-lag", 10)
            with capture_logs() as guarded:
                await store.open()
        return [e["event"] for e in unguarded], [e["event"] for e in guarded]

    try:
        unguarded, guarded = asyncio.run(scenario())
    finally:
        replica.stop()
        primary.stop()
    assert "nonce_store_failover_unguarded" in unguarded
    assert "nonce_store_failover_unguarded" not in guarded


@pytest.mark.parametrize("denied", ["info", "time", "evalsha"])
def test_readiness_runs_the_claim_script_as_the_gateway_s_user(tmp_path: Path, denied: str) -> None:
    """An audit: a user without ``INFO`` (common hardening) got a ready gateway that
    answered 503 to every signed request; readiness only proved a ``SET``. Now it runs the
    claim script, and readiness and the claim's log line carry Redis's own message."""
    acl = tmp_path / "users.acl"
    acl.write_text(
        f"user default on nopass ~* &* +@all\nuser gw on >gw-secret-pass ~* &* +@all -{denied}\n"
    )
    server = RedisServer(redis_binary(), ["--aclfile", str(acl)]).start()
    url = f"redis://gw:gw-secret-pass@127.0.0.1:{server.port}/0"

    async def scenario() -> tuple[tuple[bool, str], list[dict[str, object]]]:
        store = RedisNonceStore(create_redis(RedisSettings(url=url)))
        try:
            ready = await store.check()
            with capture_logs() as logs, pytest.raises(NonceStoreUnavailable):
                await store.claim("k1", "n1", 2**33, 60)
        finally:
            await store.aclose()
        return ready, logs

    try:
        (ok, detail), logs = asyncio.run(scenario())
    finally:
        server.stop()
    assert ok is False
    assert detail.startswith("redis cannot take a claim (")
    line = next(line for line in logs if line["event"] == "nonce_store_unreachable")
    text = str(line["detail"])
    assert "permissions to run" in text or "can't run this command" in text, text
    assert text in detail, "readiness says what the log says"
    assert "gw-secret-pass" not in detail + text


def test_readiness_claims_a_new_probe_key_beside_the_fence(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with redis_store(redis_server) as (store, probe):
            assert await store.check() == (True, "redis")
            assert await store.check() == (True, "redis"), "a new key each time"
            probes = await probe.keys(f"{NonceKeys.READY_KEY}:*")
            assert len(probes) == 2
            for key in probes:
                assert 0 < await probe.ttl(key) <= 1
            assert await probe.exists(RedisNonceStore.FENCE_KEY) == 1, "the fence is set"

    asyncio.run(scenario())


def test_error_text_is_one_short_line_without_credentials() -> None:
    from redis.exceptions import ResponseError

    text = error_text(ResponseError("NOREPLICAS Not enough good replicas to write."))
    assert text == "ResponseError: NOREPLICAS Not enough good replicas to write."
    long = error_text(ResponseError("ERR " + "x" * 500 + "\nsecond line"))
    assert len(long) <= len("ResponseError: ") + ERROR_TEXT_LIMIT
    assert long.endswith("...")
    masked = error_text(ConnectionError("connecting to redis://gw:hunter2@10.0.0.1:6379/0"))
    assert "hunter2" not in masked
    assert "redis://***@10.0.0.1" in masked
    assert error_text(TimeoutError()) == "TimeoutError"


def test_readiness_notices_an_eviction_policy_set_at_run_time(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked at start-up only, an eviction policy set later (CONFIG SET, a managed
    parameter group) went unseen while an audit's evicted nonces were replayed. Readiness
    looks again once a minute: still ready (claims work), but it says so, and logs it."""
    clock = [0.0]  # a freshly booted machine: monotonic near zero
    monkeypatch.setattr(nonces_module.time, "monotonic", lambda: clock[0])

    async def scenario() -> list[str]:
        details = []
        async with redis_store(redis_server) as (store, probe):
            await store.open()
            details.append((await store.check())[1])
            await probe.config_set("maxmemory-policy", "volatile-ttl")
            clock[0] = 59.0
            details.append((await store.check())[1])  # not looked at again yet
            clock[0] = 60.0
            ok, detail = await store.check()
            assert ok
            details.append(detail)
            await probe.config_set("maxmemory-policy", "noeviction")
            clock[0] = 120.0
            details.append((await store.check())[1])
        return details

    with capture_logs() as logs:
        details = asyncio.run(scenario())
    assert details[:2] == ["redis", "redis"]
    assert details[2] == "redis; maxmemory-policy volatile-ttl may evict nonces (replay)"
    assert details[3] == "redis"
    evicts = [e for e in logs if e["event"] == "nonce_store_evicts"]
    assert [e["maxmemory_policy"] for e in evicts] == ["volatile-ttl"]


def test_memory_store_forgets_nonces_claimed_while_the_wall_clock_was_stepped_back() -> None:
    """A nonce claimed after a step back may fall due before the second the sweep had
    reached; the sweep went on from there, so it was never forgotten. It still counted
    against the capacity: under steady traffic each step back left its nonces for good,
    and a store holding no live nonce beyond its capacity refused every signature (503)."""
    clock = FakeClock()
    store = memory_store(3, clock)

    async def claim(nonce: str, ttl: int) -> Claim:
        return await store.claim("k1", nonce, CREATED, ttl)

    async def scenario() -> None:
        assert await claim("a", 100) is CLAIMED
        clock.now += 1
        assert await claim("b", 100) is CLAIMED
        clock.now -= 500  # NTP steps the wall clock back
        assert await claim("c", 10) is CLAIMED
        clock.now += 502  # past where the sweep was, "c" long expired
        assert await claim("d", 100) is CLAIMED, "only a and b are held"
        assert len(store) == 3

    asyncio.run(scenario())


def test_memory_store_stays_bounded_by_its_live_nonces_across_a_step_back() -> None:
    """Under steady traffic the sweep goes second by second: a step back's nonces, due
    before the second it had reached, were never forgotten (nor counted out)."""
    clock = FakeClock()
    store = memory_store(100_000, clock)

    async def steady(seconds: int, prefix: str, ttl: int) -> None:
        for second in range(seconds):
            clock.now += 1
            assert await store.claim("k1", f"{prefix}{second}", CREATED, ttl) is CLAIMED

    async def scenario() -> None:
        await steady(100, "before-", 50)
        clock.now -= 500  # NTP steps the wall clock back
        await steady(5, "stepped-", 10)
        clock.now += 495
        await steady(200, "after-", 50)

    asyncio.run(scenario())
    assert len(store) <= 51, "only the nonces of the last 50 s (and one due now) are held"


stepped = st.tuples(
    st.one_of(st.floats(0, 2, allow_nan=False), st.floats(-700, 700, allow_nan=False)),
    st.tuples(st.sampled_from(["k1", "k2"]), st.sampled_from(["a", "b", "c", "d"])),
    st.integers(1, 600),
)


class SteppedReference:
    """What the store may answer on a clock that steps back as well as forward.

    No bounded store matches a never-forgetting one there: a nonce whose end the clock
    has passed may be forgotten (swept once its whole second is past, or at capacity
    within the current second), and a step back
    that makes its signature acceptable again cannot bring it back (the window's
    documented limit, ``signing.md`` section 4). So per pair this keeps the last claim's
    end and the latest clock seen since; the store must say ``replayed`` while that end
    is ahead of the clock and the clock never passed it, may say ``claimed`` only once
    it is behind the clock or the clock passed it before, and may be ``full`` only
    while ``capacity`` pairs could still be held.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.claims: dict[tuple[str, str], tuple[float, float]] = {}  # end, latest clock

    def see(self, now: float) -> None:
        self.claims = {p: (end, max(seen, now)) for p, (end, seen) in self.claims.items()}

    @staticmethod
    def sweepable(end: float, seen: float) -> bool:
        return end <= seen  # the clock has passed its end: it may be forgotten

    def allowed(self, pair: tuple[str, str], now: float) -> set[str]:
        ahead = {p for p, (end, _) in self.claims.items() if end > now}  # may be held
        held = {p for p in ahead if not self.sweepable(*self.claims[p])}  # must be
        if pair in held:
            return {"replayed"}
        options = {"replayed"} if pair in ahead else set()
        if len(held) < self.capacity:
            options.add("claimed")
        if len(ahead - {pair}) >= self.capacity:
            options.add("full")
        return options

    def record(self, pair: tuple[str, str], now: float, ttl: int, outcome: str) -> None:
        if outcome == "claimed":
            self.claims[pair] = (now + ttl, now)


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(1e4, 1e9, allow_nan=False),
    capacity=st.integers(1, 5),
    steps=st.lists(stepped, max_size=40),
)
def test_memory_store_keeps_the_window_s_promise_on_a_clock_stepped_either_way(
    start: float, capacity: int, steps: list[tuple[float, tuple[str, str], int]]
) -> None:
    """On a wall clock that NTP steps back as well as forward: a nonce is replayed while
    its end is ahead of the clock and the clock never passed it, and the store is full
    only while that many could be held. (An exact match with a dict, as on a clock that
    only goes forward, failed in CI: a nonce swept before a step back is claimed again.)"""
    clock = FakeClock()
    clock.now = start
    store = memory_store(capacity, clock)
    reference = SteppedReference(capacity)

    async def scenario() -> None:
        for advance, pair, ttl in steps:
            clock.now += advance
            reference.see(clock.now)
            try:
                outcome = str(await store.claim(*pair, CREATED, ttl))
            except NonceStoreUnavailable:
                outcome = "full"
            assert outcome in reference.allowed(pair, clock.now), (pair, clock.now)
            reference.record(pair, clock.now, ttl, outcome)

    asyncio.run(scenario())


def test_a_nonce_swept_before_a_step_back_is_claimed_again() -> None:
    """The example CI found: claimed at 10000 for 1 s, the clock at 10002 (its second
    swept), stepped back to 10000: forgotten, so claimed again (the documented limit of
    a step back larger than the tolerance; before its end passed, it stays held)."""
    clock = FakeClock()
    clock.now = 10_000.0
    store = memory_store(2, clock)

    async def scenario() -> list[Claim]:
        first = await store.claim("k1", "a", CREATED, 1)
        clock.now += 2
        assert await store.claim("k2", "a", CREATED, 3) is CLAIMED  # the sweep runs
        clock.now -= 2
        return [first, await store.claim("k1", "a", CREATED, 1)]

    assert asyncio.run(scenario()) == [CLAIMED, CLAIMED]
