"""The one way the gateway opens Redis: a pooled client for ``redis.mode``.

- ``standalone``: ``Redis.from_url(url)``.
- ``sentinel``: the primary named ``service_name``, asked of ``nodes`` (the
  sentinels) whenever a connection opens; after a failover the pool reconnects
  to the new primary by itself.
- ``cluster``: ``RedisCluster`` seeded from ``url`` and ``nodes``; it follows
  slot moves (``MOVED``) and failovers by refreshing its slot map.

Whatever the mode: short socket timeouts and at most one immediate retry, so a
request that needs Redis (a nonce claim, a rate-limit counter) fails closed
within a bounded time when Redis cannot answer, and never hangs the event loop's
callers. Code that stores state asks ``is_cluster(client)`` where every key of a
script must then share one hash tag.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from app.core.config import RedisSettings
from app.core.errors import ConfigError

SharedRedis = aioredis.Redis | aioredis.RedisCluster
"""The client every store is given: one server (or Sentinel's primary) or a Cluster."""

# RedisClusterException is not a RedisError: "no reachable node" at start-up, or the
# url's node not a cluster member; to a store, Redis not answering (not ready, 503).
REDIS_FAILURES: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    RuntimeError,
    AttributeError,
)
"""What a call on a ``SharedRedis`` raises when Redis did not answer: catch exactly these.

Besides Redis and socket errors, redis-py's asyncio cluster client can fail while it
refreshes its slot map under concurrent commands (a failover, its first use) with a
plain ``AttributeError`` or ``RuntimeError``: a pooled connection closed under a
command (redis-py#3835; reproduced here under uvloop). To a store that is Redis not
answering, so it fails closed (503), never a 500.
"""


# "scheme://user:password@" in a message (redis-py does not put the URL in its errors;
# this holds should one ever do so).
_CREDENTIALS = re.compile(r"://[^@/\s]*@")
ERROR_TEXT_LIMIT = 120


def error_text(exc: BaseException) -> str:
    """``Type: message`` of a Redis failure for logs and readiness, the message on one
    line and cut to ``ERROR_TEXT_LIMIT`` characters: Redis's own words say what is wrong
    (``NOREPLICAS``, ``NOPERM``, ``WRONGPASS``), the type alone did not. Redis messages
    carry no secrets; credentials in a URL are masked all the same."""
    message = _CREDENTIALS.sub("://***@", " ".join(str(exc).split()))
    if len(message) > ERROR_TEXT_LIMIT:
        message = message[: ERROR_TEXT_LIMIT - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def create_redis(settings: RedisSettings) -> SharedRedis:
    """A pooled client for ``settings.mode``; connections open lazily, on first use."""
    if not settings.enabled:
        raise ValueError("redis is not configured (no url, not sentinel mode)")
    if settings.mode == "sentinel":
        return _sentinel_primary(settings)
    if settings.mode == "cluster":
        return _cluster(settings)
    assert settings.url is not None  # enabled and not sentinel
    return aioredis.Redis.from_url(settings.url, **_options(settings))


def is_cluster(client: SharedRedis) -> bool:
    """Whether ``client`` spreads keys over slots (scripts then need one hash tag)."""
    return isinstance(client, aioredis.RedisCluster)


def _options(settings: RedisSettings) -> dict[str, Any]:
    """Connection options of the data nodes, the same in every mode."""
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
        "max_connections": settings.max_connections,
        # One immediate retry replaces a pooled connection that died with a restart
        # (in cluster mode: one retry after refreshing the slot map). It also re-sends a
        # command that timed out but may have run, or whose reply was lost: a write
        # script must recognise its own earlier run (a claim's token, a spend's record).
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    if settings.password_env is not None:
        options["password"] = _from_env(settings.password_env, "redis.password_env")
    return options


def _from_env(name: str, where: str) -> str:
    """The secret in environment variable ``name``; a ``ConfigError`` when it is unset or
    empty (connecting without the password would only fail later, as "not ready")."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{where}: environment variable {name} is not set")
    return value


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host, int(port)


def _cluster(settings: RedisSettings) -> aioredis.RedisCluster:
    assert settings.url is not None  # checked by RedisSettings
    seeds = [ClusterNode(*_host_port(node)) for node in settings.nodes]
    options = _options(settings)
    if seeds:
        options["startup_nodes"] = seeds
    return aioredis.RedisCluster.from_url(settings.url, **options)


class _SentinelPrimary(aioredis.Redis):
    """Sentinel's primary client that also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager: Sentinel = self.connection_pool.sentinel_manager  # type: ignore[attr-defined]  # SentinelConnectionPool's
        for sentinel in manager.sentinels:
            await sentinel.aclose()


def _sentinel_primary(settings: RedisSettings) -> aioredis.Redis:
    timeouts = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
    }
    # No retry of its own on a sentinel: Sentinel asks the next one, and the primary's
    # client retries once. Left to redis-py's default (three retries with backoff up
    # to 10 s), three sentinels that refuse took 24 s to answer one request.
    sentinel_kwargs: dict[str, Any] = {**timeouts, "retry": Retry(NoBackoff(), 0)}
    if settings.sentinel_password_env is not None:
        where = "redis.sentinel_password_env"
        sentinel_kwargs["password"] = _from_env(settings.sentinel_password_env, where)
    nodes = [_host_port(node) for node in settings.nodes]
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]  # untyped upstream
    primary: _SentinelPrimary = sentinel.master_for(
        settings.service_name, redis_class=_SentinelPrimary, db=settings.db, **_options(settings)
    )
    return primary


# A lease held by one holder, named by a random token. KEYS[1] the record; ARGV[1] the
# token (or record), ARGV[2] the lease in ms. CLAIM: the current value, or nil when ours
# was written. RENEW: 1 when the record is still ours and was extended.
CLAIM_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


# A write script's record of its own run, for redis-py's retry (``_options``): kept this
# long at least, and ``4 x redis.socket_timeout`` when that is longer. The retry is sent
# at once, within one read and one connect timeout of the first attempt; a run later
# than that is one the client already gave up on.
RETRY_RECORD_SECONDS = 10.0


def retry_record_ms(socket_timeout: float) -> int:
    """How long (ms) a script keeps the record by which a retry of it recognises its run."""
    return math.ceil(max(RETRY_RECORD_SECONDS, 4 * socket_timeout) * 1000)


def beside(key: str, suffix: str) -> str:
    """A key named after ``key`` that a Cluster keeps in ``key``'s hash slot.

    Redis hashes only a key's first ``{tag}`` when it has one (non-empty), else the
    whole key: so ``key + suffix`` when ``key`` has a tag, ``{key}`` + ``suffix`` when it
    has no brace that could end one. A key with a ``}`` but no tag, or an empty one,
    would be hashed whole, and no wrapping keeps that slot: ``ValueError``.
    """
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    if start >= 0 and end > start + 1:
        return key + suffix
    if "}" in key or not key:
        raise ValueError(f"no key beside {key!r} shares its hash slot")
    return "{" + key + "}" + suffix


async def keep_lease(
    renew: Callable[..., Awaitable[Any]],
    key: str,
    token: bytes,
    lease_ms: int,
    unreachable: Callable[[BaseException], None],
    lapsed: Callable[[], None],
) -> None:
    """Extend a lease (``renew``: ``RENEW_SCRIPT``) every third of it while its holder runs.

    A renewal Redis does not answer is reported (``unreachable``) and tried again at the
    next third; returns, after ``lapsed``, once the record is no longer the holder's.
    """
    while True:
        await asyncio.sleep(lease_ms / 3000)
        try:
            owned = await renew(keys=[key], args=[token, lease_ms])
        except REDIS_FAILURES as exc:
            unreachable(exc)
            continue
        if not owned:
            lapsed()
            return


# Background retries keep a reference here (the event loop holds only weak ones).
_RETRIES: set[asyncio.Task[None]] = set()
RETRY_PAUSE_SECONDS = 0.25


def retry_in_background(
    attempt: Callable[[], Awaitable[object]],
    within_seconds: float,
    *,
    done: Callable[[object], bool] = lambda _answer: True,
) -> None:
    """Call ``attempt`` again every 0.25 s until it is ``done``, for at most ``within_seconds``.

    For a write that must not wait on the caller's request (releasing a lock,
    settling a claim) when Redis did not answer it: a stall of a second or two
    otherwise leaves the record in place for its whole lease. ``attempt`` raises
    one of ``REDIS_FAILURES`` while Redis does not answer; ``done`` judges its answer
    (by default any answer ends the retries).
    """

    async def again() -> None:
        deadline = time.monotonic() + within_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            try:
                answer = await attempt()
            except REDIS_FAILURES:
                continue
            if done(answer):
                return

    task = asyncio.get_running_loop().create_task(again())
    _RETRIES.add(task)
    task.add_done_callback(_RETRIES.discard)


class OutageLog:
    """The log lines of something that keeps meeting a lost Redis (a background loop
    retrying every fraction of a second, the replay check of every request): a warning
    when it loses Redis, then one a minute while the outage lasts (a line each time was
    several lines a second a process, or one a request), and an info line when it is
    back. ``clock`` is monotonic; its origin does not matter (near zero on a
    freshly booted machine)."""

    def __init__(
        self,
        logger: Any,
        event: str,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._event = event
        self._every = every_seconds
        self._clock = clock
        self._since: float | None = None  # when the outage began; None: connected
        self._next = 0.0
        self.failures = 0

    def failed(self, error: str, **fields: Any) -> None:
        """Count a failure; log it if it is the outage's first or a minute has passed."""
        now = self._clock()
        self.failures += 1
        if self._since is None:
            self._since, self._next = now, now + self._every
            self._log.warning(self._event, error=error, **fields)
        elif now >= self._next:
            self._next = now + self._every
            lasted = round(now - self._since, 1)
            self._log.warning(
                self._event,
                error=error,
                still=True,
                failures=self.failures,
                for_s=lasted,
                **fields,
            )

    def recovered(self) -> None:
        if self._since is None:
            return
        lasted = round(self._clock() - self._since, 1)
        self._log.info(f"{self._event}_recovered", failures=self.failures, for_s=lasted)
        self._since, self.failures = None, 0
