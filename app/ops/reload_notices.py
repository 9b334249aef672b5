"""Policy-revision notices between gateway processes, over Redis.

``ReloadNotifier.publish(revision)`` records the revision under a key and
publishes it on a channel. Every process subscribes; when a revision it hears
differs from ``current_revision()`` it calls ``on_revision(revision)`` (wired to
``PolicyStore.reload``). Pub/sub drops messages while a subscriber is
disconnected, so each process also reads the key on every (re)connect and every
``check_interval_seconds``: a missed notice is picked up at the next check, and
a reload that failed (files not yet in place) is retried there too.

On a Redis Cluster the notice is plain pub/sub, which the cluster broadcasts to
every node, so a subscriber hears it whichever node it is connected to (the
client subscribes on the node that serves the channel's slot, the same one that
holds the revision key). Sharded pub/sub (``SSUBSCRIBE``, Redis 7) would keep
the notice inside that shard; for a message a deployment sends a few times a
day the broadcast costs nothing, and plain pub/sub runs unchanged on every mode
and Redis version (decision 0010).

The callback decides what "in force" means; this module only carries revisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from app.core.ops_settings import ReloadNoticeSettings
from app.core.redis import REDIS_FAILURES, OutageLog, SharedRedis
from app.ops.metrics import count_redis_error

log = structlog.get_logger("gateway.reload_notices")

OnRevision = Callable[[str], Awaitable[None]]
CurrentRevision = Callable[[], str]
RECONNECT_DELAY_SECONDS = 0.5
CANCEL_GRACE_SECONDS = 0.1
UNREACHED_RETRY_SECONDS = 60.0


class ReloadNotifier:
    """Publishes this process's policy revisions and acts on other processes' ones."""

    def __init__(
        self,
        client: SharedRedis,
        settings: ReloadNoticeSettings,
        on_revision: OnRevision,
        current_revision: CurrentRevision,
    ) -> None:
        self._client = client
        self._channel = settings.channel
        self._interval = settings.check_interval_seconds
        self._on_revision = on_revision
        self._current = current_revision
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # subscribed and caught up; cleared while down
        self._outage = OutageLog(log, "policy_notice_listener_disconnected")
        # An announced revision this process's own files did not give (a ConfigMap the
        # kubelet has not swapped here yet): tried again at most once a minute, not on
        # every check (each try runs the whole gate, suites included); the file watcher
        # reloads as soon as the files change.
        self._unreached: tuple[str, float] | None = None
        self._clock = time.monotonic

    async def publish(self, revision: str) -> bool:
        """Announce ``revision`` to every process; ``False`` if Redis is unreachable."""
        try:
            await self._client.set(self._channel, revision)
            await self._client.publish(self._channel, revision)
        except REDIS_FAILURES as exc:
            count_redis_error("reload_notices")
            log.warning("policy_notice_publish_failed", revision=revision, error=type(exc).__name__)
            return False
        return True

    def start(self) -> None:
        """Listen in the background until ``aclose()``."""
        self._task = asyncio.create_task(self._run(), name="policy-reload-notices")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        # Cancel until the task ends: a cancel that lands on the read timeout inside
        # redis-py's get_message can be swallowed (CPython 3.11 asyncio.timeout), and the
        # listener would then wait a whole check interval before it looked again.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_GRACE_SECONDS)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.warning("policy_notice_listener_failed", error=type(task.exception()).__name__)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except REDIS_FAILURES as exc:
                count_redis_error("reload_notices")
                self._outage.failed(type(exc).__name__)
                await asyncio.sleep(min(RECONNECT_DELAY_SECONDS, self._interval))
                # A plain read before subscribing again: after a failover it makes a
                # cluster client refresh its slot map, so the subscription is not sent
                # to the node that is gone (a subscription alone never refreshes it).
                with contextlib.suppress(*REDIS_FAILURES):
                    await self._client.get(self._channel)

    async def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            await self._check()  # catch up on whatever was announced while disconnected
            self._outage.recovered()
            self.listening.set()
            next_check = time.monotonic() + self._interval
            while True:
                wait = max(0.01, next_check - time.monotonic())
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                if message is not None and message["type"] == "message":
                    await self._consider(_text(message["data"]), source="notice")
                if time.monotonic() >= next_check:
                    await self._check()
                    next_check = time.monotonic() + self._interval
        finally:
            self.listening.clear()
            with contextlib.suppress(*REDIS_FAILURES):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream

    async def _check(self) -> None:
        announced = await self._client.get(self._channel)
        if announced is not None:
            await self._consider(_text(announced), source="periodic_check")

    async def _consider(self, revision: str, source: str) -> None:
        if revision == self._current():
            self._unreached = None
            return
        unreached = self._unreached
        if unreached is not None and unreached[0] == revision and self._clock() < unreached[1]:
            return
        log.info("policy_revision_announced", revision=revision, source=source)
        try:
            await self._on_revision(revision)
        except Exception:  # the callback's failure must not stop the listener
            log.exception("policy_revision_callback_failed", revision=revision)
            return  # tried again at the next check
        if self._current() != revision:
            self._unreached = (revision, self._clock() + UNREACHED_RETRY_SECONDS)
            log.info(
                "policy_revision_not_in_local_files",
                revision=revision,
                current=self._current(),
                retry_in_s=UNREACHED_RETRY_SECONDS,
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
