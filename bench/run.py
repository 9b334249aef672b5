"""``make bench``: every row side by side in one run, then the results file and plot.

Order: start the stub and every row's server at once (idle servers cost nothing);
for each repeat, for each concurrency, measure every row in turn, so machine
noise is spread over all rows rather than landing on one; then the gateway's
RSS soak, the goal probes and the other issues' micro-benchmarks (servers
stopped by then); then ``bench/results/latest.{md,json,png}``.
Usage: ``python -m bench.run [--quick | --tiny] [--out DIR] [--no-install]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import LoadWorker
from bench.matrix import MODES, Mode, measure, median_run, soak, warm_up
from bench.micros import run_micros, run_probe
from bench.procs import Server, free_port, python_argv
from bench.report import machine_facts, write_report
from bench.sanity import check
from bench.targets import HA_ROWS, STUB_PATH, Target, build_targets

RESULTS = Path(__file__).resolve().parent / "results"
GATEWAY_LINES, NAIVE_LINES, DECISION_LINES = 10_000, 1_000, 100_000
SECURITY_CHECKED = (
    "naive",
    "gateway",
    "gateway_passthrough",
    "gateway_redis",
    "gateway_w2",
    "gateway_w2_cluster",
    "gateway_w2_sentinel",
    "decision",
)


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _start(targets: list[Target], stub: Server) -> None:
    for target in targets:
        if target.key == "direct":
            target.server = stub
        elif target.server and not target.note:
            target.server.start()
    for target in targets:
        if target.server and target.server is not stub and not target.note:
            try:
                target.server.wait_ready(target.ready_path, deadline_s=60)
            except RuntimeError as exc:
                target.note = f"unavailable: {exc}"
                _say(target.note)


def _fastapi_stub(root: Path) -> Target:
    port = free_port()
    argv = python_argv("app.cli.main", "stub", "--name", "findings", "--port", str(port))
    server = Server("stub_fastapi", port, argv, log_path=root / "stub_fastapi.log")
    return Target(
        "direct_fastapi",
        "direct stub (FastAPI `gateway stub`)",
        STUB_PATH,
        [("alice", "acme-2026")],
        server,
    )


def run_matrix(
    targets: list[Target], stub: Server, workers: list[LoadWorker], mode: Mode
) -> dict[str, dict[int, dict[str, Any]]]:
    live = [t for t in targets if t.available]
    runs: dict[str, dict[int, list[Any]]] = {
        t.key: {c: [] for c in mode.concurrencies} for t in live
    }
    for repeat in range(mode.repeats):
        for conns in mode.concurrencies:
            for target in live:
                if repeat == 0:
                    warm_up(target, workers, conns, mode)
                run = measure(target, stub.pids, workers, conns, mode)
                runs[target.key][conns].append(run)
                _say(
                    f"r{repeat} c{conns:<3} {target.key:<15} {run.rps:8.0f} req/s "
                    f"p99 {run.p99_ms:7.2f} ms errors {run.errors}"
                )
    return {k: {c: median_run(rs) for c, rs in by_c.items()} for k, by_c in runs.items()}


def _extras(mode: Mode) -> dict[str, Any]:
    tiny = mode.name == "tiny"
    budget = "2" if tiny else "15"
    lines = "2000" if tiny else str(DECISION_LINES)
    return {
        "signature": run_probe("signature", 120),
        "decision": run_probe("decision", 300, "--lines", lines, "--budget-s", budget),
        "micros": [] if tiny else run_micros(timeout_s=180),
        "micros_skipped": tiny,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="short smoke run (1 repeat, 1 s)")
    group.add_argument("--tiny", action="store_true", help="a few hundred requests (tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-install", action="store_true", help="never apt-get nginx")
    parser.add_argument("--loadgen-procs", type=int, default=2, choices=(1, 2))
    parser.add_argument("--only", help="comma-separated row keys to measure (development aid)")
    parser.add_argument(
        "--matrix-only",
        action="store_true",
        help="no soak, probes or micro-benchmarks (development aid; the report says so)",
    )
    parser.add_argument(
        "--baseline",
        help="commit the gateway_base row runs (default: the one before the first Tracing: commit)",
    )
    args = parser.parse_args(argv)
    mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    started = time.monotonic()
    facts = machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = _run_all(Path(tmp), mode, args)
    results.update(mode=mode.name, facts=facts, elapsed_s=round(time.monotonic() - started, 1))
    results["facts"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, args.out)
    _say(f"done in {results['elapsed_s']} s: {args.out / 'latest.md'}")
    return 0


def _run_all(root: Path, mode: Mode, args: argparse.Namespace) -> dict[str, Any]:
    stub = Server("stub", free_port(), python_argv("bench.fast_stub", "--port", "0"))
    stub.argv = python_argv("bench.fast_stub", "--port", str(stub.port))
    targets: list[Target] = []
    workers = [LoadWorker() for _ in range(args.loadgen_procs)]
    try:
        stub.start().wait_ready("/_health")
        targets = build_targets(
            root, stub.port, GATEWAY_LINES, NAIVE_LINES, not args.no_install, args.baseline
        )
        targets.insert(1, _fastapi_stub(root))
        if mode.name == "tiny":
            # Six Redis processes for the Cluster row, five for Sentinel: too much for the
            # smoke test's time budget on a shared machine; --quick and full runs measure them.
            for target in targets:
                if target.key in HA_ROWS and not target.note:
                    target.note = "unavailable: not run in --tiny mode (--quick measures it)"
        if args.only:
            keep = set(args.only.split(","))
            for target in targets:
                if target.key not in keep and not target.note:
                    target.note = "unavailable: not selected (--only)"
        _say(f"starting {len(targets)} rows ({mode.name} mode)")
        _start(targets, stub)
        security = _security(targets)
        matrix = run_matrix(targets, stub, workers, mode)
        gateway = next(t for t in targets if t.key == "gateway")
        if args.matrix_only:
            soak_result = {"error": "skipped (--matrix-only)"}
        elif gateway.available:
            soak_result = soak(gateway, workers, mode)
        else:
            soak_result = {"error": gateway.note}
        log_lines = _decision_lines(root / "gateway.log")
    finally:
        for worker in workers:
            worker.close()
        for target in targets:
            if target.server and target.server is not stub:
                target.server.stop()
        stub.stop()
    _say("probes and micro-benchmarks")
    return {
        "rows": [{"key": t.key, "label": t.label, "note": t.note} for t in targets],
        "matrix": matrix,
        "security": security,
        "soak": soak_result,
        "gateway_decision_log_lines": log_lines,
        "loadgen_procs": len(workers),
        **({} if args.matrix_only else _extras(mode)),
    }


def _security(targets: list[Target]) -> dict[str, dict[str, Any]]:
    """Signed / unsigned / replayed / unknown-caller answers of the rows that check."""
    found: dict[str, dict[str, Any]] = {}
    for target in targets:
        if target.available and target.key in SECURITY_CHECKED:
            try:
                found[target.key] = check(target)
            except (OSError, ValueError) as exc:
                found[target.key] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def _decision_lines(log: Path) -> int:
    """Count the gateway's decision log lines (shows decision logging was on)."""
    if not log.is_file():
        return 0
    with log.open("rb") as handle:
        return sum(1 for line in handle if b'"decision"' in line)


if __name__ == "__main__":
    raise SystemExit(main())
