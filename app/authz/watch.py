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

from app.authz.store import PolicyStore, policy_files
from app.core.config import PolicySettings

log = structlog.get_logger("gateway.policy")

Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def fingerprint(store: PolicyStore) -> Fingerprint:
    """Name, size, mtime, ctime and inode of every policy file (missing files count too).

    The ctime is there for a change of mode or owner alone: a file the gateway could
    not read (a save with mode 600 by another user) that an admin then makes readable
    with ``chmod`` keeps its size, mtime and inode, and the reload it needs would
    otherwise never come (the last good policy stayed, with "Permission denied").
    """
    return settings_fingerprint(store.settings)


def settings_fingerprint(settings: PolicySettings) -> Fingerprint:
    entries = []
    for path in policy_files(settings):
        try:
            stat = path.stat()
            entries.append(
                (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
            )
        except OSError:
            entries.append((str(path), -1, -1, -1, -1))
    return tuple(entries)


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
    # Fingerprint now, not when the task first runs, so an edit in between is seen.
    tasks = [
        asyncio.create_task(watch_policy(store, interval, fingerprint(store)), name="policy-watch")
    ]
    shadow = store.shadow
    if shadow is not None:  # the candidate's files too: it is re-read, never gated or enforced
        seen = settings_fingerprint(shadow.settings)
        watcher = _watch(
            lambda: settings_fingerprint(shadow.settings), shadow.reload, interval, seen
        )
        tasks.append(asyncio.create_task(watcher, name="policy-shadow-watch"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
