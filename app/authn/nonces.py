"""Replay protection: each (key id, nonce) is accepted once while its signature could be.

A nonce is claimed only after the signature's MAC and digest verified, so
unauthenticated traffic can never fill the store. Its time to live is how long
the signature stays acceptable (until ``created + skew``, or ``expires`` if
sooner), so a replay inside the window always finds it.

Two stores, one ``NonceStore`` protocol, chosen by ``redis.url``:

- ``MemoryNonceStore`` serves one process: a dict plus an expiry heap, bounded
  by ``signing.nonce_capacity``. When full it refuses (503) instead of evicting:
  evicting an unexpired nonce would reopen replay for it. Cheap and dependency
  free, but two gateway processes would each accept the same nonce once.
- ``RedisNonceStore`` serves many processes: one ``SET key 1 NX EX ttl`` per
  request (atomic, expiry done by Redis). It costs a loopback round trip and a
  dependency on Redis being up; when Redis cannot answer, the request gets 503.
  Accepting unchecked would let a replay through exactly when an attacker can
  disturb Redis, so the store fails closed.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app.core.config import Settings
from app.core.errors import ServiceUnavailable
from app.core.redis import create_redis

log = structlog.get_logger("gateway.authn")

RETRY_AFTER_SECONDS = "1"


class NonceStoreUnavailable(ServiceUnavailable):
    """The replay check cannot answer (store full or unreachable): fail closed with 503."""

    code = "replay_check_unavailable"
    title = "Service unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The request cannot be checked for replay right now; retry shortly.",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )


class NonceStore(Protocol):
    """Remembers (key id, nonce) pairs for a time to live."""

    async def claim(self, key_id: str, nonce: str, ttl_seconds: int) -> bool:
        """``True`` the first time a pair is seen within its TTL, ``False`` for a replay."""
        ...

    async def check(self) -> tuple[bool, str]:
        """Readiness: whether the store can answer, and a short description."""
        ...

    async def aclose(self) -> None: ...


class MemoryNonceStore:
    """One process's nonces: bounded, TTL-based, never evicts an unexpired nonce."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self._clock = clock
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    async def claim(self, key_id: str, nonce: str, ttl_seconds: int) -> bool:
        now = self._clock()
        self._purge(now)
        pair = (key_id, nonce)
        if pair in self._expiry:
            return False
        if len(self._expiry) >= self.capacity:
            log.warning("nonce_store_full", capacity=self.capacity)
            raise NonceStoreUnavailable()
        expires_at = now + ttl_seconds
        self._expiry[pair] = expires_at
        heapq.heappush(self._heap, (expires_at, pair))
        return True

    def _purge(self, now: float) -> None:
        # A pair is inserted only when absent, so heap and dict entries are one to one.
        while self._heap and self._heap[0][0] <= now:
            _, pair = heapq.heappop(self._heap)
            del self._expiry[pair]

    async def check(self) -> tuple[bool, str]:
        self._purge(self._clock())
        return len(self) < self.capacity, f"memory, {len(self)}/{self.capacity} nonces held"

    async def aclose(self) -> None:
        self._expiry.clear()
        self._heap.clear()


class RedisNonceStore:
    """Nonces shared by every gateway process through one Redis."""

    PREFIX = "gateway:nonce:"

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    @classmethod
    def key(cls, key_id: str, nonce: str) -> str:
        # Length-prefixing the key id keeps ("a:b", "c") and ("a", "b:c") apart.
        return f"{cls.PREFIX}{len(key_id)}:{key_id}:{nonce}"

    async def claim(self, key_id: str, nonce: str, ttl_seconds: int) -> bool:
        try:
            created = await self._client.set(self.key(key_id, nonce), b"1", nx=True, ex=ttl_seconds)
        except (RedisError, OSError) as exc:
            log.warning("nonce_store_unreachable", error=type(exc).__name__)
            raise NonceStoreUnavailable() from None
        return bool(created)

    async def check(self) -> tuple[bool, str]:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            return False, f"redis unreachable ({type(exc).__name__})"
        return True, "redis"

    async def aclose(self) -> None:
        await self._client.aclose()


def create_nonce_store(settings: Settings) -> NonceStore:
    """Redis when ``redis.url`` is set (shared by all processes), else in-memory."""
    if settings.redis.url:
        return RedisNonceStore(create_redis(settings.redis.url, settings.redis))
    return MemoryNonceStore(settings.signing.nonce_capacity)
