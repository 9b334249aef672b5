"""Smoke test of ``make bench``: the harness in tiny mode against real local servers.

A few hundred requests, one repeat, no timing assertions: it checks that every
row and every goal reaches the results file, and that the rows that need no
optional dependency were really measured (requests answered, none refused).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

ALWAYS_MEASURED = (
    "direct",
    "direct_fastapi",
    "bare_ours",
    "naive",
    "gateway",
    "gateway_passthrough",
    "decision",
    "gateway_trace",
)
GOALS = (
    "vs bare proxy (aiohttp)",
    "vs naive gateway",
    "vs nginx",
    "added p99",
    "signature verification",
    "decision p99",
    "two workers",
    "RSS growth",
    "decision endpoint req/s vs the full gateway",
    "pass-through route vs typed route",
    "gateway p99 vs bare proxy (aiohttp) p99",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--no-install", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.timeout(300)
def test_every_row_is_measured_or_says_why(tiny_run: Path) -> None:
    results = json.loads((tiny_run / "latest.json").read_text())
    report = (tiny_run / "latest.md").read_text()
    rows = {row["key"]: row for row in results["rows"]}
    expected = {
        "direct",
        "direct_fastapi",
        "nginx",
        "bare_aiohttp",
        "bare_ours",
        "naive",
        "gateway",
        "gateway_passthrough",
        "gateway_redis",
        "gateway_w2",
        "decision",
        "gateway_trace",
        "gateway_trace01",
        "gateway_base",
        "gateway_shadow",
        "gateway_w2_cluster",
        "gateway_w2_sentinel",
    }
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["label"] in report
        assert key in results["matrix"] or row["note"].startswith("unavailable"), key
    must_run = [*ALWAYS_MEASURED]
    if importlib.util.find_spec("aiohttp") is not None:
        must_run.append("bare_aiohttp")
    for key in must_run:
        for conns in ("1", "16", "64"):
            cell = results["matrix"][key][conns]
            assert cell["ok"] > 0, (key, conns)
            statuses = {int(code): n for code, n in cell["statuses"].items()}
            assert sum(statuses.values()) == cell["ok"] + cell["errors"], (key, conns)
            # 4xx would mean a harness bug (bad signature, policy without the caller);
            # a 5xx or a dropped connection can be honest overload on a shared box.
            assert not [c for c in statuses if 400 <= c < 500], (key, conns, statuses)


@pytest.mark.timeout(300)
def test_every_goal_and_extra_is_reported(tiny_run: Path) -> None:
    report = (tiny_run / "latest.md").read_text()
    goal_rows = report.split("## Goals", 1)[1].split("## Throughput", 1)[0]
    for goal in GOALS:
        assert goal in goal_rows, goal
    results = json.loads((tiny_run / "latest.json").read_text())
    assert results["gateway_decision_log_lines"] > 0  # decision logging was on
    for key in ("gateway", "gateway_passthrough", "naive", "decision"):
        security = results["security"][key]
        assert (security["signed"], security["unsigned"], security["unknown_caller"]) == (
            200,
            401,
            403,
        ), key
    assert "## Security checks" in report
    assert results["soak"]["requests"] > 0
    assert results["soak"]["rss_end_mb"] > 0
    assert "ratio" in results["signature"], results["signature"]
    assert "p99_us" in results["decision"], results["decision"]
    assert len(results["facts"]["commit"]) == 40
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tiny_run / "latest.png").stat().st_size > 0
