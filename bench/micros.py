"""Micro-benchmarks from other issues (``bench/micro_*.py``) and the goal probes.

Each ``bench/micro_<name>.py`` exposes ``main()`` that prints a markdown table and
returns a dict. Each runs in its own process with a time limit, so one slow or
broken micro-benchmark cannot stop the run; absence is not an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
MARKER = "@@bench-result@@"
_RUNNER = (
    "import json, importlib, sys\n"
    "mod = importlib.import_module(sys.argv[1])\n"
    "sys.argv[1:] = []  # a main() that parses options sees none, not the module name\n"
    "result = mod.main()\n"
    f"print({MARKER!r} + json.dumps(result, default=str))\n"
)


def discover() -> list[str]:
    return sorted(f"bench.{p.stem}" for p in BENCH_DIR.glob("micro_*.py"))


def run_micro(module: str, timeout_s: float) -> dict[str, Any]:
    """``{"module", "table", "result"}`` or ``{"module", "error"}``."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, module],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"module": module, "error": f"timed out after {timeout_s:.0f} s"}
    table, _, tail = done.stdout.partition(MARKER)
    if done.returncode != 0 or not tail:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"module": module, "error": f"exit {done.returncode}: {reason}"}
    return {"module": module, "table": table.strip(), "result": json.loads(tail)}


def run_micros(timeout_s: float) -> list[dict[str, Any]]:
    return [run_micro(module, timeout_s) for module in discover()]


def run_probe(probe: str, timeout_s: float, *args: str) -> dict[str, Any]:
    """One ``bench.probes`` run; its logs are discarded, its JSON line returned."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.probes", probe, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"probe exited {done.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result
