"""Profile the gateway under the bench load with py-spy; summarise where the CPU goes.

Starts the fast stub and ``gateway serve`` (as ``make bench`` does, with a policy
of ``--lines`` lines), drives signed load for ``--seconds``, samples the gateway
with ``py-spy record --format raw`` and writes a markdown summary: the hottest
functions by inclusive and by self samples, grouped by pipeline stage.
Usage: ``python -m bench.profile_gateway [--route typed|passthrough|decision]
[--lines 10000] [--seconds 15] [--out FILE]`` (the typed findings route by default).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.loadgen import Job, LoadWorker
from bench.policygen import load_callers, write_policy
from bench.procs import Server, free_port, python_argv
from bench.targets import (
    BENCH_KEY_ENV,
    BENCH_KEY_ID,
    BENCH_SECRET,
    DECISION_PATH,
    GATEWAY_PATH,
    PASSTHROUGH_PATH,
    gateway_config,
)

ROUTES = {"typed": GATEWAY_PATH, "passthrough": PASSTHROUGH_PATH, "decision": DECISION_PATH}

STAGES = (
    ("authz (policy)", ("casbin", "app/authz")),
    ("authn (signature)", ("app/authn", "http_sf")),
    ("downstream client", ("httpx", "httpcore", "app/downstream", "app/workflows", "anyio")),
    ("logging", ("structlog", "logging/__init__", "orjson")),
    ("edge", ("app/edge",)),
    ("gate glue (app/api/pipeline, routing)", ("app/api/pipeline", "app/api/routing")),
    ("metrics", ("prometheus_client", "app/ops/metrics")),
    ("FastAPI / Starlette / pydantic", ("fastapi", "starlette", "pydantic")),
    ("uvicorn / event loop", ("uvicorn", "uvloop", "asyncio", "httptools")),
)


def _stage(frame: str) -> str | None:
    for stage, needles in STAGES:
        if any(n in frame for n in needles):
            return stage
    return None


def summarise(raw: str, top: int = 25) -> list[str]:
    """Markdown tables from py-spy's collapsed stacks (``frame;frame;... count``)."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        self_time[frames[-1]] += count
        # A sample belongs to the innermost frame that names a stage.
        stage = next((s for f in reversed(frames) if (s := _stage(f))), "other")
        stages[stage] += count
    pct = 100 / max(1, total)
    out = [f"{total} samples.", "", "| stage (innermost frame) | % of samples |", "|---|---:|"]
    out += [f"| {s} | {c * pct:.1f} |" for s, c in stages.most_common()]
    out += ["", "| inclusive % | function |", "|---:|---|"]
    out += [f"| {c * pct:.1f} | `{f}` |" for f, c in inclusive.most_common(top)]
    out += ["", "| self % | function |", "|---:|---|"]
    out += [f"| {c * pct:.1f} | `{f}` |" for f, c in self_time.most_common(top)]
    return out


def profile(lines: int, seconds: float, conns: int, root: Path, route: str = "typed") -> list[str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stub = Server("stub", free_port(), [])
    stub.argv = python_argv("bench.fast_stub", "--port", str(stub.port))
    config = gateway_config(root, stub.port, write_policy(root / "policy", lines))
    port = free_port()
    argv = python_argv("app.cli.main", "serve", "--port", str(port), "--config", str(config))
    gateway = Server("gateway", port, argv, {BENCH_KEY_ENV: BENCH_SECRET.decode()})
    worker = LoadWorker()
    try:
        stub.start().wait_ready("/_health")
        gateway.start().wait_ready("/healthz")

        job = Job(port, ROUTES[route], load_callers(lines), conns, seconds + 4, 0,
                  BENCH_KEY_ID, BENCH_SECRET)  # fmt: skip
        worker.submit(job, conns, 0)
        raw = root / "profile.txt"
        assert gateway.proc is not None
        subprocess.run(
            [py_spy, "record", "--pid", str(gateway.proc.pid), "--duration", str(int(seconds)),
             "--rate", "200", "--format", "raw", "--function",  # by function, not line
             "--output", str(raw), "--nonblocking"],
            check=True, capture_output=True, timeout=seconds + 60,
        )  # fmt: skip
        outcome = worker.result(timeout=seconds + 60)
        done = outcome.ok + outcome.errors
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        header = [f"# Gateway profile (py-spy, {route} route, {lines:,}-line policy), "
                  f"commit `{commit}`", "",
                  "Shared 2-core machine; the load generator and stub run beside the gateway.",
                  "", f"Load: {conns} connections, {done} requests ({outcome.errors} errors) "
                  f"in {outcome.wall_s:.1f} s = {outcome.ok / outcome.wall_s:,.0f} req/s "
                  f"while sampled; policy {lines:,} lines.", ""]  # fmt: skip
        return header + summarise(raw.read_text())
    finally:
        worker.close()
        gateway.stop()
        stub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--route", choices=sorted(ROUTES), default="typed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        lines = profile(args.lines, args.seconds, args.conns, Path(tmp), args.route)
        text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
