"""Measured cells: one target at one concurrency, repeated; and the RSS soak."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import Job, LoadWorker, Outcome, latencies, percentile
from bench.procs import cpu_seconds, rss_bytes
from bench.targets import BENCH_KEY_ID, BENCH_SECRET, Target


@dataclass(frozen=True)
class Mode:
    """How long and how often: full (``make bench``), quick, or tiny (the smoke test)."""

    name: str
    duration_s: float
    repeats: int
    warmup_s: float
    cell_max_requests: int
    soak_requests: int
    soak_warmup_requests: int
    soak_cap_s: float
    concurrencies: tuple[int, ...] = (1, 16, 64)


MODES = {
    "full": Mode("full", 3.0, 3, 1.0, 0, 200_000, 20_000, 150.0),
    "quick": Mode("quick", 1.0, 1, 0.5, 0, 20_000, 4_000, 30.0),
    "tiny": Mode("tiny", 3.0, 1, 0.0, 40, 300, 100, 20.0),
}


@dataclass
class Run:
    """One repeat of one cell."""

    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    loadgen_cpu_us: float  # generator CPU per request
    loadgen_util: float  # generator CPU / wall, per process (1.0 = one core saturated)
    target_cpu_us: float
    stub_cpu_us: float
    statuses: dict[int, int] = field(default_factory=dict)


def _job(target: Target, connections: int, duration: float, max_requests: int) -> Job:
    return Job(
        port=target.server.port if target.server else 0,
        path_template=target.path_template,
        callers=target.callers,
        connections=connections,
        duration_s=duration,
        max_requests=max_requests,
        key_id=BENCH_KEY_ID,
        secret=BENCH_SECRET,
    )


def drive(
    workers: list[LoadWorker], job: Job, connections: int, max_requests: int
) -> list[Outcome]:
    """Split the connections (and request budget) over the workers; wait for all."""
    used = workers[: max(1, min(len(workers), connections))]
    for i, worker in enumerate(used):
        share = connections // len(used) + (1 if i < connections % len(used) else 0)
        budget = max_requests // len(used) if max_requests else 0
        worker.submit(job, share, budget)
    outcomes = [w.result(timeout=job.duration_s + job.timeout_s + 30) for w in used]
    failures = [o.failure for o in outcomes if o.failure]
    if failures:
        raise RuntimeError("; ".join(failures))
    return outcomes


def measure(
    target: Target, stub_pids: list[int], workers: list[LoadWorker], conns: int, mode: Mode
) -> Run:
    pids = target.server.pids if target.server else []
    cpu0, stub0 = cpu_seconds(pids), cpu_seconds(stub_pids)
    job = _job(target, conns, mode.duration_s, mode.cell_max_requests)
    outcomes = drive(workers, job, conns, mode.cell_max_requests)
    cpu1, stub1 = cpu_seconds(pids), cpu_seconds(stub_pids)
    ok = sum(o.ok for o in outcomes)
    errors = sum(o.errors for o in outcomes)
    done = max(1, ok + errors)
    wall = max(o.wall_s for o in outcomes)
    lat = latencies(outcomes)
    statuses: dict[int, int] = {}
    for out in outcomes:
        for code, count in out.statuses.items():
            statuses[int(code)] = statuses.get(int(code), 0) + count
    return Run(
        rps=ok / wall if wall else 0.0,
        p50_ms=percentile(lat, 0.50) / 1000,
        p99_ms=percentile(lat, 0.99) / 1000,
        ok=ok,
        errors=errors,
        loadgen_cpu_us=sum(o.cpu_s for o in outcomes) / done * 1e6,
        loadgen_util=max(o.cpu_s / o.wall_s for o in outcomes if o.wall_s),
        target_cpu_us=(cpu1 - cpu0) / done * 1e6,
        stub_cpu_us=(stub1 - stub0) / done * 1e6,
        statuses=statuses,
    )


def warm_up(target: Target, workers: list[LoadWorker], conns: int, mode: Mode) -> None:
    if mode.warmup_s > 0:
        drive(workers, _job(target, conns, mode.warmup_s, 0), conns, 0)


def median_run(runs: list[Run]) -> dict[str, Any]:
    """Field-wise medians over the repeats (the figure reported)."""
    keys = (
        "rps",
        "p50_ms",
        "p99_ms",
        "loadgen_cpu_us",
        "loadgen_util",
        "target_cpu_us",
        "stub_cpu_us",
    )
    summary: dict[str, Any] = {k: statistics.median(getattr(r, k) for r in runs) for k in keys}
    summary["repeats"] = len(runs)
    summary["ok"] = sum(r.ok for r in runs)
    summary["errors"] = sum(r.errors for r in runs)
    summary["rps_all"] = [round(r.rps, 1) for r in runs]
    statuses: dict[int, int] = {}
    for run in runs:
        for code, count in run.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    summary["statuses"] = statuses
    return summary


def soak(target: Target, workers: list[LoadWorker], mode: Mode, conns: int = 64) -> dict[str, Any]:
    """Warm up, read RSS, then drive chunks until the request total or the time cap."""
    assert target.server is not None
    started = time.monotonic()
    chunk_s = min(10.0, mode.soak_cap_s)
    total = _soak_chunk(target, workers, conns, 20.0, mode.soak_warmup_requests)
    rss_warm = rss_bytes(target.server.pids)
    samples = [(total, rss_warm)]
    while total < mode.soak_requests and time.monotonic() - started < mode.soak_cap_s:
        left = mode.soak_requests - total
        total += _soak_chunk(target, workers, conns, chunk_s, left)
        samples.append((total, rss_bytes(target.server.pids)))
    rss_end = samples[-1][1]
    return {
        "requests": total,
        "target_requests": mode.soak_requests,
        "seconds": round(time.monotonic() - started, 1),
        "rss_warm_mb": rss_warm / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "growth": (rss_end - rss_warm) / rss_warm if rss_warm else float("nan"),
        "samples": [(n, round(r / 2**20, 1)) for n, r in samples],
    }


def _soak_chunk(
    target: Target, workers: list[LoadWorker], conns: int, seconds: float, budget: int
) -> int:
    outcomes = drive(workers, _job(target, conns, seconds, budget), conns, budget)
    return sum(o.ok + o.errors for o in outcomes)
