"""The notifier's shutdown: it ends even when a cancel is swallowed inside the client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.core.ops_settings import ReloadNoticeSettings
from app.ops.reload_notices import ReloadNotifier

pytestmark = pytest.mark.anyio


class SwallowingPubSub:
    """A subscription whose read swallows the first cancel, as a read timeout racing
    a cancel can inside redis-py on CPython 3.11, and then waits out its timeout."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.swallowed = 0

    async def subscribe(self, _channel: str) -> None:
        return None

    async def get_message(
        self,
        ignore_subscribe_messages: bool,
        timeout: float,  # noqa: ASYNC109 - redis-py's PubSub.get_message signature
    ) -> None:
        self.reading.set()
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            await asyncio.sleep(timeout)

    async def aclose(self) -> None:
        return None


class QuietRedis:
    def __init__(self) -> None:
        self.subscription = SwallowingPubSub()

    def pubsub(self, **_options: Any) -> SwallowingPubSub:
        return self.subscription

    async def get(self, _key: str) -> None:
        return None


async def test_aclose_ends_the_listener_even_if_a_cancel_is_swallowed() -> None:
    client: Any = QuietRedis()
    settings = ReloadNoticeSettings(check_interval_seconds=3600)
    notifier = ReloadNotifier(client, settings, _unused, lambda: "rev")
    notifier.start()
    await asyncio.wait_for(client.subscription.reading.wait(), timeout=5)
    # Without cancelling again, aclose would wait out the hour-long read. (asyncio.wait
    # never cancels aclose itself, which would hand the listener a second cancel.)
    closing = asyncio.create_task(notifier.aclose())
    done, _ = await asyncio.wait([closing], timeout=5)
    if closing not in done:
        closing.cancel()  # do not leave the test's loop with a pending task
    assert closing in done, "aclose did not return: the listener still waits out its read"
    assert client.subscription.swallowed == 1


async def _unused(_revision: str) -> None:
    raise AssertionError("no revision was announced")
