"""Closed engagements shared by every gateway on one Redis (``app/authz/closed.py``).

A hash of facts and a version counter under one hash tag, written by Lua
scripts (atomic, one slot in a Cluster); a change notice on pub/sub makes every
process re-read at once, and a version check every ``check_interval_seconds``
catches notices lost while disconnected (and a publish that failed: a process's own
write therefore never counts as the version seen, which would hide another's change
made before it). A read that Redis answered before a write of this process, handled
after it, is made again rather than undo the write in the snapshot: a close just
reported done was open here until the next read. Reads run one at a time: of two at
once, the older answer could be handled last and undo the newer. A process never
drops a closed fact because Redis cannot answer: it keeps the last snapshot (fail
closed), and a write that cannot reach Redis is a 503, never half done.

Nor because Redis *lost* its data (restarted without persistence, flushed, a
replica promoted before it had the keys): an empty hash would otherwise have
reopened every closed engagement on every gateway at its next read. An *epoch*
key (a random token, set by the first read that finds none) marks the data's
life: a process that finds an epoch other than the one it read before writes the
facts it holds back (``HSETNX``: what another process restored or closed since
wins), then reads again. Trade-off, weighed against trusting the empty hash (and
the engagements service's reconciliation, up to ``reconcile_interval_seconds``
later, and only for what that service reports): an engagement reopened shortly
before the loss by a process whose notice another missed may come back closed
(the safe direction: reopen it again); state that no running process held (all
restarted with Redis) is back only through that reconciliation.

redis-py sends a script again when its reply was lost (``app.core.redis``). A close,
a reconciliation or a restore run twice leave the same facts. A reopen or a
withdrawal run twice found the fact gone (removed by its first run) and answered
"nothing removed": no change notice, no ``was_closed_by``, and a withdrawal left the
fact in this process's snapshot. Each call now names a record under the same hash
tag (``{<key_prefix>}:call:<token>``), which the run that removes the fact writes
(the fact it removed) for ``retry_record_ms``; the retry answers from it. Weighed
against keeping the removed fact in the hash with a "reopened" mark (one key fewer,
but every gateway of the previous version, during a rolling upgrade, would read the
mark as a closed fact): the hash keeps its format.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import structlog
from redis.commands.core import AsyncScript

from app.authz.closed import ClosedFact, EngagementState
from app.authz.source import clip
from app.core.engagement_settings import EngagementStateSettings
from app.core.errors import ServiceUnavailable
from app.core.ids import uuid4_hex
from app.core.redis import (
    REDIS_FAILURES,
    OutageLog,
    SharedRedis,
    retry_in_background,
    retry_record_ms,
)
from app.ops.metrics import count_redis_error

log = structlog.get_logger("gateway.engagement_state")

RETRY_AFTER = {"Retry-After": "1"}
CANCEL_GRACE_SECONDS = 0.1


# KEYS[1] the hash of facts, KEYS[2] the version counter: one hash tag, one slot.
_CLOSE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""
# Reopen and withdraw: KEYS[3] this call's record (a random name under the same tag),
# ARGV[2] its life in ms. A run that removed the fact leaves it there; the same call sent
# again by redis-py's retry after a lost reply finds the fact gone and its record, and
# answers as its first run did (before: no fact, so no notice and no "was closed by").
_REOPEN = """
local previous = redis.call('HGET', KEYS[1], ARGV[1])
if not previous then
  return {redis.call('GET', KEYS[3]), tonumber(redis.call('GET', KEYS[2]) or '0')}
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], previous, 'PX', ARGV[2])
return {previous, redis.call('INCR', KEYS[2])}
"""
# ARGV[1] the engagement, ARGV[3] the fact exactly as this gateway sent it: removed only
# while it is still that one (a later close's fact, or none after a reopen, is left).
_WITHDRAW = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then
  if redis.call('GET', KEYS[3]) then return 1 end
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return 1
"""
# How long a close's unconfirmed fact is watched for: a Redis that stalled past the
# client's timeout runs the queued write when it resumes.
UNCONFIRMED_WINDOW_SECONDS = 30.0
# ARGV[2..]: name, fact pairs, each written unless the engagement is there already; the
# version counter moves when one was. Returns the names written. Run after a guard.
_ADD_ABSENT = """
local added = {}
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    added[#added + 1] = ARGV[i]
  end
end
if #added > 0 then redis.call('INCR', KEYS[2]) end
return added
"""
# ARGV[1] the version the reconciliation read: nothing is added if it moved meanwhile.
_RECONCILE = (
    "if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then return {} end"
    + _ADD_ABSENT
)
# KEYS[3] the epoch; ARGV[1] a fresh token, the epoch if there is none yet.
_READ = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[3], epoch)
end
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1]), epoch}
"""
# ARGV[1] the epoch the facts are restored into (nothing if it changed again); returns
# the names written (those another process had not restored or closed already).
_RESTORE = "if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {} end" + _ADD_ABSENT


class UnreadableState(ValueError):
    """Redis answered what this process cannot read (a ``ValueError`` as before)."""


class RedisEngagementState(EngagementState):
    """Closed engagements shared by every gateway on one Redis (any ``redis.mode``)."""

    shared = True

    def __init__(
        self,
        client: SharedRedis,
        settings: EngagementStateSettings,
        socket_timeout: float = 0.5,
    ) -> None:
        super().__init__()
        self._client = client
        tag = "{" + settings.key_prefix + "}"
        self._keys = [f"{tag}:closed", f"{tag}:version", f"{tag}:epoch"]
        self._records = f"{tag}:call:"  # + a token: one reopen's or withdrawal's record
        self._record_ms = retry_record_ms(socket_timeout)
        self._epoch: str | None = None  # the epoch of the data the snapshot was read from
        self._writes = 0  # this process's own writes to the snapshot (``_written``)
        self._reading = asyncio.Lock()  # one read at a time (``refresh``)
        self.channel = f"{settings.key_prefix}:changes"
        self._interval = settings.check_interval_seconds
        self._startup_timeout = settings.startup_timeout_seconds
        self._close_script = client.register_script(_CLOSE)
        self._reopen_script = client.register_script(_REOPEN)
        self._reconcile_script = client.register_script(_RECONCILE)
        self._read_script = client.register_script(_READ)
        self._restore_script = client.register_script(_RESTORE)
        self._withdraw_script = client.register_script(_WITHDRAW)
        self.listening = asyncio.Event()
        self._outage = OutageLog(log, "engagement_state_listener_disconnected")

    async def close(self, fact: ClosedFact, *, undone_if_unconfirmed: bool = False) -> None:
        encoded = fact.encode()
        try:
            await self._write(self._close_script, fact.engagement, encoded)
        except ServiceUnavailable:
            if undone_if_unconfirmed:
                self._withdraw_if_applied(fact.engagement, encoded)
            raise
        self._written({**self._closed, fact.engagement: fact})
        log.info("engagement_closed_fact", engagement=fact.engagement, **fact.log_fields())
        await self._announce(fact.engagement)

    async def reopen(self, engagement: str) -> ClosedFact | None:
        call = self._once(engagement)
        previous_raw, _ = await self._write_once(self._reopen_script, call)
        previous = None if previous_raw is None else ClosedFact.decode(engagement, previous_raw)
        # Our own snapshot drops it now; the others on the notice or their next check.
        self._written({k: v for k, v in self._closed.items() if k != engagement})
        if previous is not None:
            log.info("engagement_reopened_fact", engagement=engagement, source=previous.source)
            await self._announce(engagement)
        return previous

    async def withdraw(self, fact: ClosedFact) -> None:
        """Take back an undone close's fact now, if it is still this exact fact; when Redis
        does not answer, watch for it in the background as for an unconfirmed write."""
        encoded = fact.encode()
        # One record for this withdrawal, its background retries included: a run whose
        # reply was lost (redis-py's retry too) removed the fact and left that record.
        call = self._once(fact.engagement, encoded)
        try:
            removed = await self._write_once(self._withdraw_script, call)
        except ServiceUnavailable:
            self._withdraw_if_applied(fact.engagement, encoded, call)
            raise
        if removed:
            log.warning("engagement_closed_fact_withdrawn", engagement=fact.engagement)
            self._written({k: v for k, v in self._closed.items() if k != fact.engagement})
            await self._announce(fact.engagement)

    def _withdraw_if_applied(
        self, engagement: str, encoded: str, call: tuple[list[str], list[str | int]] | None = None
    ) -> None:
        """Take back a closed fact whose write Redis did not confirm, should it appear.

        A timed-out write may still be applied (Redis stalled past the client's timeout
        runs it when it resumes; the connection's bytes were already in its buffer). The
        close saga undoes its steps when its last step fails, so such a fact would keep
        an undone close closed on every gateway, naming it as the cause. Watched for
        ``UNCONFIRMED_WINDOW_SECONDS`` in the background, removed only while it is still
        this exact fact, and announced like any change. ``call``: the keys and arguments
        of a withdrawal Redis did not confirm, whose record its retries must find (a new
        record would answer "not removed" once that withdrawal had run).
        """

        keys, args = call if call is not None else self._once(engagement, encoded)

        async def withdraw() -> bool:
            removed = bool(await self._withdraw_script(keys=keys, args=args))
            if removed:
                log.warning("engagement_closed_fact_withdrawn", engagement=engagement)
                self._written({k: v for k, v in self._closed.items() if k != engagement})
                await self._announce(engagement)
            return removed

        # Not done while the fact is absent: the late write may not have landed yet.
        retry_in_background(withdraw, UNCONFIRMED_WINDOW_SECONDS, done=bool)

    async def current_version(self) -> int:
        try:
            raw = await self._client.get(self._keys[1])
        except REDIS_FAILURES as exc:
            raise self._unavailable(exc) from None
        return int(raw or 0)

    async def add_reconciled(self, engagements: Iterable[str], seen_version: int) -> list[str]:
        now = time.time()
        args: list[str | int] = [seen_version]
        for engagement in dict.fromkeys(engagements):
            fact = ClosedFact(engagement, "engagements_service", "reconciled", now)
            args += [engagement, fact.encode()]
        if len(args) == 1:
            return []
        added = [_text(name) for name in await self._write(self._reconcile_script, *args)]
        if added:
            await self.refresh()
            await self._announce(",".join(added))
        return added

    async def confirmed(self, engagement: str) -> ClosedFact | None:
        with contextlib.suppress(UnreadableState, *REDIS_FAILURES):  # then the snapshot's
            await self.refresh()
        return self.get(engagement)

    async def refresh(self) -> None:
        """Replace the snapshot with what Redis holds (one atomic read); after Redis lost
        its data (a new epoch), write back the facts held first. ``UnreadableState``
        when Redis answers what this process cannot read.

        One at a time: the follow task, ``confirmed`` and ``add_reconciled`` each read,
        and two reads at once let the one Redis answered first be handled last, putting
        the older state back (a close made between them was open here, writes allowed,
        until the next version check)."""
        async with self._reading:
            try:
                await self._refresh()
            except (ValueError, TypeError) as exc:
                raise UnreadableState(exc) from exc

    async def _refresh(self) -> None:
        # A write here that landed while a read was on its way (Redis may have answered
        # the read first) is read again: the older answer would undo it in the snapshot.
        while True:
            writes = self._writes
            version, closed = await self._read()
            if writes == self._writes:
                break
        self._closed, self.version = closed, version
        self.mark_synced()

    async def _read(self) -> tuple[int, dict[str, ClosedFact]]:
        version, flat, raw_epoch = await self._read_script(keys=self._keys, args=[uuid4_hex()])
        epoch = _text(raw_epoch)
        known, self._epoch = self._epoch, epoch
        if known is not None and epoch != known and self._closed:
            args = [epoch, *(v for f in self._closed.values() for v in (f.engagement, f.encode()))]
            restored = [
                _text(name) for name in await self._restore_script(keys=self._keys, args=args)
            ]
            log.warning(
                "engagement_state_restored",
                restored=restored,
                held=len(self._closed),
                redis_version=int(version),
                previous_version=self.version,
            )
            await self._announce(",".join(restored) or "restored")
            version, flat, _ = await self._read_script(keys=self._keys, args=[uuid4_hex()])
        pairs = iter(flat)
        closed = {
            _text(name): ClosedFact.decode(_text(name), raw)
            for name, raw in zip(pairs, pairs, strict=True)
        }
        return int(version), closed

    def _written(self, closed: dict[str, ClosedFact]) -> None:
        """This process's own write, in its snapshot at once. The version stays the one
        last read: taking the write's own as seen would hide from the version check a
        change another process made before it whose notice was lost."""
        self._closed = closed
        self._writes += 1

    async def _write(self, script: AsyncScript, *args: str | int) -> Any:
        try:
            return await script(keys=self._keys, args=list(args))
        except REDIS_FAILURES as exc:
            raise self._unavailable(exc) from None

    async def _write_once(
        self, script: AsyncScript, call: tuple[list[str], list[str | int]]
    ) -> Any:
        """A reopen or withdrawal (``_once``): its retry by redis-py finds this call's record."""
        keys, argv = call
        try:
            return await script(keys=keys, args=argv)
        except REDIS_FAILURES as exc:
            raise self._unavailable(exc) from None

    def _once(self, engagement: str, *args: str) -> tuple[list[str], list[str | int]]:
        """Keys and arguments of one call that leaves a record of its run (same slot)."""
        record = self._records + uuid4_hex()
        return [*self._keys[:2], record], [engagement, self._record_ms, *args]

    def _unavailable(self, exc: BaseException) -> ServiceUnavailable:
        count_redis_error("engagement_state")
        log.warning("engagement_state_unavailable", error=type(exc).__name__)
        return ServiceUnavailable(
            "The shared engagement state did not confirm the change (unreachable, or it "
            "timed out).",
            headers=RETRY_AFTER,
        )

    async def _announce(self, engagement: str) -> None:
        with contextlib.suppress(*REDIS_FAILURES):  # the others' version check catches up
            await self._client.publish(self.channel, engagement)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load before serving (bounded), then follow changes until shutdown."""
        try:
            await asyncio.wait_for(self.refresh(), self._startup_timeout)
        except UnreadableState as exc:  # not synced (fail closed), as in _follow
            self._unreadable(exc)
        except Exception as exc:  # Redis failures, a timeout: not synced; _follow retries
            self.last_error = type(exc).__name__
        task = asyncio.create_task(self._follow(), name="engagement-state")
        try:
            yield
        finally:
            # Cancel until the task ends: redis-py can swallow a cancel that lands on
            # its read timeout (as in app/ops/reload_notices.py).
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=CANCEL_GRACE_SECONDS)

    async def _follow(self) -> None:
        while True:
            try:
                await self._listen()
            except UnreadableState as exc:
                # Redis answered with what this process cannot read (a version that is
                # no integer, written by hand or by another program). It ended the task
                # silently: the snapshot froze while the other gateways kept closing
                # engagements. Now the state counts as not loaded (every engagement
                # closed to writes, readiness not ready: fail closed) until a read works.
                self._unreadable(exc)
                await asyncio.sleep(self._interval)
            except Exception as exc:
                # Redis failures, and what redis-py raises besides them (its cluster
                # client with an empty slot map raises KeyError on subscribe): the task
                # ended silently on those, and the state never followed again.
                count_redis_error("engagement_state")
                self.last_error = type(exc).__name__
                self._outage.failed(self.last_error)
                await asyncio.sleep(self._interval)
                # A plain read first: after a failover it makes a cluster client refresh
                # its slot map before it subscribes again.
                with contextlib.suppress(Exception):
                    await self._client.get(self._keys[1])

    def _unreadable(self, exc: UnreadableState) -> None:
        count_redis_error("engagement_state")
        self.synced = False
        cause = exc.__cause__ or exc
        self.last_error = f"unreadable shared state: {type(cause).__name__}"
        log.error("engagement_state_unreadable", error=clip(str(cause), 200))

    async def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            await self.refresh()  # whatever changed while we were not subscribed
            self._outage.recovered()
            self.listening.set()
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self._interval
                )
                if message is not None or await self._changed():
                    await self.refresh()
        finally:
            self.listening.clear()
            with contextlib.suppress(*REDIS_FAILURES):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream

    async def _changed(self) -> bool:
        raw = await self._client.get(self._keys[1])
        try:
            return int(raw or 0) != self.version
        except ValueError as exc:
            raise UnreadableState(exc) from exc


def _text(value: bytes | str) -> str:
    # A name that is not UTF-8 is no engagement id, and decides nothing; it must not stop
    # the read of the others (a UnicodeDecodeError there froze the snapshot).
    return value.decode(errors="replace") if isinstance(value, bytes) else value
