"""One close or reopen of an engagement at a time, across every gateway.

A close (a saga over three services) and a reopen (the reverse, over two) of one
engagement that run at once interleave their steps: a reopen between the close's
freeze and its close step leaves the engagement closed with its findings
unfrozen; two closes with different keys both freeze and both render a final
report. Each takes the engagement's lock for its whole run; one that finds it
held is refused at once with ``409 conflict`` (never queued: a caller waiting
behind a saga would hold a connection for as long as the saga's timeouts), and
runs nothing. A replayed close (same ``Idempotency-Key``, stored result) takes
no lock: it calls no service.

Two holders, chosen like the idempotency store (Redis configured or not):

- ``MemoryEngagementLocks``: this process. Enough for one instance.
- ``RedisEngagementLocks``: one key per engagement, taken by a script (set
  when absent) with a lease and a random token; renewed every third of the
  lease while the run lasts, released only by its owner (compare-and-delete),
  retried in the background for a lease when Redis does not answer the release,
  so only a gateway that died mid-run lets its lock lapse, after
  ``orchestration.idempotency_lease_seconds`` (the lease the idempotency claim
  of the same run has). Redis unreachable when taking it: 503 and nothing runs
  (fail closed, as for the idempotency key).

Each script recognises its own earlier run, which redis-py's one retry sends again
when the reply was lost or timed out (``app.core.redis``): the take finds its own
token; the renewal extends again; the release leaves its token under
``{<lock>}:released`` (the lock's hash slot on a Cluster) for
``retry_record_ms`` (10 s at least), and a release that finds the lock gone and
that record its own was already done. Without the record the retry found the lock
gone and logged ``engagement_lock_lapsed`` although nothing lapsed. Weighed
against a released lock left in place as a marker (one key, but the take of a
gateway of the previous version, during a rolling upgrade, would take the marker
for a holder and refuse with 409 until it expired): the lock's own format stays
what it was, and the record is a key that version never reads.

A lock in Redis can be lost while held: its key evicted, or Redis restarted or
failed over without the write. ``keep_lease`` notices at its next renewal (a
third of the lease) and only logs it, and a reopen sent meanwhile takes the lock
and runs beside the close. So the holder confirms the lock (``Held.confirm``: the
renewal script, which also extends the lease) right before each step that makes
the state final: the close saga before its close and publish steps, the reopen
before the unfreeze and the dropped fact. A lock not confirmed fails that step
(``503 engagement_lock_lost``): the saga undoes what it did, and the reopen
answers that it should be sent again. What remains is the time between a
confirmation and the service call it guards (one round trip), not seconds. Only
fencing tokens that the services themselves check would close it: they are not
ours to change.

The refusal's ``Retry-After`` (RFC 9110 section 10.2.3) is a constant 1 s, as for
the idempotency key's 409 "in progress" (``app.workflows.idempotency``), weighed
against a value from the lease (``idempotency_lease_seconds``, 60 s: it bounds only
a gateway that died mid-run) or from the downstream deadline (30 s, plus a close's
undo, which is not bounded by it): a close (four steps) or a reopen (two calls and
a write) usually ends well within a second, and either bound would make every
ordinary wait half a minute or more. Neither holder knows when the run began (the
Redis lock holds only the operation and a token), so no remaining time can be
given; 1 is the smallest whole delay that is not "now" (0 invites a tight loop). A
refused request cost no service call, so an extra 409 for a longer run is cheap.

Options weighed: a lock beside the idempotency record (chosen: a close and a
reopen have different keys, or none, so the key's record cannot order them)
against a lock held by the engagements service (the one place that sees both,
but it is not ours to change, and the gateway's own step, publishing the closed
fact, would stay outside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog

from app.core.errors import Conflict, ServiceUnavailable
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

log = structlog.get_logger("gateway.engagement_lock")


# Whole seconds a close or reopen refused by a running one is asked to wait (409).
BUSY_RETRY_AFTER_SECONDS = 1


class EngagementBusy(Conflict):
    """Another close or reopen of the engagement is running (409, ``Retry-After: 1``)."""

    def __init__(self, engagement_id: str, running: str) -> None:
        super().__init__(
            f"A {running} of {engagement_id} is running; send this request again when it ends.",
            headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
        )


class EngagementLockUnavailable(ServiceUnavailable):
    """The shared lock cannot be taken: nothing runs (503)."""

    code = "engagement_lock_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "The engagement's lock cannot be taken right now; retry shortly.",
            headers={"Retry-After": "1"},
        )


class EngagementLockLost(ServiceUnavailable):
    """The lock was no longer this run's when a step checked it: that step does not run.

    Built like any ``GatewayError`` (``lock_lost()``), so a saga that fails on it says in
    its detail how far it was undone.
    """

    code = "engagement_lock_lost"


def lock_lost() -> EngagementLockLost:
    return EngagementLockLost(
        "The engagement's lock could not be confirmed (the shared state lost it or did not "
        "answer), so the operation stopped; send it again.",
        headers={"Retry-After": "1"},
    )


class Held(Protocol):
    async def confirm(self) -> None:
        """Raise ``EngagementLockLost`` unless the lock is still this holder's."""
        ...


class EngagementLocks(Protocol):
    def hold(
        self, engagement_id: str, operation: str
    ) -> contextlib.AbstractAsyncContextManager[Held]:
        """Hold the engagement's lock for the block; ``EngagementBusy`` when another does."""
        ...


class _HeldInProcess:
    """A lock of this process: nothing else can release or take it while the block runs."""

    async def confirm(self) -> None:
        return None


_IN_PROCESS = _HeldInProcess()


class MemoryEngagementLocks:
    """The engagements whose close or reopen runs in this process."""

    def __init__(self) -> None:
        self._running: dict[str, str] = {}

    def running(self, engagement_id: str) -> str | None:
        """The operation holding the engagement's lock, if any."""
        return self._running.get(engagement_id)

    @contextlib.asynccontextmanager
    async def hold(self, engagement_id: str, operation: str) -> AsyncIterator[Held]:
        running = self._running.get(engagement_id)
        if running is not None:
            raise EngagementBusy(engagement_id, running)
        self._running[engagement_id] = operation
        try:
            yield _IN_PROCESS
        finally:
            del self._running[engagement_id]


# The lock is taken and renewed by CLAIM_SCRIPT and RENEW_SCRIPT (app.core.redis).
# KEYS[1] the lock, KEYS[2] its release record (same slot); ARGV[1] our token, ARGV[2] the
# record's life in ms. Only the owner releases (a lapsed lease is not ours). 1: released
# now; 2: released by this token's earlier run (redis-py's retry after a lost reply); 0:
# not ours, the lease lapsed.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 2 end
return 0
"""
_SEPARATOR = b"|"


class RedisEngagementLocks:
    """One lock per engagement, shared by every gateway process through Redis."""

    PREFIX = "gateway:engagement-lock:"

    def __init__(
        self, client: SharedRedis, lease_seconds: float, socket_timeout: float = 0.5
    ) -> None:
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._record_ms = retry_record_ms(socket_timeout)
        self._take = client.register_script(CLAIM_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    @classmethod
    def key(cls, engagement_id: str) -> str:
        return cls.PREFIX + hashlib.sha256(engagement_id.encode()).hexdigest()

    @staticmethod
    def released_key(key: str) -> str:
        """Where a release records its token: in the lock's hash slot on a Cluster."""
        return beside(key, ":released")

    @contextlib.asynccontextmanager
    async def hold(self, engagement_id: str, operation: str) -> AsyncIterator[Held]:
        key = self.key(engagement_id)
        # The token names the operation, so a refused caller learns what it waits for.
        token = operation.encode() + _SEPARATOR + secrets.token_hex(16).encode()
        try:
            taken = await self._take(keys=[key], args=[token, self._lease_ms])
        except REDIS_FAILURES as exc:
            self._unreachable(exc)
            raise EngagementLockUnavailable() from None
        # The holder's token, or nil (ours now). Our own token: redis-py retried a take
        # whose first answer was lost.
        if taken is not None and taken != token:
            raise EngagementBusy(engagement_id, _operation(taken))
        renewal = asyncio.create_task(
            keep_lease(self._renew, key, token, self._lease_ms, self._unreachable, self._lapsed)
        )
        try:
            yield _HeldInRedis(self, key, token)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await self._give_back(key, token)

    def _lapsed(self) -> None:
        log.warning("engagement_lock_lapsed", lease_ms=self._lease_ms)

    async def confirm(self, key: str, token: bytes) -> None:
        """The lock is still ``token``'s (its lease extended), or ``EngagementLockLost``."""
        try:
            owned = await self._renew(keys=[key], args=[token, self._lease_ms])
        except REDIS_FAILURES as exc:
            self._unreachable(exc)
            raise lock_lost() from None
        if not owned:
            self._lapsed()
            raise lock_lost()

    async def _give_back(self, key: str, token: bytes) -> None:
        """Release; when Redis does not answer, again in the background until the lease
        would have lapsed anyway (a stall must not hold the engagement for a lease)."""
        keys = [key, self.released_key(key)]
        args: list[bytes | int] = [token, self._record_ms]
        try:
            owned = await self._release(keys=keys, args=args)
        except REDIS_FAILURES as exc:
            self._unreachable(exc)
            retry_in_background(lambda: self._release(keys=keys, args=args), self._lease_ms / 1000)
            return
        if not owned:
            self._lapsed()

    @staticmethod
    def _unreachable(exc: BaseException) -> None:
        log.warning("engagement_lock_unreachable", error=type(exc).__name__)
        count_redis_error("engagement_lock")


class _HeldInRedis:
    __slots__ = ("_key", "_locks", "_token")

    def __init__(self, locks: RedisEngagementLocks, key: str, token: bytes) -> None:
        self._locks, self._key, self._token = locks, key, token

    async def confirm(self) -> None:
        await self._locks.confirm(self._key, self._token)


def _operation(value: Any) -> str:
    """The operation a lock's token names ("close", "reopen"), or a neutral word."""
    if isinstance(value, bytes):
        name = value.partition(_SEPARATOR)[0].decode("ascii", "replace")
        if name in ("close", "reopen"):
            return name
    return "close or reopen"
