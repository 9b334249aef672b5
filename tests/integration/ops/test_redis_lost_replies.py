"""Scripts redis-py sends again after Redis ran them but their reply was lost.

redis-py's client retry (``Retry(NoBackoff(), 1)``, app.core.redis) re-sends a command
whose connection failed while its reply was awaited; the first run may have happened.
Here a relay between the gateway's client and a real redis-server loses exactly that
reply: it forwards one script call, waits until Redis answered it, and closes the
client's connection instead of passing the answer on. The retry then runs the script
a second time, and each write script must recognise its own earlier run.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.exceptions
from structlog.testing import capture_logs

from app.authn.nonces import Claim, RedisNonceStore
from app.authz.closed import ClosedFact
from app.authz.closed_redis import RedisEngagementState
from app.core.config import RedisSettings
from app.core.engagement_settings import EngagementStateSettings
from app.core.errors import ServiceUnavailable
from app.core.ops_settings import RateLimitRule
from app.core.redis import create_redis
from app.ops.ratelimit import Bucket, RedisRateLimiter
from app.workflows.engagement_lock import RedisEngagementLocks
from app.workflows.idempotency import Codec, RedisIdempotencyStore
from tests.conftest import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


class ReplyLosingRelay:
    """A TCP relay on 127.0.0.1 to a Redis server. Once ``lose_next_script_reply()`` is
    called, the reply to the next script call Redis ran is dropped and the client's
    connection closed (a ``NOSCRIPT`` answer, a script not run, is passed on)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.armed = False
        self.lost = 0  # replies dropped
        self.scripts = 0  # script calls relayed, the retried ones included
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[object]] = set()

    def lose_next_script_reply(self) -> None:
        self.armed = True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReplyLosingRelay]:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        try:
            yield self
        finally:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _connection(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        upstream, to_upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {to_client, to_upstream}
        watching = [False]  # the reply now awaited answers a script call while armed
        try:
            await asyncio.gather(
                self._requests(client, to_upstream, watching),
                self._replies(upstream, to_client, watching),
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (to_client, to_upstream):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
                self._writers.discard(writer)

    async def _requests(
        self, client: asyncio.StreamReader, to_upstream: asyncio.StreamWriter, watching: list[bool]
    ) -> None:
        while data := await client.read(65536):
            if b"EVALSHA" in data:
                self.scripts += 1
                watching[0] = self.armed
            to_upstream.write(data)
            await to_upstream.drain()
        to_upstream.close()

    async def _replies(
        self, upstream: asyncio.StreamReader, to_client: asyncio.StreamWriter, watching: list[bool]
    ) -> None:
        while data := await upstream.read(65536):
            if watching[0]:
                watching[0] = False
                if not data.startswith(b"-NOSCRIPT"):
                    # Redis ran the script: its answer never reaches the client.
                    self.armed = False
                    self.lost += 1
                    to_client.close()
                    return
            to_client.write(data)
            await to_client.drain()
        to_client.close()


def _client_through(relay: ReplyLosingRelay) -> RedisSettings:
    return RedisSettings(url=f"redis://127.0.0.1:{relay.port}/0")


def test_a_spend_whose_reply_was_lost_is_spent_once(redis_server: RedisServer) -> None:
    """Two requests a minute: the first one's reply is lost and its script retried; the
    second request is still allowed (it was refused 429 when the retry spent again)."""
    rule = RateLimitRule(limit=2, window_seconds=60)
    bucket = Bucket("subject", "alice", rule)

    async def scenario() -> None:
        async with ReplyLosingRelay(redis_server.port).running() as relay:
            client = create_redis(_client_through(relay))
            limiter = RedisRateLimiter(client, "gw:rl:", "closed")
            try:
                await limiter.acquire([bucket])  # loads the script: a NOSCRIPT is not lost
                await client.delete(limiter.key(bucket))
                relay.lose_next_script_reply()
                before = relay.scripts
                first = await limiter.acquire([bucket])
                assert (relay.lost, relay.scripts - before) == (1, 2), "lost, then retried"
                assert [(s.allowed, s.remaining) for s in first] == [(True, 1)]
                second = await limiter.acquire([bucket])
                assert [(s.allowed, s.remaining) for s in second] == [(True, 0)]
                third = await limiter.acquire([bucket])
                assert [s.allowed for s in third] == [False]
                records = [key async for key in client.scan_iter("gw:rl:request:*")]
                assert len(records) == 3, "one per allowed request, none for the refused"
                for key in records:
                    assert 0 < await client.pttl(key) <= 10_000
            finally:
                await client.aclose()

    asyncio.run(scenario())


def test_a_nonce_claim_whose_reply_was_lost_is_claimed_not_replayed(
    redis_server: RedisServer,
) -> None:
    """A fresh nonce whose claim's reply is lost is accepted (the retry finds its own
    token: a "replayed" here was a false 401), and its replay is still refused."""

    async def scenario() -> None:
        async with ReplyLosingRelay(redis_server.port).running() as relay:
            store = RedisNonceStore(create_redis(_client_through(relay)))
            try:
                fence = await store.open()
                assert fence is not None
                created = int(fence) + 1
                relay.lose_next_script_reply()
                nonce = secrets.token_hex(8)
                assert await store.claim("k1", nonce, created, 60) is Claim.CLAIMED
                assert relay.lost == 1
                assert await store.claim("k1", nonce, created, 60) is Claim.REPLAYED
            finally:
                await store.aclose()

    asyncio.run(scenario())


def _warnings(logs: list[dict[str, object]]) -> list[object]:
    return [line["event"] for line in logs if line["log_level"] == "warning"]


def test_a_lock_release_whose_reply_was_lost_is_not_a_lapse(redis_server: RedisServer) -> None:
    """The release's retry found the lock gone (its first run deleted it) and logged
    ``engagement_lock_lapsed``, though nothing lapsed; it finds its own release record."""

    async def scenario() -> None:
        async with ReplyLosingRelay(redis_server.port).running() as relay:
            client = create_redis(_client_through(relay))
            locks = RedisEngagementLocks(client, 60)
            key = locks.key("acme-2026")
            try:
                async with locks.hold("acme-2026", "reopen"):
                    pass  # loads the take and release scripts: a NOSCRIPT is not lost
                with capture_logs() as logs:
                    async with locks.hold("acme-2026", "reopen"):
                        relay.lose_next_script_reply()
                        before = relay.scripts
                assert (relay.lost, relay.scripts - before) == (1, 2), "lost, then retried"
                assert _warnings(logs) == []
                assert await client.exists(key) == 0
                assert 0 < await client.pttl(locks.released_key(key)) <= 10_000
                async with locks.hold("acme-2026", "close"):  # released: another takes it
                    pass
            finally:
                await client.aclose()

    asyncio.run(scenario())


def test_a_lock_release_that_finds_another_holder_is_still_a_lapse(
    redis_server: RedisServer,
) -> None:
    """The record is its owner's only: a lock lost to another holder is still reported."""

    async def scenario() -> None:
        client = create_redis(RedisSettings(url=redis_server.url))
        locks = RedisEngagementLocks(client, 60)
        key = locks.key("acme-2026")
        try:
            with capture_logs() as logs:
                async with locks.hold("acme-2026", "close"):
                    await client.set(key, b"reopen|another-holder")
            assert _warnings(logs) == ["engagement_lock_lapsed"]
            assert await client.get(key) == b"reopen|another-holder"
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("outcome", ["stored", "forgotten"])
def test_a_settle_whose_reply_was_lost_is_not_a_lapse(
    redis_server: RedisServer, outcome: str
) -> None:
    """The settle's retry found the claim done (or gone, a failure forgotten) and logged
    ``idempotency_lease_lapsed``; it finds its own settle record. The key then replays
    the stored result, or runs again after a failure."""
    codec = Codec[str](encode=str.encode, decode=bytes.decode)
    scope = ("alice", "close", "acme-2026", f"key-{outcome}")

    async def scenario() -> None:
        async with ReplyLosingRelay(redis_server.port).running() as relay:
            client = create_redis(_client_through(relay))
            store = RedisIdempotencyStore(client, 60, 30)
            runs: list[str] = []

            async def operation() -> str:
                runs.append("ran")
                relay.lose_next_script_reply()  # the settle's: the claim already answered
                if outcome == "forgotten" and len(runs) == 2:
                    raise RuntimeError("the operation failed")
                return f"result {len(runs)}"

            async def losing() -> tuple[str, bool]:
                before = relay.scripts
                with capture_logs() as logs:
                    answer = await store.run(scope, "fp", operation, codec)
                assert (relay.lost, relay.scripts - before) == (lost + 1, 3), "claim, settle x2"
                assert _warnings(logs) == []
                return answer

            try:
                await store.run(("warm", "up"), "fp", operation, codec)  # loads the scripts
                lost = relay.lost
                if outcome == "stored":
                    assert await losing() == ("result 2", False)
                    assert await store.run(scope, "fp", operation, codec) == ("result 2", True)
                else:
                    with pytest.raises(RuntimeError):
                        await losing()
                    assert await store.run(scope, "fp", operation, codec) == ("result 3", False)
                record = store.settled_key(store.key(scope))
                assert 0 < await client.pttl(record) <= 10_000
            finally:
                await client.aclose()

    asyncio.run(scenario())


STATE = EngagementStateSettings(check_interval_seconds=60, startup_timeout_seconds=5)
CLOSED_HASH = "{" + STATE.key_prefix + "}:closed"


@contextlib.asynccontextmanager
async def _notices(redis_server: RedisServer) -> AsyncIterator[tuple[Any, Any]]:
    """A client straight to Redis (not through the relay) subscribed to the state's
    notices; both closed at the end."""
    direct = create_redis(RedisSettings(url=redis_server.url))
    pubsub = direct.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(RedisEngagementState(direct, STATE).channel)
        yield direct, pubsub
    finally:
        await pubsub.aclose()
        await direct.aclose()


async def _next_notice(pubsub: Any) -> bytes | None:
    for _ in range(50):  # a bound on the wait, not a timing claim
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            data: bytes = message["data"]
            return data
    return None


def test_a_reopen_whose_reply_was_lost_still_says_what_it_reopened(
    redis_server: RedisServer,
) -> None:
    """The retry found the fact gone (its first run removed it): the reopen answered
    ``was_closed_by: null`` and published no change notice. It answers from its record."""
    fact = ClosedFact("acme-2026", "close_saga", "corr-1", 1_800_000_000.0, "bob")

    async def scenario() -> None:
        async with (
            _notices(redis_server) as (direct, pubsub),
            ReplyLosingRelay(redis_server.port).running() as relay,
            contextlib.aclosing(create_redis(_client_through(relay))) as client,
        ):
            state = RedisEngagementState(client, STATE)
            await state.refresh()
            assert await state.reopen("never-closed") is None  # loads the script
            await state.close(fact)
            assert await _next_notice(pubsub) == b"acme-2026"
            relay.lose_next_script_reply()
            before = relay.scripts
            assert await state.reopen("acme-2026") == fact
            assert (relay.lost, relay.scripts - before) == (1, 2), "lost, then retried"
            assert await _next_notice(pubsub) == b"acme-2026"
            assert await direct.hget(CLOSED_HASH, "acme-2026") is None
            assert state.get("acme-2026") is None

    asyncio.run(scenario())


def test_a_withdrawal_whose_reply_was_lost_still_drops_the_fact_here(
    redis_server: RedisServer,
) -> None:
    """An undone close's fact: the retry found it gone and answered "not removed", so this
    process kept deciding the engagement closed and no notice told the others."""
    fact = ClosedFact("acme-2026", "close_saga", "corr-2", 1_800_000_000.0, "bob")

    async def scenario() -> None:
        async with (
            _notices(redis_server) as (direct, pubsub),
            ReplyLosingRelay(redis_server.port).running() as relay,
            contextlib.aclosing(create_redis(_client_through(relay))) as client,
        ):
            state = RedisEngagementState(client, STATE)
            await state.refresh()
            await state.withdraw(ClosedFact("never-closed", "close_saga"))  # loads it
            await state.close(fact)
            assert await _next_notice(pubsub) == b"acme-2026"
            relay.lose_next_script_reply()
            await state.withdraw(fact)
            assert relay.lost == 1
            assert state.get("acme-2026") is None
            assert await _next_notice(pubsub) == b"acme-2026"
            assert await direct.hget(CLOSED_HASH, "acme-2026") is None

    asyncio.run(scenario())


def test_a_withdrawal_redis_ran_but_never_confirmed_drops_the_fact_in_the_background(
    redis_server: RedisServer,
) -> None:
    """Redis ran the withdrawal but no reply reached us (redis-py's retry's lost too): the
    call is a 503 and the fact is watched for in the background. That watch sent a new
    record, found the fact gone and no record of its own, and answered "not removed"
    until its window ended: this process kept deciding the engagement closed and no
    notice told the others. It now sends the unconfirmed call's own record."""
    fact = ClosedFact("acme-2026", "close_saga", "corr-3", 1_800_000_000.0, "bob")

    async def scenario() -> None:
        async with _notices(redis_server) as (direct, pubsub):
            state = RedisEngagementState(direct, STATE)
            script = state._withdraw_script
            sent: list[Any] = []

            async def ran_but_lost(**call: Any) -> Any:
                answer = await script(**call)
                sent.append(answer)
                if len(sent) == 1:  # this run's reply, and its retry's, never arrived
                    raise redis.exceptions.ConnectionError("the reply was lost")
                return answer

            state._withdraw_script = ran_but_lost  # type: ignore[assignment]
            await state.refresh()
            await state.close(fact)
            assert await _next_notice(pubsub) == b"acme-2026"
            with pytest.raises(ServiceUnavailable):
                await state.withdraw(fact)
            assert await direct.hget(CLOSED_HASH, "acme-2026") is None, "Redis ran it"
            assert await _next_notice(pubsub) == b"acme-2026", "the background run's notice"
            assert state.get("acme-2026") is None
            assert sent[-1] == 1

    asyncio.run(scenario())
