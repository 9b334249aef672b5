"""The one way the gateway opens a Redis connection pool.

Short socket timeouts and at most one immediate retry: a request that needs
Redis (a nonce claim, a rate-limit counter) must fail closed within a bounded
time when Redis is down, never hang the event loop's callers.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.core.config import RedisSettings


def create_redis(url: str, settings: RedisSettings | None = None) -> aioredis.Redis:
    """A pooled ``redis.asyncio.Redis`` for ``url``; connections open lazily."""
    settings = settings or RedisSettings(url=url)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.socket_timeout,
        max_connections=settings.max_connections,
        # One immediate retry replaces a pooled connection that died with a restart.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
