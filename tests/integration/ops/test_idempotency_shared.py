"""Idempotency keys shared through a real Redis: one run per key across gateways."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import RedisSettings
from app.core.errors import Conflict, DownstreamError, IdempotencyKeyReused
from app.core.redis import create_redis
from app.workflows.closing import RESULT_CODEC
from app.workflows.idempotency import (
    Codec,
    IdempotencyStoreUnavailable,
    RedisIdempotencyStore,
)
from tests.integration.orchestration_stack import StackBuilder, closed_writer_lead_policy
from tests.integration.test_orchestration_composite import CLOSE, REASON, client
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

TEXT = Codec(str.encode, bytes.decode)
Scenario = Callable[[RedisIdempotencyStore, RedisIdempotencyStore], Awaitable[None]]


def on_two_gateways(redis_server: RedisServer, scenario: Scenario, lease: float = 30.0) -> None:
    """Run ``scenario`` with two stores on two Redis pools, as two gateways would have."""

    async def run() -> None:
        clients = [create_redis(RedisSettings(url=redis_server.url)) for _ in range(2)]
        try:
            await scenario(*(RedisIdempotencyStore(c, 60, lease) for c in clients))
        finally:
            for redis in clients:
                await redis.aclose()

    asyncio.run(run())


def counting(calls: list[str], result: str = "first") -> Callable[[], Awaitable[str]]:
    async def operation() -> str:
        calls.append(result)
        return result

    return operation


def test_a_key_run_on_one_gateway_is_replayed_by_another(redis_server: RedisServer) -> None:
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        assert await one.run(("close", "bob", "k1"), "fp", counting(calls), TEXT) == (
            "first",
            False,
        )
        assert await two.run(("close", "bob", "k1"), "fp", counting(calls), TEXT) == (
            "first",
            True,
        )
        with pytest.raises(IdempotencyKeyReused):
            await two.run(("close", "bob", "k1"), "other body", counting(calls), TEXT)
        # Another caller's key of the same name is another key.
        assert await two.run(("close", "alice", "k1"), "fp", counting(calls, "x"), TEXT) == (
            "x",
            False,
        )

    on_two_gateways(redis_server, scenario)
    assert calls == ["first", "x"]


def test_a_run_in_progress_is_a_conflict_elsewhere_and_failures_are_forgotten(
    redis_server: RedisServer,
) -> None:
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "done"

        first = asyncio.create_task(one.run(("k",), "fp", slow, TEXT))
        await asyncio.sleep(0.05)
        with pytest.raises(Conflict) as running:
            await two.run(("k",), "fp", counting(calls), TEXT)
        assert running.value.headers == {"Retry-After": "1"}  # when to send it again
        gate.set()
        assert await first == ("done", False)

        async def broken() -> str:
            raise DownstreamError("findings")

        with pytest.raises(DownstreamError):
            await one.run(("j",), "fp", broken, TEXT)
        assert await two.run(("j",), "fp", counting(calls), TEXT) == ("first", False)

    on_two_gateways(redis_server, scenario)
    assert calls == ["first"]


def test_a_run_longer_than_the_lease_keeps_its_claim(
    redis_server: RedisServer, captured_logs: list[dict[str, Any]]
) -> None:
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        async def long_run() -> str:
            await asyncio.sleep(1.0)  # five leases: renewed all along
            return "long"

        first = asyncio.create_task(one.run(("k",), "fp", long_run, TEXT))
        for _ in range(4):
            await asyncio.sleep(0.2)
            with pytest.raises(Conflict):
                await two.run(("k",), "fp", counting(calls), TEXT)
        assert await first == ("long", False)
        assert await two.run(("k",), "fp", counting(calls), TEXT) == ("long", True)

    on_two_gateways(redis_server, scenario, lease=0.2)
    assert calls == [], "the other gateway never ran the key"
    assert "idempotency_lease_lapsed" not in [e["event"] for e in captured_logs]


def test_a_claim_left_by_a_dead_gateway_lapses_with_its_lease(redis_server: RedisServer) -> None:
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        async def dies() -> str:
            await asyncio.sleep(10)  # cancelled below, with its renewal: as if its process died
            return "never"

        first = asyncio.create_task(one.run(("k",), "fp", dies, TEXT))
        await asyncio.sleep(0.1)
        with pytest.raises(Conflict):
            await two.run(("k",), "fp", counting(calls, "second"), TEXT)
        # A dead process neither renews nor releases: stop its tasks without their cleanup.
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and "_keep_claim" in repr(task.get_coro()):
                task.cancel()
        await asyncio.sleep(0.5)  # past the lease, nothing renewing it
        assert await two.run(("k",), "fp", counting(calls, "second"), TEXT) == ("second", False)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first

    on_two_gateways(redis_server, scenario, lease=0.2)
    assert calls == ["second"]


def test_redis_down_runs_nothing_and_a_failure_after_the_run_keeps_its_result(
    redis_server: RedisServer,
) -> None:
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        redis_server.stop()
        with pytest.raises(IdempotencyStoreUnavailable) as caught:
            await one.run(("k",), "fp", counting(calls), TEXT)
        assert (caught.value.status_code, caught.value.headers) == (503, {"Retry-After": "1"})
        redis_server.start()

        async def then_redis_fails() -> str:
            redis_server.stop()
            return "applied"

        assert await two.run(("k",), "fp", then_redis_fails, TEXT) == ("applied", False)
        redis_server.start()

    on_two_gateways(redis_server, scenario)
    assert calls == [], "nothing ran while the key could not be claimed"


def test_close_replayed_on_the_other_gateway_calls_no_service(
    make_stack: StackBuilder, redis_server: RedisServer, tmp_path: Path
) -> None:
    # bob may write a closed engagement here: the other gateway decides it closed at once.
    policy = {"dir": str(closed_writer_lead_policy(tmp_path))}
    shared = {"redis": {"url": redis_server.url}, "policy": policy}
    stack = make_stack(**shared)
    other = make_stack.another_gateway(stack, **shared)
    headers = {"idempotency-key": "close-acme-shared-1"}
    with client(stack.url) as one, client(other.url) as two:
        first = one.post(CLOSE, json=REASON, headers=headers)
        calls = {name: stack.requests_seen(name) for name in stack.stubs}
        again = two.post(CLOSE, json=REASON, headers=headers)
        reused = two.post(CLOSE, json={"reason": "another reason"}, headers=headers)
        after = {name: stack.requests_seen(name) for name in stack.stubs}
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert after == calls, "the replay on the other gateway called no service"
    assert reused.status_code == 422
    assert reused.json()["type"] == "urn:authz-gateway:problem:idempotency_key_reused"
    assert reused.json()["corr_id"] == reused.headers["x-request-id"]


class ReplyDropper:
    """A TCP proxy to Redis that cuts the connection instead of relaying one script's reply.

    As a Redis timeout or restart would: the script ran, its caller never heard.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.dropped = 0
        self.url = ""

    async def __aenter__(self) -> ReplyDropper:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        last = bytearray()

        async def upstream() -> None:
            while data := await reader.read(65536):
                last[:] = data
                up_writer.write(data)

        pump = asyncio.create_task(upstream())
        try:
            # A client gone, or the test is over: either ends the relay.
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await up_reader.read(65536):
                    script_answer = b"EVALSHA" in last and not data.startswith(b"-NOSCRIPT")
                    if script_answer and not self.dropped:
                        self.dropped += 1
                        return  # the claim ran in Redis; its answer is lost
                    writer.write(data)
        finally:
            pump.cancel()
            writer.close()
            up_writer.close()


def test_a_claim_whose_answer_was_lost_and_retried_is_still_ours(
    redis_server: RedisServer,
) -> None:
    """redis-py retries a script once on a dropped connection; our own claim is not a 409."""
    calls: list[str] = []

    async def run() -> None:
        async with ReplyDropper(int(redis_server.url.rsplit(":", 1)[1].split("/")[0])) as proxy:
            redis = create_redis(RedisSettings(url=proxy.url))
            try:
                store = RedisIdempotencyStore(redis, 60, 30)
                assert await store.run(("k",), "fp", counting(calls), TEXT) == ("first", False)
                assert proxy.dropped == 1
                assert await store.run(("k",), "fp", counting(calls), TEXT) == ("first", True)
            finally:
                await redis.aclose()

    asyncio.run(run())
    assert calls == ["first"]


@pytest.mark.parametrize(
    ("codec", "stored"),
    [(TEXT, b"\xff\xfe"), (RESULT_CODEC, b'{"engagement": "e1", "state": "closed"}')],
    ids=["undecodable", "another-schema"],
)
def test_a_stored_result_this_version_cannot_read_is_a_conflict_not_a_crash(
    redis_server: RedisServer, codec: Codec[Any], stored: bytes
) -> None:
    """A record another gateway version wrote: a clear 409, and the operation is not rerun."""
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        redis = create_redis(RedisSettings(url=redis_server.url))
        try:
            digest = hashlib.sha256(b"fp").hexdigest().encode()
            await redis.set(RedisIdempotencyStore.key(("k",)), b"D" + digest + stored)
        finally:
            await redis.aclose()
        with pytest.raises(Conflict) as caught:
            await one.run(("k",), "fp", counting(calls), codec)
        assert caught.value.status_code == 409

    on_two_gateways(redis_server, scenario)
    assert calls == []


def test_a_result_redis_missed_is_stored_when_it_answers_again(redis_server: RedisServer) -> None:
    """Redis stalled as the run ended (CLIENT PAUSE): storing the result failed, and the
    key stayed "in progress" (409 on every retry) for the whole lease. It is stored in
    the background once Redis answers, so the other gateway replays it well within it."""
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        raw = create_redis(RedisSettings(url=redis_server.url))

        async def then_redis_stalls() -> str:
            await raw.execute_command("CLIENT", "PAUSE", 1500, "ALL")
            return "applied"

        try:
            assert await one.run(("k",), "fp", then_redis_stalls, TEXT) == ("applied", False)
            deadline = asyncio.get_running_loop().time() + 10  # the lease is 30 s
            while True:
                try:
                    replayed = await two.run(("k",), "fp", counting(calls, "again"), TEXT)
                    break
                except (Conflict, IdempotencyStoreUnavailable):
                    assert asyncio.get_running_loop().time() < deadline, "still in progress"
                    await asyncio.sleep(0.1)
            assert replayed == ("applied", True)
        finally:
            await raw.aclose()

    on_two_gateways(redis_server, scenario)
    assert calls == []


def test_a_lease_under_a_millisecond_is_one_millisecond(redis_server: RedisServer) -> None:
    """``idempotency_lease_seconds`` accepts any positive value; below 1 ms it became
    ``PX 0``, which Redis refuses (invalid expire time): every keyed request a 503. It
    is at least 1 ms, as the engagement lock's lease already was."""
    calls: list[str] = []

    async def scenario(one: RedisIdempotencyStore, two: RedisIdempotencyStore) -> None:
        assert await one.run(("close", "bob", "k1"), "fp", counting(calls), TEXT) == (
            "first",
            False,
        )
        assert await two.run(("close", "bob", "k1"), "fp", counting(calls), TEXT) == (
            "first",
            True,
        )

    on_two_gateways(redis_server, scenario, lease=0.0004)
    assert calls == ["first"]
