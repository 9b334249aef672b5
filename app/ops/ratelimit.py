"""Rate limits per subject and per engagement: GCRA, in memory or in Redis.

Decision (costly to undo, because stored state and headers depend on it):

* **GCRA** (generic cell rate algorithm) — chosen. One number per key (the
  "theoretical arrival time"), updated in one atomic Redis script; a limit of
  ``limit`` requests per ``window_seconds`` refills evenly, so it behaves as a
  token bucket of capacity ``limit`` without storing tokens and a timestamp.
* **Fixed-window counter** (INCR + EXPIRE) — simpler, but lets ``2 x limit``
  through across a window boundary and gives poor ``Retry-After`` values.

Redis computes the time itself (``TIME`` in the script), so clock skew between
gateway hosts cannot split one limit. A limiter spends the buckets it is given in
one step (one script): all of them or, when one is empty, none.

The gate spends a request's two buckets at two points (decision 0013): the
subject's before the policy decides (the caller's own quota, so a flood is refused
before the policy runs), the engagement's only once the policy allowed (a caller
not staffed on an engagement cannot spend the quota of those who are). A request
refused by the engagement's limit has spent its subject's unit.

Both implementations count in whole microseconds (integers), never in float
seconds: ``new_tat - limit * interval`` in floats could land one rounding step
above ``now`` and refuse a first request. The interval is rounded up to a whole
microsecond, so a window never grants more than ``limit``. Redis Lua numbers are
doubles, exact for integers below 2**53 us (about 2**33 s, the year 2255 on
Redis's clock); the largest value the script forms is ``now`` plus one window
(at most 86,400 s) plus ``limit`` microseconds, far below that.

Idempotent per request under redis-py's retry (app.core.redis, ``Retry(NoBackoff(), 1)``):
a script whose connection failed while its reply was awaited is sent again, though
Redis may have run it (the reply was lost, or the command timed out on the client and
ran once Redis caught up). Run twice, a spend took two requests from the caller's
buckets, and when the first took the last one the retry answered 429 for a request
that had been counted. Two ways out were weighed:

* **Do not retry the spend** — chosen against. redis-py's retry belongs to the
  connection pool (in a Cluster, to the client), so the limiter would need a pool of
  its own; and the retry is what replaces a pooled connection that died with a Redis
  restart or failover: without it the first spend on each dead connection fails, and
  under ``on_redis_error: closed`` (the default) the process answers 503 for
  ``REDIS_RETRY_SECONDS`` after every restart (``open``: no limit meanwhile).
* **A per-request record** — chosen. Each ``acquire`` names itself with a random
  token; the script keeps an allowed spend's answer under ``<prefix>request:<token>``
  (beside the buckets, so in their hash slot on a Cluster) for ``record_seconds``, and
  a run that finds its record answers it again and spends nothing. A refused request
  spent nothing and keeps no record: its retry is judged afresh. The TAT keys keep
  their format, so gateways of the previous version share the buckets during a rolling
  upgrade. Cost: one short-lived key per allowed request (about 100 bytes for 10 s:
  some 1 MB at 1,000 requests a second).

The record must outlive the gap between the two runs. The retry is sent at once after
the first attempt failed, within one read and one connect timeout; a run later than
that is one the client already gave up on (``on_redis_error`` applied). So the record
lives ``4 x redis.socket_timeout``, at least 10 s (``app.core.redis.retry_record_ms``, which
the other write scripts' records share).

When Redis fails, ``on_redis_error`` decides: ``open`` (let through, counted in
``gateway_redis_errors_total``) or ``closed`` (503). Either way Redis is retried
after ``REDIS_RETRY_SECONDS``, so service recovers by itself.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from app.core.errors import ServiceUnavailable, TooManyRequests
from app.core.ops_settings import RateLimitRule, RateLimitSettings
from app.core.redis import REDIS_FAILURES, SharedRedis, is_cluster, retry_record_ms
from app.ops.metrics import count_rate_limited, count_redis_error

log = structlog.get_logger("gateway.ratelimit")

REDIS_RETRY_SECONDS = 1.0
MICROS = 1_000_000
FULL_LOG_INTERVAL_MICROS = 60 * MICROS  # rate_limit_buckets_full: one line a minute at most

# Now in whole microseconds from Redis's clock; tests swap this line for an injected clock.
_NOW_FROM_REDIS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""
# KEYS[1] this request's record, KEYS[2..] its buckets; ARGV[1] the record's life in ms,
# then (interval, burst) per bucket. A record found is the answer of this request's
# earlier run (redis-py's retry): answered again, nothing spent twice.
# Every number below is a whole number of microseconds (exact in doubles below 2^53).
# Stored TATs stay decimal seconds with six places (as before), split and joined as
# integers: float seconds would lose the microsecond beyond 2^32 s, and a/b may round up.
_GCRA_STEPS = """
local first = redis.call('GET', KEYS[1])
if first then return cjson.decode(first) end
local results, new_tats, ok = {}, {}, true
for i = 2, #KEYS do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i - 2])
  local burst = tonumber(ARGV[2 * i - 1])
  local tat = now
  local stored = redis.call('GET', key)
  if stored then
    local whole, part = string.match(stored, '^(%d+)%.(%d%d%d%d%d%d)$')
    tat = math.max(tonumber(whole) * 1000000 + tonumber(part), now)
  end
  -- At most one full window ahead: a TAT stored under a longer window (the limit was
  -- changed) means an empty bucket under this one, not a wait of the old window.
  tat = math.min(tat, now + burst * interval)
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now < allow_at then
    ok = false
    results[i - 1] = {0, 0, tat - now, allow_at - now}
  else
    new_tats[i] = new_tat
    local spare = now - allow_at
    local remaining = math.floor(spare / interval)
    if remaining * interval > spare then remaining = remaining - 1 end
    results[i - 1] = {1, remaining, new_tat - now, 0}
  end
end
if ok then
  for i = 2, #KEYS do
    local key = KEYS[i]
    local tat = new_tats[i]
    local whole = math.floor(tat / 1000000)
    local part = tat - whole * 1000000
    if part < 0 then whole, part = whole - 1, part + 1000000 end
    local ttl = math.max(1, math.ceil((tat - now) / 1000))
    redis.call('SET', key, string.format('%d.%06d', whole, part), 'PX', ttl)
  end
  redis.call('SET', KEYS[1], cjson.encode(results), 'PX', ARGV[1])
end
return results
"""
_GCRA_SCRIPT = _NOW_FROM_REDIS + _GCRA_STEPS


def interval_micros(rule: RateLimitRule) -> int:
    """Whole microseconds of quota one request uses, rounded up (never more than ``limit``)."""
    window = round(rule.window_seconds * MICROS)
    return max(1, -(-window // rule.limit))


def to_micros(seconds: float) -> int:
    """A clock reading in whole microseconds."""
    return round(seconds * MICROS)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit applied to one key, e.g. scope ``subject``, key ``alice``."""

    scope: str
    key: str
    rule: RateLimitRule


@dataclass(frozen=True, slots=True)
class BucketState:
    """The outcome for one bucket: allowed, what is left, and when it refills."""

    bucket: Bucket
    allowed: bool
    remaining: int
    reset_seconds: float
    retry_after_seconds: float


def gcra(tat: int | None, now: int, rule: RateLimitRule) -> tuple[bool, int, int, float, float]:
    """One GCRA step in microseconds: (allowed, new tat, remaining, reset s, retry-after s)."""
    interval = interval_micros(rule)
    # At most one window ahead (never more under one rule): after the limit or window
    # changed, a bucket spent under the old rule is empty under the new one, no more.
    tat = min(max(tat if tat is not None else now, now), now + rule.limit * interval)
    new_tat = tat + interval
    allow_at = new_tat - rule.limit * interval
    if now < allow_at:
        return False, tat, 0, (tat - now) / MICROS, (allow_at - now) / MICROS
    remaining = (now - allow_at) // interval
    return True, new_tat, remaining, (new_tat - now) / MICROS, 0.0


class RateLimiter(Protocol):
    async def acquire(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        """Spend one request from every bucket, or from none if any is empty."""
        ...


class MemoryRateLimiter:
    """GCRA in this process only: the embedded default without Redis.

    Bounded by ``max_buckets`` (``ops.rate_limit.max_buckets``): engagement ids come
    from the request's path, so an authenticated caller can name a new engagement
    on every request, and each bucket is kept until its quota is full again (up to
    a day under a long window). Past the bound the least recently spent bucket is
    forgotten and starts full again if its key returns: at most one extra
    ``limit`` for that key. Weighed against refusing new keys when full (the nonce
    and idempotency stores' choice, where forgetting would reopen a replay or a
    double write): then one caller minting engagements would refuse every other
    caller's new bucket, a denial of service, while a forgotten bucket only grants
    back quota. Redis does not forget early (``RedisRateLimiter``).
    """

    PRUNE_EVERY = 1024

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self._clock = clock
        self.max_buckets = max_buckets
        # Least recently spent first (a refused request spends nothing): forgotten first.
        self._tats: OrderedDict[str, int] = OrderedDict()
        self._calls = 0
        self._forgotten = 0  # forgotten early since the last rate_limit_buckets_full line
        self._full_logged_at: int | None = None

    def __len__(self) -> int:
        return len(self._tats)

    async def acquire(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        now = to_micros(self._clock())
        self._prune(now)
        keys = [f"{b.scope}:{b.key}" for b in buckets]
        steps = [gcra(self._tats.get(k), now, b.rule) for k, b in zip(keys, buckets, strict=True)]
        if all(step[0] for step in steps):
            for key, step in zip(keys, steps, strict=True):
                self._store(key, step[1])
        return [
            BucketState(b, allowed, remaining, reset, retry)
            for b, (allowed, _, remaining, reset, retry) in zip(buckets, steps, strict=True)
        ]

    def _store(self, key: str, tat: int) -> None:
        """Keep ``key``'s TAT as the most recently spent; full: forget the least recent."""
        tats = self._tats
        if key in tats:
            tats.move_to_end(key)
        elif len(tats) >= self.max_buckets:
            tats.popitem(last=False)
            self._forgotten += 1
        tats[key] = tat

    def _prune(self, now: int) -> None:
        """Forget keys whose quota is full again, so memory follows active callers."""
        self._calls += 1
        if self._calls % self.PRUNE_EVERY == 0:
            # In place: rebuilding an OrderedDict of 100,000 keys takes ~5x a scan's time.
            for key in [k for k, tat in self._tats.items() if tat <= now]:
                del self._tats[key]
            self._log_forgotten(now)

    def _log_forgotten(self, now: int) -> None:
        """One warning a minute at most while buckets are forgotten early."""
        last = self._full_logged_at
        if not self._forgotten or (last is not None and now - last < FULL_LOG_INTERVAL_MICROS):
            return
        log.warning("rate_limit_buckets_full", max_buckets=self.max_buckets,
                    forgotten=self._forgotten)  # fmt: skip
        self._forgotten, self._full_logged_at = 0, now


class RedisRateLimiter:
    """GCRA in Redis, one atomic script per request; shared by every gateway process."""

    def __init__(
        self,
        client: SharedRedis,
        key_prefix: str,
        on_error: Literal["open", "closed"],
        socket_timeout: float = 0.5,
    ) -> None:
        self._script = client.register_script(_GCRA_SCRIPT)
        # Outlives the retry of a spend whose reply was lost (the module docstring).
        self._record_ms = retry_record_ms(socket_timeout)
        # On a cluster both buckets of a request must share a slot for one atomic
        # script: every bucket key carries the prefix as its hash tag (decision 0010).
        self._prefix = f"{{{key_prefix}}}" if is_cluster(client) else key_prefix
        self._on_error = on_error
        self._skip_until = 0.0

    async def acquire(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        if time.monotonic() < self._skip_until:
            return self._unavailable()
        # This request's record: redis-py's retry of the script finds it (module docstring).
        keys = [f"{self._prefix}request:{secrets.token_hex(8)}"]
        keys += [self.key(b) for b in buckets]
        args: list[int] = [self._record_ms]
        for b in buckets:
            args += [interval_micros(b.rule), b.rule.limit]
        try:
            raw = await self._script(keys=keys, args=args)
        except REDIS_FAILURES as exc:
            count_redis_error("rate_limit")
            log.warning("rate_limit_redis_error", error=type(exc).__name__, mode=self._on_error)
            self._skip_until = time.monotonic() + REDIS_RETRY_SECONDS
            return self._unavailable()
        if self._skip_until:
            self._skip_until = 0.0
            log.info("rate_limit_redis_recovered")
        return [
            BucketState(b, bool(ok), int(left), reset_us / MICROS, retry_us / MICROS)
            for b, (ok, left, reset_us, retry_us) in zip(buckets, raw, strict=True)
        ]

    def key(self, bucket: Bucket) -> str:
        """The bucket's Redis key: ``prefix scope:key``, the prefix a hash tag on a cluster."""
        return f"{self._prefix}{bucket.scope}:{bucket.key}"

    def _unavailable(self) -> list[BucketState]:
        """Redis is down: no limit applies (open), or the request waits (closed)."""
        if self._on_error == "open":
            return []
        raise ServiceUnavailable(
            "Rate limiting is temporarily unavailable.",
            headers={"Retry-After": str(math.ceil(REDIS_RETRY_SECONDS))},
        )


def _item(name: str, **params: float | int) -> str:
    """One structured-field list item: a quoted policy name with integer parameters."""
    return f'"{name}"' + "".join(f";{k}={math.ceil(v)}" for k, v in params.items())


def _policy_item(bucket: Bucket) -> str:
    """One policy: ``q`` the limit, ``w`` the window when it is whole seconds, else no ``w``.

    The draft's ``w`` is an integer; a window of 0.5 s rounded up to ``w=1`` would
    advertise half the rate the gateway grants, so a fractional window is left out.
    """
    rule = bucket.rule
    if rule.window_seconds.is_integer():
        return _item(bucket.scope, q=rule.limit, w=rule.window_seconds)
    return _item(bucket.scope, q=rule.limit)


def rate_limit_headers(states: Sequence[BucketState]) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` as in draft-ietf-httpapi-ratelimit-headers-09."""
    if not states:
        return {}
    policy = (_policy_item(s.bucket) for s in states)
    current = (_item(s.bucket.scope, r=s.remaining, t=s.reset_seconds) for s in states)
    return {"RateLimit-Policy": ", ".join(policy), "RateLimit": ", ".join(current)}


class RateLimitGuard:
    """Builds the buckets of a request, spends them, and raises 429 when one is empty."""

    def __init__(self, settings: RateLimitSettings, limiter: RateLimiter) -> None:
        self.settings = settings
        self.limiter = limiter

    @property
    def enabled(self) -> bool:
        """Whether any limit is configured (else ``spend`` has nothing to do)."""
        return self.settings.subject is not None or self.settings.engagement is not None

    def limits(self, engagement: str | None) -> bool:
        """Whether ``spend_engagement`` has a bucket to spend for ``engagement``."""
        return self.settings.engagement is not None and engagement is not None

    async def spend_subject(self, subject: str) -> list[BucketState]:
        """Stage 3, before the policy: the caller's own quota; ``TooManyRequests`` when spent.

        Returns the states spent, for ``spend_engagement`` to report with its own.
        """
        if self.settings.subject is None:
            return []
        return await self._spend([Bucket("subject", subject, self.settings.subject)], [])

    async def spend_engagement(
        self, engagement: str | None, spent: Sequence[BucketState] = ()
    ) -> dict[str, str]:
        """Once the policy allowed: the engagement's shared quota; 429 when it is spent.

        Only a request the policy allowed spends it: a caller not staffed on an
        engagement cannot spend the quota of the people who are (decision 0013). The
        headers name every bucket this request spent (``spent``, the subject's).
        """
        rule = self.settings.engagement
        if rule is None or engagement is None:
            return rate_limit_headers(spent)
        states = await self._spend([Bucket("engagement", engagement, rule)], spent)
        return rate_limit_headers(states)

    async def _spend(
        self, buckets: list[Bucket], spent: Sequence[BucketState]
    ) -> list[BucketState]:
        """``spent`` and the new buckets' states; ``TooManyRequests`` when one is empty."""
        if not buckets:
            return list(spent)
        states = await self.limiter.acquire(buckets)
        denied = [s for s in states if not s.allowed]
        if not denied:
            return [*spent, *states]
        worst = max(denied, key=lambda s: s.retry_after_seconds)
        count_rate_limited(worst.bucket.scope)
        log.info("rate_limited", scope=worst.bucket.scope, retry_after=worst.retry_after_seconds)
        headers = rate_limit_headers([worst])
        headers["Retry-After"] = str(max(1, math.ceil(worst.retry_after_seconds)))
        raise TooManyRequests(f"The {worst.bucket.scope} rate limit is spent.", headers=headers)
