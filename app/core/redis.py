"""One factory for the shared Redis client (``redis.asyncio``, pooled).

Timeouts are short and retries off because every caller is on a request path or
a background loop that has its own fallback: a Redis outage must turn into a
fast, documented answer (fail open or closed), never a stalled event loop.
"""

from __future__ import annotations

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

SOCKET_TIMEOUT_SECONDS = 0.5


def create_redis(url: str) -> redis.asyncio.Redis:
    """A pooled client for ``url``; connections open lazily, on first use."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=10,
    )
