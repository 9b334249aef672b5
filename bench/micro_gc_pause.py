"""Micro-benchmark: the full garbage collection pause with the replay cache full of nonces.

A gen-2 collection runs on the event loop, so its pause lands on whichever
requests are in flight: the gateway's p99 tail at 64 connections. The memory
nonce store holds about request rate times twice the skew window nonces (1,600
req/s with the default 300 s window: ~1M). This measures ``gc.collect()`` with
the store holding N nonces, against the same collection with none, for the
store as it is and for the earlier design (an expiry heap of tuples and a
tuple-keyed dict, rebuilt here as the baseline), in one run.

    .venv/bin/python -m bench.micro_gc_pause
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import statistics
import time
from typing import Any

from app.authn.nonces import MemoryNonceStore

SIZES = (100_000, 500_000)
REPEATS = 5


class HeapOfTuples:
    """The earlier memory store's containers: what a collection had to walk."""

    def __init__(self) -> None:
        self.expiry: dict[tuple[str, str], float] = {}
        self.heap: list[tuple[float, tuple[str, str]]] = []

    def add(self, nonce: str, expires_at: float) -> None:
        pair = ("bench-key", nonce)
        self.expiry[pair] = expires_at
        heapq.heappush(self.heap, (expires_at, pair))


def pause_ms() -> float:
    """Median wall time of a full collection, in milliseconds."""
    gc.collect()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def with_store(size: int) -> float:
    clock = [0.0]
    store = MemoryNonceStore(size + 1, clock=lambda: clock[0], fence=0)

    async def fill() -> None:
        for i in range(size):
            clock[0] = i / 2000
            await store.claim("bench-key", f"nonce-{i:08d}", 1, 600)

    asyncio.run(fill())
    try:
        return pause_ms()
    finally:
        asyncio.run(store.aclose())


def with_heap(size: int) -> float:
    held = HeapOfTuples()
    for i in range(size):
        held.add(f"nonce-{i:08d}", 600 + i / 2000)
    return pause_ms()


def main() -> dict[str, Any]:
    gc.collect()
    gc.freeze()  # as the gateway does after start-up (app.ops.processes.freeze_startup_heap)
    empty = pause_ms()
    rows = []
    for size in SIZES:
        store, heap = with_store(size), with_heap(size)
        rows.append({"nonces": size, "store_ms": store, "heap_ms": heap})
    print("| nonces held | full GC, store as it is (ms) | full GC, heap of tuples (ms) |")
    print("|---:|---:|---:|")
    print(f"| 0 | {empty:.2f} | {empty:.2f} |")
    for row in rows:
        print(f"| {row['nonces']:,} | {row['store_ms']:.2f} | {row['heap_ms']:.2f} |")
    return {"empty_ms": empty, "rows": rows}


if __name__ == "__main__":
    main()
