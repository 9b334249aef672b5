"""``bench/results/latest.md``: machine facts, the table, ratios and every goal."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.goals import evaluate_goals
from bench.nginx import nginx_binary, nginx_version
from bench.plot import write_plot
from bench.sanity import verdict

REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def machine_facts() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    nginx = nginx_binary()
    return {
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gb": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": nginx_version(nginx) if nginx else "not installed",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _errors(cell: dict[str, Any]) -> str:
    """The error count, with the statuses behind it (0: no answer)."""
    if not cell["errors"]:
        return "0"
    bad = {int(k): v for k, v in cell.get("statuses", {}).items() if int(k) == 0 or int(k) >= 400}
    return f"{cell['errors']} ({', '.join(f'{k}: {v}' for k, v in sorted(bad.items()))})"


def _table(results: dict[str, Any]) -> list[str]:
    concs = sorted({int(c) for cells in results["matrix"].values() for c in cells})
    out = [
        "| row | conns | req/s (median) | p50 ms | p99 ms | row CPU µs/req | stub CPU µs/req "
        "| loadgen CPU µs/req | loadgen core use | errors | req/s per repeat |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results["rows"]:
        cells = results["matrix"].get(row["key"])
        if not cells:
            out.append(f"| {row['label']} | – | {row['note'] or 'not measured'} |||||||||")
            continue
        for c in concs:
            m = cells[c]
            out.append(
                f"| {row['label']} | {c} | {_fmt(m['rps'])} | {_fmt(m['p50_ms'], 2)} "
                f"| {_fmt(m['p99_ms'], 2)} | {_fmt(m['target_cpu_us'])} | {_fmt(m['stub_cpu_us'])} "
                f"| {_fmt(m['loadgen_cpu_us'])} | {_fmt(m['loadgen_util'], 2)} | {_errors(m)} "
                f"| {', '.join(str(v) for v in m['rps_all'])} |"
            )
    return out


def _ratios(results: dict[str, Any]) -> list[str]:
    matrix = results["matrix"]
    gw = matrix.get("gateway")
    out = ["| gateway vs | conns | throughput ratio | p99 added (ms) |", "|---|---:|---:|---:|"]
    if not gw:
        return [*out, "| (gateway not measured) ||||"]
    for key in ("bare_aiohttp", "bare_ours", "naive", "nginx", "direct"):
        base = matrix.get(key)
        if not base:
            continue
        label = next(r["label"] for r in results["rows"] if r["key"] == key)
        for c in sorted(gw):
            ratio = gw[c]["rps"] / base[c]["rps"] if base[c]["rps"] else float("nan")
            added = gw[c]["p99_ms"] - base[c]["p99_ms"]
            out.append(f"| {label} | {c} | {_fmt(ratio, 3)}× | {_fmt(added, 2)} |")
    return out


def _redis_deployments(results: dict[str, Any]) -> list[str]:
    """Two workers on each Redis deployment against two workers on one redis-server."""
    matrix = results["matrix"]
    base = matrix.get("gateway_w2")
    out = [
        "| two workers on | conns | throughput ratio | p99 added (ms) | row CPU µs/req added |",
        "|---|---:|---:|---:|---:|",
    ]
    if not base:
        return [*out, "| (gateway_w2 not measured) |||||"]
    for key in ("gateway_w2_cluster", "gateway_w2_sentinel"):
        cells = matrix.get(key)
        label = next((r["label"] for r in results["rows"] if r["key"] == key), key)
        if not cells:
            out.append(f"| {label} | – | not measured |||")
            continue
        for c in sorted(cells):
            ratio = cells[c]["rps"] / base[c]["rps"] if base[c]["rps"] else float("nan")
            added = cells[c]["p99_ms"] - base[c]["p99_ms"]
            cpu = cells[c]["target_cpu_us"] - base[c]["target_cpu_us"]
            out.append(f"| {label} | {c} | {_fmt(ratio, 3)}× | {_fmt(added, 2)} | {_fmt(cpu)} |")
    return out


def _soak(soak: dict[str, Any]) -> list[str]:
    if "samples" not in soak:
        return [f"Not run: {soak.get('error')}"]
    return [
        f"{soak['requests']:,} requests (target {soak['target_requests']:,}) in "
        f"{soak['seconds']} s; RSS after warm-up {soak['rss_warm_mb']:.1f} MB, at end "
        f"{soak['rss_end_mb']:.1f} MB ({soak['growth'] * 100:+.1f}%).",
        "",
        "| requests so far | RSS MB |",
        "|---:|---:|",
        *[f"| {n:,} | {mb} |" for n, mb in soak["samples"]],
    ]


def _loadgen_verdict(results: dict[str, Any]) -> str:
    """How busy the generator's busiest process was, by kind of row."""
    matrix = results["matrix"]
    python_rows = [k for k in matrix if k not in ("direct", "nginx")]
    native = max(
        (c["loadgen_util"] for k in ("direct", "nginx") for c in matrix.get(k, {}).values()),
        default=float("nan"),
    )
    others = max(
        (c["loadgen_util"] for k in python_rows for c in matrix[k].values()), default=float("nan")
    )
    return (
        f"- load generator: its busiest process used at most {_fmt(others, 2)} of a core "
        "(worst cell, median of repeats) "
        f"during the Python rows' cells and {_fmt(native, 2)} during the stub / nginx cells "
        "(1.0 = saturated: those cells are then bounded by the generator, not the server)."
    )


def _micros(results: dict[str, Any]) -> list[str]:
    if results.get("micros_skipped"):
        return ["Skipped in `--tiny` mode."]
    if not results.get("micros"):
        return ["No `bench/micro_*.py` modules on this commit."]
    out: list[str] = []
    for micro in results["micros"]:
        out += [f"### `{micro['module']}`", ""]
        out += [micro.get("table") or f"failed: {micro.get('error')}", ""]
    return out


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    facts = results["facts"]
    goals = evaluate_goals(results)
    plot = write_plot(results, out_dir / "latest.png")
    dirty = " (with uncommitted changes)" if facts["dirty"] else ""
    lines = [
        "# Benchmark results (`make bench`)",
        "",
        f"- commit measured: `{facts['commit']}`{dirty}"
        f" on `{facts['branch']}`; mode `{results['mode']}`; run took {results['elapsed_s']} s",
        f"- machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['mem_gb']} GB, "
        f"Linux {facts['kernel']}, Python {facts['python']}, nginx {facts['nginx']}",
        f"- load average at start {' '.join(facts['loadavg_start'])}, at end "
        f"{' '.join(facts.get('loadavg_end', []))}. **The machine is shared with other "
        "sessions running tests: absolute figures are noisy; compare ratios within this run.**",
        "- every cell: closed-loop keep-alive connections, each request freshly signed "
        f"(RFC 9421, new nonce) by the load generator in {results['loadgen_procs']} process(es); "
        "figures are medians over the repeats; CPU per request from /proc "
        "(all processes of the row).",
        _loadgen_verdict(results),
        "",
        "## Goals (issues 11, 7, 5 and 14)",
        "",
        "| goal | figure | target | met |",
        "|---|---|---|---|",
        *[f"| {g['goal']} | {g['figure']} | {g['target']} | {g['met']} |" for g in goals],
        "",
        "## Security checks on the measured rows (before the load)",
        "",
        *[f"- **{key}**: {verdict(statuses)}" for key, statuses in results["security"].items()],
        "",
        "## Throughput and latency",
        "",
        *_table(results),
        "",
        "## Ratios (gateway against each peer, same run)",
        "",
        *_ratios(results),
        "",
        "## Redis deployments (two workers: Cluster and Sentinel against one redis-server)",
        "",
        "Row CPU includes every Redis process of the row (replicas and sentinels too).",
        "",
        *_redis_deployments(results),
        "",
        "## RSS soak (gateway, 64 connections)",
        "",
        *_soak(results["soak"]),
        "",
        f"Decision log lines written by the gateway during the run: "
        f"{results['gateway_decision_log_lines']:,} "
        "(decision logging was on, INFO, JSON to a file).",
        "",
        "## Goal probes",
        "",
        f"- signature: `{results.get('signature', 'not run')}`",
        f"- decision: `{results.get('decision', 'not run')}`",
        "",
        "## Micro-benchmarks (`bench/micro_*.py`)",
        "",
        *_micros(results),
        "",
        "## Rows",
        "",
        *[
            f"- **{r['label']}** (`{r['key']}`){': ' + r['note'] if r['note'] else ''}"
            for r in results["rows"]
        ],
        "",
        f"Plot: `{plot.name}` (latency vs concurrency, throughput bars)." if plot else "",
        "",
        "What each row is, and how to read this file: `bench/README.md`. Where the gateway's "
        "CPU goes: `bench/results/profile-*.md` (`python -m bench.profile_gateway`).",
    ]
    (out_dir / "latest.md").write_text("\n".join(lines) + "\n")
