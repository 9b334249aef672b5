"""A stub's server stopping: the requests the stub itself holds end before uvicorn cancels.

A stub stops as ``gateway stub`` promises: requests in flight get ``SHUTDOWN_SECONDS``,
then are cut off unanswered. uvicorn does the cutting with its graceful-shutdown
timeout, and says so at error level ("Cancel N running task(s), timeout graceful
shutdown exceeded"): on every stop of a stub holding a request (a hang, a latency
longer than the grace, a slow body), the normal end of many integration tests. The
line cannot be told from a real stall, and the process gives uvicorn no way to
lower it; filtering it out of ``uvicorn.error`` would hide the gateway's own line in
a process that serves both (the tests do).

So the stub ends what it holds itself, when the stop begins (``StubServer.shutdown``
calls ``Stopping.begin`` before uvicorn's own shutdown): a hold that would end within
``GRACE_SECONDS`` runs its course and its request is served, as before; a longer one
ends at once, and its request is cut off as uvicorn would have (a bare ``503`` head, the
connection closed), without a cancellation. A slow body's pauses end (the rest of the
body goes at once). uvicorn's timeout still bounds what the stub does not hold: a
client that never finishes sending its body is cut off by it, with its line (that
client, not the stub, kept the request open).
"""

from __future__ import annotations

import asyncio

# What a held request may still take once the stop begins and be served: under the
# server's SHUTDOWN_SECONDS, so its answer is sent before uvicorn's timeout.
GRACE_SECONDS = 1.0


class Stopping:
    """Whether the stub's server is stopping, and the waits that a stop ends."""

    def __init__(self) -> None:
        self._begun = asyncio.Event()
        self._deadline: float | None = None  # loop time: holds ending later are cut short

    @property
    def begun(self) -> bool:
        return self._begun.is_set()

    def begin(self, grace: float = GRACE_SECONDS) -> None:
        """The server stops: holds ending after ``grace`` seconds from now end at once."""
        if not self.begun:
            self._deadline = asyncio.get_running_loop().time() + grace
            self._begun.set()

    async def hold(self, seconds: float, release: asyncio.Event | None = None) -> bool:
        """Wait ``seconds`` or until ``release`` is set: ``True``, the request goes on.
        ``False`` when the stop ended it first: the request is to be cut off."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        events = [self._begun] if release is None else [self._begun, release]
        await _first_of(events, seconds)
        if release is not None and release.is_set():
            return True
        if not self.begun or loop.time() >= end:
            return True
        assert self._deadline is not None  # set with _begun
        if end > self._deadline:
            return False
        await _first_of([release] if release is not None else [], end - loop.time())
        return True

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``; not at all once the stop has begun."""
        await _first_of([self._begun], seconds)


async def _first_of(events: list[asyncio.Event], seconds: float) -> None:
    """Until one of ``events`` is set, or ``seconds`` have passed (a sleep without any)."""
    if not events:
        await asyncio.sleep(seconds)
        return
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
