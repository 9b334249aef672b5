"""Benchmark: the Redis nonce claim with the replay fence against a bare ``SET NX EX``.

One real redis-server on loopback (started here, no persistence). In one run:
the round trip of a bare ``SET key 1 NX EX ttl`` (the claim before the fence),
of ``RedisNonceStore.claim`` (one ``EVALSHA``: ``INFO server`` for the run id,
``GET`` the fence, ``SET NX EX``), and the server-side cost of each measured
inside Redis by a Lua loop (``TIME`` before and after). Medians of repeats, in
microseconds; the ratios are what to watch.

    .venv/bin/python -m bench.redis_nonce_claim
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import redis.asyncio as aioredis

from app.authn.nonces import RedisNonceStore
from app.core.config import RedisSettings
from app.core.redis import create_redis
from tests.redis_server import RedisServer, redis_binary

CLAIMS = 2000
REPEATS = 5
SERVER_LOOP = 20000
# Server-side cost per iteration, measured by Redis's own clock inside one script.
SERVER_COST = """
local function elapsed(t0) local t1 = redis.call('TIME')
  return (t1[1] - t0[1]) * 1e6 + (t1[2] - t0[2]) end
local n = tonumber(ARGV[1])
local t0 = redis.call('TIME')
for i = 1, n do redis.call('SET', 'bench:set:' .. i, '1', 'NX', 'EX', 60) end
local bare = elapsed(t0)
t0 = redis.call('TIME')
for i = 1, n do
  string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  redis.call('GET', 'bench:fence')
  redis.call('SET', 'bench:fenced:' .. i, '1', 'NX', 'EX', 60)
end
return {tostring(bare / n), tostring(elapsed(t0) / n)}
"""


async def round_trips(client: aioredis.Redis, store: RedisNonceStore, repeat: int) -> list[float]:
    """Microseconds per bare SET NX EX and per fenced claim, on distinct keys."""
    fence = await store.open()
    assert fence is not None, "redis-server answers"
    created = math.ceil(fence)  # every claim passes the fence: the common path
    started = time.perf_counter_ns()
    for i in range(CLAIMS):
        await client.set(f"bench:bare:{repeat}:{i}", b"1", nx=True, ex=60)
    bare = (time.perf_counter_ns() - started) / CLAIMS / 1000
    started = time.perf_counter_ns()
    for i in range(CLAIMS):
        await store.claim("bench", f"{repeat}:{i}", created, 60)
    fenced = (time.perf_counter_ns() - started) / CLAIMS / 1000
    return [bare, fenced]


async def measure(url: str) -> dict[str, float]:
    # A long read timeout: the server-side loop blocks Redis for a fraction of a second.
    client = aioredis.Redis.from_url(url, socket_timeout=30)
    store = RedisNonceStore(create_redis(RedisSettings(url=url)))
    samples: list[list[float]] = []
    try:
        for repeat in range(REPEATS):
            trips = await round_trips(client, store, repeat)
            await client.flushall()
            server = await client.eval(SERVER_COST, 0, SERVER_LOOP)
            samples.append([*trips, *(float(v) for v in server)])
            await client.flushall()
    finally:
        await client.aclose()
        await store.aclose()
    names = ("bare_rtt", "fenced_rtt", "bare_server", "fenced_server")
    return {name: statistics.median(s[i] for s in samples) for i, name in enumerate(names)}


def main() -> dict[str, float]:
    """Run the benchmark, print a markdown table and return the figures."""
    server = RedisServer(redis_binary()).start()
    try:
        f = asyncio.run(measure(server.url))
    finally:
        server.stop()
    print("| measure | bare SET NX EX µs | fenced claim µs | fenced / bare |")
    print("|---|---:|---:|---:|")
    print(
        f"| round trip (client) | {f['bare_rtt']:.1f} | {f['fenced_rtt']:.1f} "
        f"| {f['fenced_rtt'] / f['bare_rtt']:.2f}x |"
    )
    print(
        f"| inside Redis | {f['bare_server']:.2f} | {f['fenced_server']:.2f} "
        f"| {f['fenced_server'] / f['bare_server']:.2f}x |"
    )
    return f


if __name__ == "__main__":
    main()
