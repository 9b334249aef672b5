"""Policy reloads across processes: announce our own, follow the others'.

A reload that swapped in a new revision for a local reason (file change, admin API)
is published on Redis; a notice from another process makes this one reload its own
files. A reload caused by a notice is never re-published, so two processes whose
files differ cannot ping-pong: the notifier's periodic check simply retries until
the files here catch up (see ``app/ops/reload_notices.py``).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from app.authz.snapshot import fingerprint_of
from app.authz.store import PolicyStore, ReloadListener, ReloadResult
from app.ops.metrics import count_reload_failure, set_policy_revision
from app.ops.reload_notices import OnRevision, ReloadNotifier

NOTICE_PREFIX = "notice:"


def follow_notices(store: PolicyStore) -> OnRevision:
    """The notifier's callback: reload this process's files through the gate.

    Not when they are the very files the policy in force was read from (same names,
    sizes, times and inodes): their revision is the one in force, so the announced one
    cannot come of them, and the gate (a build and every suite: about a second for a
    100k-line policy) would run again for nothing at each retry. A revision announced
    once and never reached here (a rolling deploy whose new files this process does
    not have, a key Redis keeps from an older deployment) cost that once a minute.
    """

    async def on_revision(revision: str) -> None:
        if await asyncio.to_thread(fingerprint_of, store.settings) == store.fingerprint:
            return  # the notifier logs policy_revision_not_in_local_files and waits
        await store.reload(f"{NOTICE_PREFIX}{revision}")

    return on_revision


def announcer(app: FastAPI) -> ReloadListener:
    """A ``PolicyStore`` listener: metrics for every reload, a notice for local swaps."""

    async def announce(result: ReloadResult) -> None:
        if result.outcome == "rejected":
            count_reload_failure()
            return
        set_policy_revision(result.revision)
        notifier: ReloadNotifier | None = getattr(app.state, "reload_notifier", None)
        local = not result.reason.startswith(NOTICE_PREFIX)
        if notifier is not None and result.outcome == "swapped" and local:
            await notifier.publish(result.revision)

    return announce
