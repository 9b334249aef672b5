"""Policy-revision notices between two notifiers over a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI

from app.core.config import RedisSettings
from app.core.ops_settings import ReloadNoticeSettings
from app.core.redis import create_redis
from app.ops.reload_notices import ReloadNotifier
from app.ops.runtime import ops_lifespan
from tests.conftest import make_settings
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

# A bound for waiting, not a latency claim.
WAIT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Instance:
    """A stand-in for one gateway process: its revision and what it was told."""

    def __init__(self, revision: str, fail_first: bool = False) -> None:
        self.revision = revision
        self.heard: list[str] = []
        self.changed = asyncio.Event()
        self._fail_first = fail_first

    async def reload(self, revision: str) -> None:
        self.heard.append(revision)
        if self._fail_first and len(self.heard) == 1:
            raise RuntimeError("policy files not there yet")
        self.revision = revision
        self.changed.set()


@asynccontextmanager
async def notifier(
    redis: RedisServer, instance: Instance, interval: float
) -> AsyncIterator[ReloadNotifier]:
    client = create_redis(RedisSettings(url=redis.url))
    settings = ReloadNoticeSettings(check_interval_seconds=interval)
    running = ReloadNotifier(client, settings, instance.reload, lambda: instance.revision)
    running.start()
    try:
        yield running
    finally:
        await running.aclose()
        await client.aclose()


async def _wait(event: asyncio.Event | Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        if isinstance(event, asyncio.Event):
            await event.wait()
            return
        while not event():  # noqa: ASYNC110 - polls state owned by the notifier's task
            await asyncio.sleep(0.02)


async def test_a_notice_from_one_process_reaches_the_other(redis_server: RedisServer) -> None:
    first, second = Instance("rev-a"), Instance("rev-a")
    # Periodic checks an hour apart: only pub/sub can carry the notice here.
    async with (
        notifier(redis_server, first, 3600) as one,
        notifier(redis_server, second, 3600) as two,
    ):
        await _wait(one.listening)
        await _wait(two.listening)
        first.revision = "rev-b"
        assert await one.publish("rev-b")
        await _wait(second.changed)
    assert second.heard == ["rev-b"]
    assert first.heard == []  # its own notice matched its revision: nothing to do


async def test_a_late_process_catches_up_from_the_stored_revision(
    redis_server: RedisServer,
) -> None:
    first, late = Instance("rev-b"), Instance("rev-a")
    async with notifier(redis_server, first, 3600) as one:
        assert await one.publish("rev-b")
        async with notifier(redis_server, late, 3600):
            await _wait(late.changed)
    assert late.heard == ["rev-b"]


async def test_notices_resume_after_redis_restarts(redis_server: RedisServer) -> None:
    first, second = Instance("rev-a"), Instance("rev-a")
    async with (
        notifier(redis_server, first, 0.2) as one,
        notifier(redis_server, second, 0.2) as two,
    ):
        await _wait(two.listening)
        await asyncio.to_thread(redis_server.stop)
        await _wait(lambda: not two.listening.is_set())
        assert not await one.publish("rev-lost")  # Redis is down: publishing says so
        await asyncio.to_thread(redis_server.start)
        await _wait(two.listening)
        assert await one.publish("rev-c")
        await _wait(second.changed)
    assert second.heard[-1] == "rev-c"
    assert "rev-lost" not in second.heard


async def test_a_failed_reload_is_retried_by_the_periodic_check(
    redis_server: RedisServer,
) -> None:
    first, flaky = Instance("rev-a"), Instance("rev-a", fail_first=True)
    async with notifier(redis_server, first, 0.1) as one, notifier(redis_server, flaky, 0.1) as two:
        await _wait(two.listening)
        assert await one.publish("rev-d")
        await _wait(flaky.changed)
    assert flaky.heard[:2] == ["rev-d", "rev-d"]
    assert flaky.revision == "rev-d"


async def test_ops_lifespan_runs_the_notifier_and_closes_it(redis_server: RedisServer) -> None:
    """The wiring the app uses: ``ops_lifespan`` with a reload callback per process."""
    first, second = Instance("rev-a"), Instance("rev-a")
    settings = make_settings(redis={"url": redis_server.url})
    one, two = FastAPI(), FastAPI()
    async with (
        ops_lifespan(one, settings, first.reload, lambda: first.revision),
        ops_lifespan(two, settings, second.reload, lambda: second.revision),
    ):
        notifier: ReloadNotifier = one.state.reload_notifier
        await _wait(notifier.listening)
        await _wait(two.state.reload_notifier.listening)
        first.revision = "rev-e"
        assert await notifier.publish("rev-e")
        await _wait(second.changed)
    assert second.revision == "rev-e"
    assert not two.state.reload_notifier.listening.is_set()
    assert one.state.redis is not None  # opened by the lifespan from settings.redis.url


async def test_ops_lifespan_without_redis_has_no_notifier() -> None:
    app = FastAPI()
    async with ops_lifespan(app, make_settings(), Instance("x").reload, lambda: "x"):
        assert app.state.redis is None
        assert app.state.reload_notifier is None
