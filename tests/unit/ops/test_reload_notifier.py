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


async def test_a_revision_the_local_files_do_not_give_is_tried_once_a_minute() -> None:
    """During a ConfigMap rollout a replica whose kubelet had not swapped its files yet
    ran the whole gate (suites included) on every check for about a minute."""
    client: Any = QuietRedis()
    tries: list[str] = []
    local = {"revision": "old"}

    async def reload(revision: str) -> None:
        tries.append(revision)  # its own files still hold "old"

    notifier = ReloadNotifier(client, ReloadNoticeSettings(), reload, lambda: local["revision"])
    now = {"t": 0.0}  # a freshly booted machine: the monotonic clock near zero
    notifier._clock = lambda: now["t"]
    for t in (0.0, 5.0, 30.0, 59.9):
        now["t"] = t
        await notifier._consider("new", source="periodic_check")
    assert tries == ["new"]
    now["t"] = 60.1
    await notifier._consider("new", source="periodic_check")
    assert tries == ["new", "new"]
    await notifier._consider("newer", source="notice")  # another revision: at once
    assert tries == ["new", "new", "newer"]
    local["revision"] = "newer"  # the watcher reloaded the swapped files meanwhile
    await notifier._consider("newer", source="periodic_check")
    assert tries == ["new", "new", "newer"]
