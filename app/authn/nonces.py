"""Replay protection: each (key id, nonce) is accepted once while its signature could be.

A nonce is claimed only after the signature's MAC and digest verified, so
unauthenticated traffic can never fill the store. Its time to live is how long
the signature stays acceptable (until ``created + skew``, or ``expires`` if
sooner), so a replay inside the window always finds it.

**Whose clock.** The window is judged by the gateway's wall clock; the time to live
runs on the store's. Memory: the same clock, so a step of it moves both alike. Redis:
its own clock, and a TTL counted from the claiming gateway's ``now`` ends early on
Redis's clock by as far as that gateway was ahead of it. A gateway whose clock ran
ahead of Redis's by more than ``CLOCK_TOLERANCE_SECONDS`` when it claimed, then was
stepped back (NTP), accepted the signature once more after the nonce expired. So the
claim script also holds the nonce until the claim's ``until`` (the end of acceptance
plus the tolerance, a Unix second) on Redis's ``TIME``, whichever is later, capped at
``longest_hold`` (two windows plus the tolerance). Weighed against a floor of the
whole window on every nonce (twice the memory, and it still left a step back larger
than the floor's margin open): this costs nothing while clocks agree. What remains: a
replay is accepted only by a gateway whose clock, at the replay, is more than the
tolerance behind Redis's *and* more than the tolerance behind where the claiming
gateway's clock stood against Redis's at the claim (the cap loosens the first only for
a signature dated more than the window ahead of Redis's clock). See signing.md §4.

Two stores, one ``NonceStore`` protocol, chosen by whether Redis is configured:

- ``MemoryNonceStore`` serves one process: a dict plus per-second expiry lists, bounded
  by ``signing.nonce_capacity``, expiring on the wall clock (Redis keeps Unix times
  too). When full it refuses (503) instead of evicting: evicting an unexpired nonce
  would reopen replay for it. Cheap and dependency free, but two gateway processes
  would each accept the same nonce once.
- ``RedisNonceStore`` serves many processes: one ``SET key <token> NX EX ttl`` per
  request (atomic, expiry done by Redis; the claim's random token lets a retried
  claim recognise its own write). It costs a loopback round trip and a
  dependency on Redis being up; when Redis cannot answer, the request gets 503.
  Accepting unchecked would let a replay through exactly when an attacker can
  disturb Redis, so the store fails closed.

**The replay fence.** A store can only vouch for nonces claimed since its
history began: a new process's memory, or a Redis that restarted without
persistence or was flushed, has forgotten every nonce claimed before. Each
store therefore keeps a *fence*, the Unix time (to the microsecond) at which
its history begins, and refuses any signature whose ``created`` is earlier
than the fence (``created < fence``; ``created`` is whole seconds, so a
signature made in the fence's own second is refused unless the fence is a
whole second). Such a signature may have been accepted before the history
was lost; the caller re-signs. See docs/decisions/0003 §6.

- Memory: the fence is the store's creation time.
- Redis: the fence is the key ``gateway:nonce-fence`` (no TTL), stamped with
  the Redis process's ``run_id`` and its replication id (``master_replid``,
  which changes whenever the node changes role). One Lua script reads it and,
  when it is missing or was written by another Redis process or in another
  replication history of this one (first use, any restart, failover, a failback
  to a node that was resynced from another meanwhile, flush, eviction), sets it
  to Redis's own ``TIME``, then compares
  ``created`` and runs ``SET nonce <token> NX EX ttl``, all atomically. Redis's
  clock, not a gateway's, so the fence does not depend on which gateway
  noticed the loss.
- Redis Cluster: the nonces fall into ``NonceKeys.FENCE_GROUPS`` groups, each
  a hash tag with its own fence, so the script's two keys share a slot and the
  fence is read on the very primary that holds the nonce, at claim time. A
  promoted replica has its own ``run_id``: each group it now serves resets on
  its next claim, however far behind the replica was. See docs/decisions/0010.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Protocol

import structlog
from redis.asyncio import RedisCluster

from app.authn.verifier import longest_hold
from app.core.config import Settings
from app.core.errors import ServiceUnavailable
from app.core.redis import (
    REDIS_FAILURES,
    OutageLog,
    SharedRedis,
    create_redis,
    error_text,
    is_cluster,
)
from app.ops.metrics import count_redis_error

log = structlog.get_logger("gateway.authn")
# Key ids and nonces are RFC 8941 Strings (printable ASCII): these never occur in them.
_SEP, _END = "\x1f", b"\x1e"

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


class Claim(StrEnum):
    """The outcome of claiming a nonce."""

    CLAIMED = "claimed"
    REPLAYED = "replayed"
    BEFORE_FENCE = "before_fence"


class NonceStore(Protocol):
    """Remembers (key id, nonce) pairs for a time to live, since its fence."""

    async def open(self) -> float | None:
        """Establish the fence; its Unix time, or ``None`` if the store cannot answer yet."""
        ...

    async def claim(
        self, key_id: str, nonce: str, created: int, ttl_seconds: int, until: int | None = None
    ) -> Claim:
        """``CLAIMED`` once per TTL, then ``REPLAYED``; ``BEFORE_FENCE`` if ``created < fence``.

        ``until``: the Unix second until which the nonce must be held on any clock
        (``hold_until``); a store whose TTL runs on another clock than the gateway's
        holds it until then on its own clock too.
        """
        ...

    async def check(self) -> tuple[bool, str]:
        """Readiness: whether the store can answer, and a short description."""
        ...

    async def aclose(self) -> None: ...


class MemoryNonceStore:
    """One process's nonces: bounded, TTL-based, never evicts an unexpired nonce.

    Held where the garbage collector never looks: a ``str -> float`` dict of
    expiry times, and per whole second of expiry a ``bytearray`` of the keys due
    then. CPython does not track a dict of atomic keys and values, and a
    bytearray holds no references, so a full collection costs the same with a
    million nonces as with none. The earlier heap of tuples put every nonce on
    the collector's path: each gen-2 collection walked them all on the event
    loop, a pause that grows with the request rate times the skew window (the
    gateway's p99 tail; ``bench/micro_gc_pause.py``).
    """

    def __init__(
        self,
        capacity: int,
        clock: Callable[[], float] | None = None,
        fence: float | None = None,
    ) -> None:
        self.capacity = capacity
        # Wall-clock time, compared with ``created``.
        self.fence = time.time() if fence is None else fence
        # The TTL runs on the wall clock too: the clock the verifier judges the window by.
        # On the monotonic clock, a wall clock stepped back (NTP) while a nonce was held
        # let it expire while its signature was acceptable again: one replay accepted.
        self._clock = time.time if clock is None else clock
        self._expiry: dict[str, float] = {}
        self._due: dict[int, bytearray] = {}  # second of expiry -> keys, each ended by _END
        self._swept_to = 0  # every second before this one is swept

    def __len__(self) -> int:
        return len(self._expiry)

    async def open(self) -> float:
        return self.fence

    async def claim(
        self, key_id: str, nonce: str, created: int, ttl_seconds: int, until: int | None = None
    ) -> Claim:
        # ``until`` is not needed: the TTL runs on the clock the window is judged by.
        if created < self.fence:
            return Claim.BEFORE_FENCE
        now = self._clock()
        self._purge(now)
        key = f"{key_id}{_SEP}{nonce}"
        held = self._expiry.get(key)
        if held is not None and held > now:
            return Claim.REPLAYED
        if len(self._expiry) >= self.capacity and not self._sweep_current(now):
            log.warning("nonce_store_full", capacity=self.capacity)
            raise NonceStoreUnavailable()
        expires_at = now + ttl_seconds
        self._expiry[key] = expires_at
        second = int(expires_at)
        due = self._due.get(second)
        if due is None:
            self._due[second] = due = bytearray()
        due += key.encode("utf-8", "surrogatepass") + _END
        return Claim.CLAIMED

    def _purge(self, now: float) -> None:
        """Forget the keys due in every second wholly past: all of them have expired."""
        horizon = int(now)
        if horizon <= self._swept_to:
            # A wall clock stepped back: keys claimed now may fall due before the second
            # the sweep had reached, so it goes on from here (those seconds are empty).
            self._swept_to = horizon
            return
        seconds: Iterable[int] = range(self._swept_to, horizon)
        if horizon - self._swept_to > len(self._due):  # after a quiet spell: only the full ones
            seconds = sorted(s for s in self._due if s < horizon)
        for second in seconds:
            due = self._due.pop(second, None)
            if due is not None:
                self._forget(second, due, math.inf)
        self._swept_to = horizon

    def _forget(self, second: int, due: bytearray, now: float) -> bytearray:
        """Drop the keys of ``due`` expired by ``now``; the records of those still held."""
        kept = bytearray()
        for raw in due.split(_END)[:-1]:
            key = raw.decode("utf-8", "surrogatepass")
            held = self._expiry.get(key)
            if held is None or int(held) != second:
                continue  # claimed again since: its record is in a later second
            if held <= now:
                del self._expiry[key]
            else:
                kept += raw + _END
        return kept

    def _sweep_current(self, now: float) -> bool:
        """At capacity: forget this second's keys that expired already; is there room now?"""
        second = int(now)
        due = self._due.pop(second, None)
        if due is not None and (kept := self._forget(second, due, now)):
            self._due[second] = kept
        return len(self._expiry) < self.capacity

    async def check(self) -> tuple[bool, str]:
        self._purge(self._clock())
        return len(self) < self.capacity, f"memory, {len(self)}/{self.capacity} nonces held"

    async def aclose(self) -> None:
        self._expiry.clear()
        self._due.clear()


# KEYS[1] the fence, KEYS[2] the nonce (absent: only establish the fence);
# ARGV[1] created, ARGV[2] TTL, ARGV[3] the claim's own random token, stored as the
# nonce's value; optional ARGV[4] the Unix second until which the nonce is held on
# Redis's clock too (a gateway ahead of Redis, then stepped back), ARGV[5] at most this
# many seconds (a Redis clock far behind must not keep nonces for hours).
# Returns {outcome, fence time, 1 if the fence was just set}.
# Idempotent per token: redis-py retries a command once, and an EVALSHA that timed out
# may still have run; the retry then finds its own token and answers "claimed" again
# (any other value, a "1" written by an older gateway too, is a replay).
# The fence is "<seconds.micros> <run_id>:<master_replid>": a fence written by another
# Redis process (restored from a snapshot or an append-only file, or replicated before a
# failover) may sit beside lost nonces, so only this process's own fence is trusted; and
# so is only one written in this process's current replication history. A primary that
# was made a replica and promoted again (a failback) keeps its run_id, but its data is
# then a copy of the other node's, which may hold its old fence without the nonces it
# claimed meanwhile; each such change of role gives it a new master_replid. Anything
# unparsable (a fence of the older "<seconds> <run_id>" form too) counts as lost.
# TIME and INFO before a write need Redis 5 or later. TIME is read on every run, needed
# or not, so a user denied it fails every claim and readiness, not only the next reset.
# Tests swap the first line (_CLAIM_NOW) for an injected Redis clock.
_CLAIM_NOW = """
local now = redis.call('TIME')
"""
_CLAIM_STEPS = """
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
local owner = run_id .. ':' .. (replid or '')
local stored = redis.call('GET', KEYS[1])
local fence, fence_owner
if stored then
  fence, fence_owner = string.match(stored, '^(%d+%.%d+) ([%w:]+)$')
end
local reset = 0
if not (fence and replid and fence_owner == owner) then
  fence = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[1], fence .. ' ' .. owner)
  reset = 1
end
if #KEYS < 2 then
  return {'fence', fence, reset}
end
if tonumber(ARGV[1]) < tonumber(fence) then
  return {'before_fence', fence, reset}
end
local ttl = tonumber(ARGV[2])
if ARGV[5] then
  ttl = math.max(ttl, math.min(tonumber(ARGV[4]) - tonumber(now[1]), tonumber(ARGV[5])))
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ttl) then
  return {'claimed', fence, reset}
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  return {'claimed', fence, reset}
end
return {'replayed', fence, reset}
"""
CLAIM_SCRIPT = _CLAIM_NOW + _CLAIM_STEPS


class NonceKeys:
    """Where a nonce lives in Redis and which fence vouches for it.

    One server (standalone, Sentinel's primary): one fence, ``FENCE_KEY``, beside
    every nonce. A Cluster: ``FENCE_GROUPS`` groups, each a hash tag (one slot,
    so one primary) holding its own fence and its nonces; the claim script then
    touches keys of one slot only, and a failover of one primary resets exactly
    the fences of the groups it served.
    """

    PREFIX = "gateway:nonce:"
    # Outside PREFIX's key space: nonce keys continue with a digit (or "{") after the colon.
    FENCE_KEY = "gateway:nonce-fence"
    # Claimed by the readiness check, a new key each time with a TTL of 1 s (outside
    # PREFIX's space too): ``READY_KEY:<token>``, with the first group's tag on a Cluster.
    READY_KEY = "gateway:nonce-ready"
    # Fixed: changing it renames every key, and gateways of two layouts would not see
    # each other's nonces. 64 spreads the groups over the primaries of any usual cluster.
    FENCE_GROUPS = 64

    def __init__(self, grouped: bool) -> None:
        self.grouped = grouped

    @staticmethod
    def ident(key_id: str, nonce: str) -> str:
        # Length-prefixing the key id keeps ("a:b", "c") and ("a", "b:c") apart.
        return f"{len(key_id)}:{key_id}:{nonce}"

    @staticmethod
    def tag(group: int) -> str:
        return f"{{gw-nonce-{group}}}"

    def fences(self) -> list[str]:
        """Every fence key: one, or one per group."""
        if not self.grouped:
            return [self.FENCE_KEY]
        return [f"{self.FENCE_KEY}:{self.tag(g)}" for g in range(self.FENCE_GROUPS)]

    def group(self, key_id: str, nonce: str) -> int:
        return zlib.crc32(self.ident(key_id, nonce).encode()) % self.FENCE_GROUPS

    def probe_keys(self, token: str) -> list[str]:
        """``[fence, probe key]`` for readiness: the first fence, a key in its slot."""
        if not self.grouped:
            return [self.FENCE_KEY, f"{self.READY_KEY}:{token}"]
        tag = self.tag(0)
        return [f"{self.FENCE_KEY}:{tag}", f"{self.READY_KEY}:{tag}:{token}"]

    def claim_keys(self, key_id: str, nonce: str) -> list[str]:
        """``[fence, nonce key]`` for the claim script; one hash tag when grouped."""
        ident = self.ident(key_id, nonce)
        if not self.grouped:
            return [self.FENCE_KEY, self.PREFIX + ident]
        tag = self.tag(self.group(key_id, nonce))
        return [f"{self.FENCE_KEY}:{tag}", f"{self.PREFIX}{tag}:{ident}"]


# How often readiness looks at the eviction policy again, at most.
EVICTION_CHECK_SECONDS = 60.0
# The readiness probe's ``created``: after any fence (the year 2286).
_PROBE_CREATED = 9_999_999_999


class RedisNonceStore:
    """Nonces shared by every gateway process through Redis (any ``redis.mode``)."""

    PREFIX = NonceKeys.PREFIX
    FENCE_KEY = NonceKeys.FENCE_KEY

    def __init__(self, client: SharedRedis, max_skew_seconds: int = 300) -> None:
        self._client = client
        self._outage = OutageLog(log, "nonce_store_unreachable")
        # The most seconds a claim's ``until`` holds a nonce (``signing.max_skew_seconds``).
        self._longest = longest_hold(max_skew_seconds)
        self.keys = NonceKeys(grouped=is_cluster(client))
        # EVALSHA, loading the script again on NOSCRIPT (a restarted Redis forgot it).
        self._script = client.register_script(CLAIM_SCRIPT)
        # The eviction policy, checked at start-up and again by readiness once a minute
        # at most (a parameter group or CONFIG SET may change it at run time).
        self._evicting: str | None = None
        self._eviction_checked: float | None = None  # monotonic time of the last check

    @classmethod
    def key(cls, key_id: str, nonce: str) -> str:
        """The nonce's key on one server (standalone, Sentinel)."""
        return cls.PREFIX + NonceKeys.ident(key_id, nonce)

    async def open(self) -> float | None:
        """Establish every fence; the latest, or ``None`` if one cannot be set yet."""
        first, *others = self.keys.fences()
        try:
            # One call first: a cluster client builds its slot map on first use, and
            # concurrent first calls race inside that refresh (see REDIS_FAILURES).
            answers = [await self._run([first], [])]
            answers += await asyncio.gather(*(self._run([fence], []) for fence in others))
        except NonceStoreUnavailable:
            return None  # the first claim in each group sets its fence when Redis answers
        latest = max(fence for _, fence, _ in answers)
        resets = sum(reset for _, _, reset in answers)
        if resets:
            # First use of this Redis, or it lost its data: earlier signatures are refused.
            log.warning("nonce_fence_set", fence=latest, fences=resets)
        await self._warn_if_evicting()
        await self._warn_if_failover_unguarded()
        return latest

    async def claim(
        self, key_id: str, nonce: str, created: int, ttl_seconds: int, until: int | None = None
    ) -> Claim:
        keys = self.keys.claim_keys(key_id, nonce)
        # Our own token as the value: a retried claim whose first run went through
        # finds it and is "claimed", not a replay of itself (CLAIM_SCRIPT).
        token = secrets.token_hex(8)
        args: list[int | str] = [created, ttl_seconds, token]
        if until is not None:
            args += [until, self._longest]
        outcome, fence, reset = await self._run(keys, args)
        if reset:
            # This Redis (or the group's primary) lost its history since the last claim.
            log.warning("nonce_fence_set", fence=fence, fences=1)
        return Claim(outcome)

    async def _run(self, keys: list[str], args: list[int | str]) -> tuple[str, float, bool]:
        """The script's answer: (outcome, fence time, whether it just set the fence)."""
        try:
            answer = await self._call(keys, args)
        except REDIS_FAILURES as exc:
            # The Redis message (NOREPLICAS, NOPERM, ...), never the URL. The first
            # failure of an outage, then one line a minute (with the count), not one a
            # request: each refused request's decision line says replay_check_unavailable.
            self._outage.failed(type(exc).__name__, detail=error_text(exc))
            count_redis_error("nonces")
            raise NonceStoreUnavailable() from None
        self._outage.recovered()  # nothing unless an outage was logged
        return answer

    async def _call(self, keys: list[str], args: list[int | str]) -> tuple[str, float, bool]:
        outcome, fence, reset = await self._script(keys=keys, args=args)
        return outcome.decode(), float(fence), bool(reset)

    async def _warn_if_evicting(self) -> None:
        """Warn (``nonce_store_evicts``) when a primary may evict keys; remember which policy."""
        self._eviction_checked = time.monotonic()
        try:
            if isinstance(self._client, RedisCluster):
                per_node = await self._client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                nodes = list(per_node.values())
            else:
                nodes = [await self._client.info("memory")]
        except REDIS_FAILURES:
            return
        policies = {node.get("maxmemory_policy") for node in nodes if isinstance(node, dict)}
        evicting = sorted(p for p in policies - {None, "noeviction"} if p)
        self._evicting = ",".join(evicting) or None
        if self._evicting:
            # Evicting an unexpired nonce reopens replay for it, unseen by the fence.
            log.warning("nonce_store_evicts", maxmemory_policy=self._evicting)

    async def _warn_if_failover_unguarded(self) -> None:
        """Warn when a primary with replicas runs without ``min-replicas-to-write``.

        Without it, a failover leaves the old primary writable until it follows the
        new one: claims made there meanwhile are lost when it resyncs, so those
        requests can be replayed (operations.md, "Failover"). Redis reports
        ``min_slaves_good_slaves`` only when the setting is on. A Cluster stops a
        minority primary itself; a primary whose replicas are not connected yet at
        start-up is not warned about.
        """
        if isinstance(self._client, RedisCluster):
            return
        try:
            info = await self._client.info("replication")
        except REDIS_FAILURES:
            return
        replicas = int(info.get("connected_slaves", 0) or 0)
        if info.get("role") == "master" and replicas and "min_slaves_good_slaves" not in info:
            log.warning(
                "nonce_store_failover_unguarded",
                replicas=replicas,
                fix="min-replicas-to-write 1 and min-replicas-max-lag 10 on every primary",
            )

    async def check(self) -> tuple[bool, str]:
        """Readiness: a claim, by the claim script itself, of a new short-lived probe key
        beside the first fence. A Redis that answers PING but refuses writes (a replica,
        read-only after a failover, full under ``noeviction``), or a user whose ACL denies
        a command the script runs (``INFO``, ``TIME``, ``EVALSHA``), made every signed
        request a 503 while ``/readyz`` said ready: a plain ``SET`` passed. Like a claim,
        it sets the fence when it finds it lost."""
        token = secrets.token_hex(8)
        keys = self.keys.probe_keys(token)
        try:
            outcome, fence, reset = await self._call(keys, [_PROBE_CREATED, 1, token])
        except REDIS_FAILURES as exc:  # unreachable, READONLY, OOM, NOPERM: no claim either
            return False, f"redis cannot take a claim ({error_text(exc)})"
        if reset:
            log.warning("nonce_fence_set", fence=fence, fences=1)
        if outcome != Claim.CLAIMED:
            return False, f"redis cannot take a claim (the probe was {outcome})"
        last = self._eviction_checked
        if last is None or time.monotonic() - last >= EVICTION_CHECK_SECONDS:
            await self._warn_if_evicting()
        if self._evicting:
            # Still ready (claims work), but said: an evicted nonce can be replayed.
            return True, f"redis; maxmemory-policy {self._evicting} may evict nonces (replay)"
        return True, "redis"

    async def aclose(self) -> None:
        await self._client.aclose()


def create_nonce_store(settings: Settings, client: SharedRedis | None = None) -> NonceStore:
    """Redis when it is configured (shared by all processes), else in-memory.

    ``client``: the process's one Redis pool, when the caller already opened it.
    """
    if settings.redis.enabled:
        client = client or create_redis(settings.redis)
        return RedisNonceStore(client, settings.signing.max_skew_seconds)
    return MemoryNonceStore(settings.signing.nonce_capacity)
