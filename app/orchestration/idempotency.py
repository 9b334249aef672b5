"""Idempotency keys (draft-ietf-httpapi-idempotency-key-header) for gateway writes.

The first request with a key runs the operation; a retry with the same key and
the same request gets the first result again without running anything; the same
key with a different request is a 422, and a retry while the first is still
running is a 409. Failures are not remembered, so a failed request may be
retried. Keys are scoped by caller and operation, held in memory for a TTL (one
process; a shared store is the scale-out step, as for nonces).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app.core.errors import BadRequest, Conflict, IdempotencyKeyReused

HEADER = "idempotency-key"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
T = TypeVar("T")


def require_key(value: str | None) -> str:
    """The request's key; 400 when it is missing or malformed."""
    if value is None:
        raise BadRequest("This operation requires an Idempotency-Key header.")
    if not KEY_PATTERN.match(value):
        raise BadRequest("The Idempotency-Key must be 8-128 characters of [A-Za-z0-9._:-].")
    return value


@dataclass
class _Entry:
    fingerprint: str
    expires_at: float
    result: Any = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class IdempotencyStore:
    """First result per (scope, key) for ``ttl_seconds``."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()

    def _evict(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                return
            self._entries.popitem(last=False)

    async def run(
        self, scope: tuple[str, ...], fingerprint: str, operation: Callable[[], Awaitable[T]]
    ) -> tuple[T, bool]:
        """``(result, replayed)``: run once per key, replay the stored result afterwards."""
        now = self._clock()
        self._evict(now)
        entry = self._entries.get(scope)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise IdempotencyKeyReused("The key was used with a different request.")
            if not entry.done.is_set():
                raise Conflict("A request with this Idempotency-Key is still in progress.")
            return entry.result, True
        entry = _Entry(fingerprint, now + self._ttl)
        self._entries[scope] = entry
        try:
            entry.result = await operation()
        except BaseException:
            self._entries.pop(scope, None)
            raise
        entry.done.set()
        return entry.result, False
