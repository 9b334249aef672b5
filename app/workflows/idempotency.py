"""Idempotency keys (draft-ietf-httpapi-idempotency-key-header) for gateway writes.

The first request with a key runs the operation; a retry with the same key and
the same request gets the first result again without running anything; the same
key with a different request is a 422, and a retry while the first is still
running is a 409 with ``Retry-After: 1``. Failures are not remembered, so a failed
request may be retried. Keys are scoped by caller and operation and kept for a TTL.

The 409's ``Retry-After`` (RFC 9110 section 10.2.3, delta-seconds) is a constant 1 s,
weighed against a value derived from the lease (``idempotency_lease_seconds``, 60 s)
or from the request's downstream deadline (30 s): a run usually ends well under a
second, and the lease only bounds a gateway that died mid-run, so either would make
every ordinary wait a minute or half of one; 1 is the smallest whole delay that is
not "now" (0 invites a tight loop), the cost a second 409 for a run that takes longer.
Neither store knows when the run started (the Redis record holds no start time), so
a remaining time could not be given either.

Two stores, chosen like the nonce store (Redis configured or not):

- ``MemoryIdempotencyStore``: one process. Enough for one instance; with several,
  a client's retry that a load balancer sends to another instance would run the
  operation again. Bounded by ``orchestration.idempotency_capacity`` keys: when
  full (after dropping expired keys) a new key is a 503 and nothing runs, like the
  memory nonce store; evicting an unexpired key would let its retry run again.
- ``RedisIdempotencyStore``: every instance shares one record per key (a script's
  keys share the record's hash slot, so it runs unchanged on a Redis Cluster). A claim
  (``running`` with a lease) and the stored result are single Lua scripts, so two
  instances racing on one key cannot both run it; the claim's lease is renewed
  while the run lasts, so only a gateway that died mid-run lets it lapse. Redis
  unreachable before the operation: 503 and nothing runs (never run unclaimed:
  that is the double application the key exists to prevent). Unreachable after it: the caller gets
  the result, and the claim lapses with its lease (``idempotency_lease_seconds``),
  after which a retry runs again (the close saga then finds the engagement
  closed: 409).

Each script recognises its own earlier run, which redis-py's one retry sends again
when the reply was lost or timed out (``app.core.redis``): the claim finds its own
running record, the renewal extends again, and the settle (the result stored, or a
failure forgotten) leaves its running record under ``{<record>}:settled`` (the
record's slot) for ``retry_record_ms`` (10 s at least); a settle that finds the claim
gone or done and that mark its own was already done. Without it the retry logged
``idempotency_lease_lapsed`` although nothing lapsed. Weighed against comparing the
stored result with the one being settled (nothing to compare once a failure is
forgotten) and against a token inside the done record (a gateway of the previous
version would read the token as part of the result during a rolling upgrade): the
records keep their format, and the mark is a key that version never reads.

Options weighed for the shared store: a Redis record per key (chosen: one round
trip to claim, one to finish, the same Redis and failure mode as nonces and rate
limits) against a lock (``SET NX`` with a lease) beside a separate result key
(two keys to keep consistent, and a reader can see the lock gone before the
result is written).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

from app.authn.identity import IDEMPOTENCY_KEY_HEADER
from app.core.errors import (
    BadRequest,
    Conflict,
    IdempotencyKeyReused,
    ServiceUnavailable,
)
from app.core.redis import (
    CLAIM_SCRIPT,
    REDIS_FAILURES,
    RENEW_SCRIPT,
    SharedRedis,
    beside,
    keep_lease,
    retry_in_background,
    retry_record_ms,
)
from app.ops.metrics import count_redis_error

HEADER = IDEMPOTENCY_KEY_HEADER
# Whole seconds a retry of a key whose first request still runs is asked to wait (409).
IN_PROGRESS_RETRY_AFTER_SECONDS = 1
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
T = TypeVar("T")
log = structlog.get_logger("gateway.idempotency")


def _not_renewed(exc: BaseException) -> None:
    log.warning("idempotency_lease_not_renewed", error=type(exc).__name__)
    count_redis_error("idempotency")


def scoped_key(prefix: str, *parts: str) -> str:
    """The ``Idempotency-Key`` a service gets for a caller's: ``prefix-`` and 48 hex digits
    of a SHA-256 over ``parts`` (each length-prefixed), so no other caller's key meets it."""
    joined = "\x1f".join(f"{len(part)}:{part}" for part in parts)
    return f"{prefix}-{hashlib.sha256(joined.encode()).hexdigest()[:48]}"


def require_key(value: str | None) -> str:
    """The request's key; 400 when it is missing or malformed."""
    if value is None:
        raise BadRequest("This operation requires an Idempotency-Key header.")
    if not KEY_PATTERN.fullmatch(value):
        raise BadRequest("The Idempotency-Key must be 8-128 characters of [A-Za-z0-9._:-].")
    return value


def in_progress() -> Conflict:
    """The 409 of a key whose first request still runs: send it again after a second."""
    return Conflict(
        "A request with this Idempotency-Key is still in progress.",
        headers={"Retry-After": str(IN_PROGRESS_RETRY_AFTER_SECONDS)},
    )


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a result is stored outside the process (the Redis store) and read back."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


class IdempotencyStoreUnavailable(ServiceUnavailable):
    """The shared store cannot answer: the operation is not run (503)."""

    code = "idempotency_store_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The request's Idempotency-Key cannot be checked right now; retry shortly.",
            headers={"Retry-After": "1"},
        )


class IdempotencyStore(Protocol):
    async def run(
        self,
        scope: tuple[str, ...],
        fingerprint: str,
        operation: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> tuple[T, bool]:
        """``(result, replayed)``: run once per key, replay the stored result afterwards."""
        ...


@dataclass
class _Entry:
    fingerprint: str
    expires_at: float
    result: Any = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryIdempotencyStore:
    """First result per (scope, key) for ``ttl_seconds``, in this process."""

    def __init__(
        self,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 100_000,
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                return
            self._entries.popitem(last=False)

    async def run(
        self,
        scope: tuple[str, ...],
        fingerprint: str,
        operation: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> tuple[T, bool]:
        """``(result, replayed)``; the result is kept as is (``codec`` is not needed here)."""
        now = self._clock()
        self._evict(now)
        entry = self._entries.get(scope)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                raise IdempotencyKeyReused("The key was used with a different request.")
            if not entry.done.is_set():
                raise in_progress()
            return entry.result, True
        if len(self._entries) >= self.capacity:
            # Every stored result stays for the TTL: without a bound, keyed writes (each a
            # result of up to a service's answer) grew the process until it died.
            log.warning("idempotency_store_full", capacity=self.capacity)
            raise IdempotencyStoreUnavailable()
        entry = _Entry(fingerprint, now + self._ttl)
        self._entries[scope] = entry
        try:
            entry.result = await operation()
        except BaseException:
            self._entries.pop(scope, None)
            raise
        entry.done.set()
        return entry.result, False


# CLAIM_SCRIPT and RENEW_SCRIPT (app.core.redis) hold a key's claim as a lease.
# KEYS[1] the record, KEYS[2] its settle record (same slot); ARGV[1] our running record,
# ARGV[2] the done record ('' = forget), ARGV[3] its TTL in ms, ARGV[4] the settle record's
# life in ms. Only the claim's owner may finish it (a lapsed lease is not ours). 1: settled
# now; 2: settled by this run's earlier call (redis-py's retry after a lost reply); 0:
# not ours, the lease lapsed.
FINISH_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('GET', KEYS[2]) == ARGV[1] then return 2 end
  return 0
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
return 1
"""
_RUNNING, _DONE = b"R", b"D"
_DIGEST = 64  # hex sha-256 of the request fingerprint, right after the state byte


class RedisIdempotencyStore:
    """First result per (scope, key), shared by every gateway process through Redis."""

    PREFIX = "gateway:idempotency:"

    def __init__(
        self,
        client: SharedRedis,
        ttl_seconds: float,
        lease_seconds: float,
        socket_timeout: float = 0.5,
    ) -> None:
        self._ttl_ms = int(ttl_seconds * 1000)
        self._record_ms = retry_record_ms(socket_timeout)
        # At least 1 ms: ``PX 0`` is an error in Redis (a lease under 1 ms is a valid setting).
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._finish = client.register_script(FINISH_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)

    @classmethod
    def key(cls, scope: tuple[str, ...]) -> str:
        # Hashed: bounded length, and no subject or engagement names in Redis key space.
        joined = "\x1f".join(f"{len(part)}:{part}" for part in scope)
        return cls.PREFIX + hashlib.sha256(joined.encode()).hexdigest()

    @staticmethod
    def settled_key(key: str) -> str:
        """Where a settle records its run: in the record's hash slot on a Cluster."""
        return beside(key, ":settled")

    async def run(
        self,
        scope: tuple[str, ...],
        fingerprint: str,
        operation: Callable[[], Awaitable[T]],
        codec: Codec[T],
    ) -> tuple[T, bool]:
        """``(result, replayed)``; 503 without running anything when Redis cannot answer."""
        key = self.key(scope)
        digest = hashlib.sha256(fingerprint.encode()).hexdigest().encode()
        running = _RUNNING + digest + secrets.token_hex(16).encode()
        existing = await self._call(self._claim, [key], [running, self._lease_ms])
        # Our own record: redis-py retried a claim whose first answer was lost.
        if existing is not None and existing != running:
            return self._replay(existing, digest, codec), True
        renewal = asyncio.create_task(self._keep_claim(key, running))
        try:
            result = await operation()
        except BaseException:
            renewal.cancel()
            await self._settle(key, running, b"")
            raise
        renewal.cancel()
        await self._settle(key, running, _DONE + digest + codec.encode(result))
        return result, False

    async def _keep_claim(self, key: str, running: bytes) -> None:
        """Extend the lease every third of it while the run lasts: a live run is never rerun.

        The lease then only bounds how long a gateway that died mid-run blocks the key.
        """
        await keep_lease(self._renew, key, running, self._lease_ms, _not_renewed, self._lapsed)

    def _lapsed(self) -> None:
        log.warning("idempotency_lease_lapsed", lease_ms=self._lease_ms)

    @staticmethod
    def _replay(record: bytes, digest: bytes, codec: Codec[T]) -> T:
        if record[1 : 1 + _DIGEST] != digest:
            raise IdempotencyKeyReused("The key was used with a different request.")
        if record[:1] != _DONE:
            raise in_progress()
        try:
            return codec.decode(record[1 + _DIGEST :])
        except ValueError:  # written by another version: replaying is impossible, rerunning unsafe
            log.warning("idempotency_record_unreadable")
            raise Conflict(
                "The result stored for this Idempotency-Key cannot be read; use a new key."
            ) from None

    async def _settle(self, key: str, running: bytes, done: bytes) -> None:
        """Store the result (or forget a failure). When Redis does not answer, again in the
        background until the lease would lapse: a stall must not leave the key "in
        progress" (409) for a whole lease when a second later it could be settled."""
        keys = [key, self.settled_key(key)]
        args: list[Any] = [running, done, self._ttl_ms, self._record_ms]
        try:
            owned = await self._call(self._finish, keys, args)
        except IdempotencyStoreUnavailable:  # logged by _call
            retry_in_background(lambda: self._finish(keys=keys, args=args), self._lease_ms / 1000)
            return
        if not owned:
            self._lapsed()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except REDIS_FAILURES as exc:
            log.warning("idempotency_store_unreachable", error=type(exc).__name__)
            count_redis_error("idempotency")
            raise IdempotencyStoreUnavailable() from None
