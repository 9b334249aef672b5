"""The operations side of the app lifespan: Redis client, rate limiter, notices.

``ops_lifespan`` opens what the settings ask for and closes it on shutdown. It
reuses ``app.state.redis`` when another stage already opened one, and closes
only what it opened itself. It does not say that shutdown is complete: the app's
lifespan does, once the pools and Redis are closed (``app.main``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.core.config import Settings
from app.core.redis import REDIS_FAILURES, SharedRedis, create_redis
from app.ops.metrics import count_redis_error
from app.ops.processes import mark_worker_exited
from app.ops.ratelimit import MemoryRateLimiter, RateLimiter, RateLimitGuard, RedisRateLimiter
from app.ops.reload_notices import CurrentRevision, OnRevision, ReloadNotifier


def _limiter(settings: Settings, client: SharedRedis | None) -> RateLimiter:
    rules = settings.ops.rate_limit
    if client is None:
        return MemoryRateLimiter(max_buckets=rules.max_buckets)
    return RedisRateLimiter(
        client, rules.key_prefix, rules.on_redis_error, settings.redis.socket_timeout
    )


@asynccontextmanager
async def ops_lifespan(
    app: FastAPI,
    settings: Settings,
    on_revision: OnRevision | None = None,
    current_revision: CurrentRevision | None = None,
) -> AsyncIterator[None]:
    """Shared state for this process; reload notices run when both callbacks are given."""
    client: SharedRedis | None = getattr(app.state, "redis", None)
    owned = client is None and settings.redis.enabled
    if client is None and settings.redis.enabled:
        client = create_redis(settings.redis)
    app.state.redis = client
    app.state.rate_limit = RateLimitGuard(settings.ops.rate_limit, _limiter(settings, client))
    notifier = None
    if client is not None and on_revision is not None and current_revision is not None:
        notifier = ReloadNotifier(
            client, settings.ops.reload_notices, on_revision, current_revision
        )
        notifier.start()
    app.state.reload_notifier = notifier
    try:
        yield
    finally:
        if notifier is not None:
            await notifier.aclose()
        if owned and client is not None:
            await client.aclose()
        mark_worker_exited()


async def redis_health(client: SharedRedis) -> tuple[bool, str]:
    """Whether Redis answers a PING now: (ok, detail) for readiness."""
    try:
        await client.ping()
    except REDIS_FAILURES as exc:
        count_redis_error("health")
        return False, f"unreachable ({type(exc).__name__})"
    return True, "reachable"
