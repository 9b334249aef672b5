"""Decision latency and reload stall: plain pycasbin ``enforce()`` vs the gateway's path.

Run: ``.venv/bin/python -m bench.micro_policy`` (about a minute on 2 cores).

For 1k, 10k and 100k policy lines (100, 500 and 1,000 engagements) it measures,
in one run, p50/p99 latency and single-thread throughput of plain pycasbin
``enforce()`` and of the gateway's decision path (``PolicyEngine.explain``: the
compiled index plus the ``Decision`` with evidence, without the log write),
and checks on every sampled request that both give the same answer. Plain
Casbin scans every line (~0.5 s a call at 100k), so its sample count shrinks
with size. Then it reloads a 100k-line policy through ``PolicyStore.reload``
while a ticker task measures how late the event loop runs (the longest time
any request would have waited on the reload), against building the same policy
on the loop itself.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.authz.policy import PolicyEngine
from app.authz.reference import casbin_enforcer
from app.authz.store import PolicyStore, build_gated
from app.core.config import PolicySettings
from app.core.logging import configure_logging

REPO = Path(__file__).resolve().parent.parent
SIZES = ((1_000, 100, 200), (10_000, 500, 40), (100_000, 1_000, 8))  # lines, engagements, casbin n
GATEWAY_SAMPLES = 5_000
ROLES = ("analyst", "lead", "viewer", "tester", "reviewer")
METHODS = ("GET", "POST", "DELETE")


STRANGER_CASE = """suite: benchmark
cases:
  - name: a subject with no grant is denied
    subject: nobody-at-all
    method: GET
    path: /v1/engagements/eng-0001/findings
    expect: deny
"""


def engagement(i: int) -> str:
    return f"eng-{i:04d}"


def generate_policy(lines: int, engagements: int, rng: random.Random) -> list[str]:
    """Role rules for every engagement, then per-engagement rules, denies and staffing."""
    out = [
        f"p, {role}, *, /v1/engagements/:engagement/findings{suffix}, {method}, allow"
        for role in ROLES
        for suffix in ("", "/:finding")
        for method in ("GET", "POST")
    ]
    per_engagement = max(1, (lines - len(out)) // engagements)
    for i in range(engagements):
        eng = engagement(i)
        for j in range(per_engagement):
            kind = j % 4
            if kind == 0:
                out.append(f"g, user-{i}-{j}, {rng.choice(ROLES)}, {eng}")
            elif kind == 1:
                path = f"/v1/engagements/{eng}/findings/F-{j}"
                out.append(f"p, {rng.choice(ROLES)}, {eng}, {path}, DELETE, deny")
            else:
                path = f"/v1/engagements/{eng}/reports/R-{j}"
                out.append(f"p, {rng.choice(ROLES)}, {eng}, {path}, {rng.choice(METHODS)}, allow")
    return out[:lines]


def sample_requests(
    count: int, engagements: int, per_engagement: int, rng: random.Random
) -> list[tuple[str, str, str, str]]:
    requests = []
    for _ in range(count):
        home, there = rng.randrange(engagements), rng.randrange(engagements)
        j = rng.randrange(0, per_engagement, 4)
        eng = engagement(rng.choice((home, home, there)))
        path = rng.choice(
            (
                f"/v1/engagements/{eng}/findings",
                f"/v1/engagements/{eng}/findings/F-{j + 1}",
                f"/v1/engagements/{eng}/reports/R-{j + 2}",
            )
        )
        requests.append((f"user-{home}-{j}", eng, path, rng.choice(METHODS)))
    return requests


def timed(fn: Callable[[tuple[str, str, str, str]], bool], requests: list[Any]) -> dict[str, Any]:
    latencies, answers = [], []
    started = time.perf_counter()
    for request in requests:
        t0 = time.perf_counter()
        answers.append(fn(request))
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50_us": cuts[49] * 1e6,
        "p99_us": cuts[98] * 1e6,
        "per_s": len(requests) / total,
        "answers": answers,
    }


def write_policy_dir(root: Path, lines: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "policies" / "model.conf", root / "model.conf")
    (root / "policy.csv").write_text("\n".join(lines) + "\n")
    # The store refuses a directory without a test case (a reload gate that tests
    # nothing): one deny-by-default case is enough for the benchmark.
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "bench.yaml").write_text(STRANGER_CASE)
    return root


def bench_size(lines: int, engagements: int, casbin_n: int, work: Path) -> dict[str, Any]:
    rng = random.Random(lines)
    policy = generate_policy(lines, engagements, rng)
    directory = write_policy_dir(work / f"p{lines}", policy)
    engine = PolicyEngine.load(PolicySettings(dir=directory))
    enforcer = casbin_enforcer(directory / "model.conf", directory / "policy.csv")
    per_engagement = max(4, lines // engagements)
    requests = sample_requests(GATEWAY_SAMPLES, engagements, per_engagement, rng)
    gateway = timed(lambda r: engine.explain(r[0], r[1], r[2], r[3]).allowed, requests)
    casbin = timed(lambda r: bool(enforcer.enforce(*r)), requests[:casbin_n])
    agree = gateway["answers"][:casbin_n] == casbin["answers"]
    allowed = sum(gateway["answers"]) / len(requests)
    return {"lines": lines, "engagements": engagements, "casbin": casbin, "gateway": gateway,
            "casbin_samples": casbin_n, "agree": agree, "allowed_share": allowed}  # fmt: skip


async def loop_stall_during(action: Callable[[], Any]) -> tuple[float, float, float]:
    """Run ``action`` on the loop while a 1 ms ticker records how late each tick fires."""
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            expected = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lags.append(max(0.0, time.perf_counter() - expected))

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    result = action()
    if asyncio.iscoroutine(result):
        await result
    elapsed = time.perf_counter() - started
    done.set()
    await tick
    return elapsed, max(lags), statistics.quantiles(lags, n=100, method="inclusive")[98]


def bench_reload(work: Path, lines: int = 100_000, engagements: int = 1_000) -> dict[str, Any]:
    rng = random.Random(7)
    directory = write_policy_dir(work / "reload", generate_policy(lines, engagements, rng))
    settings = PolicySettings(dir=directory, watch_interval=0)
    store = PolicyStore.open(settings)
    with (directory / "policy.csv").open("a") as policy:
        policy.write("g, late-joiner, analyst, eng-0001\n")

    async def scenario() -> dict[str, Any]:
        idle = await loop_stall_during(lambda: asyncio.sleep(1.0))
        off = await loop_stall_during(lambda: store.reload("bench"))
        on = await loop_stall_during(lambda: build_gated(settings))
        return {"idle": idle, "off_loop": off, "on_loop": on}

    result = asyncio.run(scenario())
    last = store.status.last_reload
    if last is None or last.outcome != "swapped":
        raise RuntimeError(f"the benchmark reload did not swap: {last}")
    return result


def render(rows: list[dict[str, Any]], reload: dict[str, Any]) -> str:
    out = [
        "| lines | engagements | casbin p50 µs | casbin p99 µs | casbin /s | gateway p50 µs "
        "| gateway p99 µs | gateway /s | p99 speed-up | throughput ratio | same answers |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        c, g = row["casbin"], row["gateway"]
        out.append(
            f"| {row['lines']:,} | {row['engagements']:,} "
            f"| {c['p50_us']:,.0f} | {c['p99_us']:,.0f} | {c['per_s']:,.1f} "
            f"| {g['p50_us']:,.1f} | {g['p99_us']:,.1f} | {g['per_s']:,.0f} "
            f"| {c['p99_us'] / g['p99_us']:,.0f}x | {g['per_s'] / c['per_s']:,.0f}x "
            f"| {'yes' if row['agree'] else 'NO'} ({row['casbin_samples']} checked) |"
        )
    out += [
        "",
        "| reload of 100k lines | duration ms | worst loop stall ms | p99 loop lag ms |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "idle": "idle loop, nothing running (noise floor)",
        "off_loop": "PolicyStore.reload (gate in a worker thread)",
        "on_loop": "same build on the event loop (baseline)",
    }
    for key, label in labels.items():
        elapsed, worst, p99 = reload[key]
        out.append(f"| {label} | {elapsed * 1e3:,.0f} | {worst * 1e3:,.1f} | {p99 * 1e3:,.1f} |")
    return "\n".join(out)


def main() -> dict[str, Any]:
    # The reload's own log line (structlog's default goes to stdout) is not the table's.
    configure_logging("WARNING", "json")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [bench_size(lines, engs, n, work) for lines, engs, n in SIZES]
        reload = bench_reload(work)
    print(render(rows, reload))
    for row in rows:
        for side in ("casbin", "gateway"):
            row[side].pop("answers")
    return {"sizes": rows, "reload": reload}


if __name__ == "__main__":
    main()
