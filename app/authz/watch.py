"""Reload the policy when its files change: a polling task in the app lifespan.

Two options were weighed. ``watchfiles.awatch`` (inotify) reacts within
milliseconds but runs a native watcher thread, misses edits on some network and
overlay filesystems, and Kubernetes ConfigMap updates (an atomic symlink swap
of the parent directory) need special handling. Polling ``stat()`` of the few
policy files once a second (chosen) costs microseconds, works on every
filesystem and symlink swap, and cancels cleanly with the task; the price is up
to ``watch_interval`` seconds of latency, which is fine for policy edits.

Debounce: a change is acted on only once the files' fingerprint has been
stable for one more interval, so an editor's multi-step save or a copy of
several files triggers one reload, not a reload of a half-written directory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from app.authz.snapshot import Fingerprint, fingerprint_of
from app.authz.store import PolicyStore

log = structlog.get_logger("gateway.policy")


def fingerprint(store: PolicyStore) -> Fingerprint:
    """``fingerprint_of`` the store's files (a reload reads them as one snapshot)."""
    return fingerprint_of(store.settings)


async def watch_policy(store: PolicyStore, interval: float, seen: Fingerprint) -> None:
    """Poll forever; reload once a changed fingerprint has settled for one interval."""
    await _watch(lambda: fingerprint(store), lambda: store.reload("file_change"), interval, seen)


async def _watch(
    files: Callable[[], Fingerprint],
    on_change: Callable[[], Awaitable[object]],
    interval: float,
    seen: Fingerprint,
) -> None:
    while True:
        await asyncio.sleep(interval)
        now = files()
        if now == seen:
            continue
        await asyncio.sleep(interval)
        settled = files()
        if settled != now:
            continue  # still changing; look again next round
        seen = settled
        try:
            await on_change()
        except Exception:  # a watcher that stopped would leave later edits unseen for good
            log.exception("policy_watch_reload_failed")


@contextlib.asynccontextmanager
async def policy_watcher(store: PolicyStore, interval: float | None) -> AsyncIterator[None]:
    """Run ``watch_policy`` for the lifespan of the app; ``None`` disables it."""
    if interval is None:
        yield
        return
    # From the files as the policy in force was read (at start-up, in ``create_app``),
    # not as they are now: an edit saved before the watch began is a change too.
    tasks = [
        asyncio.create_task(watch_policy(store, interval, store.fingerprint), name="policy-watch")
    ]
    shadow = store.shadow
    if shadow is not None:  # the candidate's files too: it is re-read, never gated or enforced
        seen = shadow.fingerprint or fingerprint_of(shadow.settings)
        watcher = _watch(lambda: fingerprint_of(shadow.settings), shadow.reload, interval, seen)
        tasks.append(asyncio.create_task(watcher, name="policy-shadow-watch"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
