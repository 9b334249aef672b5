"""Policy reloads across processes: announce our own, follow the others'.

A reload that swapped in a new revision for a local reason (file change, admin API)
is published on Redis; a notice from another process makes this one reload its own
files. A reload caused by a notice is never re-published, so two processes whose
files differ cannot ping-pong: the notifier's periodic check simply retries until
the files here catch up (see ``app/ops/reload_notices.py``).
"""

from __future__ import annotations

from fastapi import FastAPI

from app.authz.store import PolicyStore, ReloadListener, ReloadResult
from app.ops.metrics import count_reload_failure, set_policy_revision
from app.ops.reload_notices import OnRevision, ReloadNotifier

NOTICE_PREFIX = "notice:"


def follow_notices(store: PolicyStore) -> OnRevision:
    """The notifier's callback: reload this process's files through the gate."""

    async def on_revision(revision: str) -> None:
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
