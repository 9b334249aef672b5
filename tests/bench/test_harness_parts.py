"""The harness's parts: goal evaluation, profile summary, micro-benchmark runner, Redis rows."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from bench.goals import evaluate_goals, pipeline_goals
from bench.micros import discover, run_micro
from bench.profile_gateway import summarise
from bench.report import _redis_deployments
from bench.with_redis import missing
from tests.conftest import REPO


def _cell(rps: float, p99: float) -> dict[str, Any]:
    return {"rps": rps, "p99_ms": p99}


def _results(gateway_rps: float, gateway_p99: float) -> dict[str, Any]:
    by_conns = {
        "gateway": (gateway_rps, gateway_p99),
        "bare_aiohttp": (1000.0, 5.0),
        "bare_ours": (850.0, 5.5),
        "naive": (50.0, 100.0),
        "nginx": (1500.0, 2.0),
    }
    return {
        "matrix": {k: {c: _cell(r, p) for c in (1, 16, 64)} for k, (r, p) in by_conns.items()},
        "rows": [{"key": "gateway_w2", "note": "unavailable: no --workers"}],
        "signature": {"verify_us": 5.0, "raw_hmac_us": 3.0, "ratio": 5 / 3},
        "decision": {"lines": 100_000, "p50_us": 20.0, "p99_us": 150.0, "decisions": 9},
        "soak": {"growth": 0.01, "requests": 250_000, "target_requests": 200_000,
                 "rss_warm_mb": 70.0, "rss_end_mb": 70.7, "seconds": 99},
    }  # fmt: skip


def test_goals_met_and_not_met_follow_the_figures() -> None:
    goals = {g["goal"]: g for g in evaluate_goals(_results(900.0, 6.0))}
    met = {name: g["met"] for name, g in goals.items()}
    assert met["gateway req/s at 64 conns vs bare proxy (aiohttp)"] == "**met**"
    assert met["gateway req/s at 64 conns vs naive gateway"] == "**met**"
    assert met["gateway req/s at 64 conns vs nginx"] == "**met**"
    assert met["added p99 over bare proxy (aiohttp) at 16 conns"] == "**met**"
    assert met["signature verification vs one raw HMAC, 1 KB body"] == "**met**"
    assert met["decision p99 at 100,000 policy lines"] == "**not met**"
    assert met["two workers vs one (both on Redis), req/s at 64 conns"] == "n/a"
    assert met["gateway RSS growth after warm-up over the soak"] == "**met**"


def test_slow_gateway_misses_the_ratio_goals() -> None:
    later = {g["goal"] for g in pipeline_goals({})}  # issue 11's, listed first
    goals = [g for g in evaluate_goals(_results(100.0, 50.0)) if g["goal"] not in later]
    assert [g["met"] for g in goals[:4]] == ["**not met**"] * 4
    assert goals[0]["figure"].startswith("0.100")


def test_pipeline_goals_compare_both_routes_with_the_bare_proxy() -> None:
    results = _results(750.0, 9.0)
    results["matrix"]["gateway_passthrough"] = {c: _cell(700.0, 9.0) for c in (1, 16, 64)}
    goals = {g["goal"]: g["met"] for g in pipeline_goals(results["matrix"])}
    assert goals["gateway (typed route) req/s vs bare proxy (aiohttp) at 64 conns"] == "**met**"
    assert goals["gateway (pass-through route) req/s vs bare proxy (aiohttp) at 16 conns"] == (
        "**not met**"  # 0.70 < 0.8
    )
    assert goals["pass-through route vs typed route, req/s at 64 conns"] == "**not met**"
    assert goals["gateway p99 vs bare proxy (aiohttp) p99 at 64 conns"] == "**met**"  # 1.8x
    del results["matrix"]["gateway_passthrough"]
    missing = {g["goal"]: g["met"] for g in pipeline_goals(results["matrix"])}
    assert missing["pass-through route vs typed route, req/s at 16 conns"] == "n/a"


def test_short_soak_is_not_met_even_without_growth() -> None:
    results = _results(900.0, 6.0)
    results["soak"]["requests"] = 5_000
    rss = next(g for g in evaluate_goals(results) if g["goal"].startswith("gateway RSS"))
    assert rss["met"].startswith("**not met**")
    assert "below 200k" in rss["met"]


def test_transport_goals_follow_the_matrix_and_the_micro_benchmark() -> None:
    results = _results(900.0, 6.0)
    results["matrix"]["bare_ours"][16] = _cell(700.0, 6.0)
    results["micros"] = [
        {
            "module": "bench.micro_transport",
            "result": {
                "ours_transport": {"ratio": 1.2, "cpu_ratio": 1.1},
                "ours_quiet": {"ratio": 0.75, "cpu_ratio": 0.7},
            },
        }
    ]
    goals = {g["goal"]: g for g in evaluate_goals(results)}
    at64 = goals["bare proxy on our client vs on aiohttp, req/s at 64 conns"]
    assert (at64["met"], at64["figure"][:5]) == ("**met**", "0.85\u00d7")
    assert (
        goals["bare proxy on our client vs on aiohttp, req/s at 16 conns"]["met"] == "**not met**"
    )
    micro = [g for g in goals.values() if g["goal"].startswith("micro_transport")]
    assert [g["met"] for g in micro] == ["**met**", "**not met**"]


def test_transport_goals_say_when_not_measured() -> None:
    results = _results(900.0, 6.0)
    del results["matrix"]["bare_ours"]
    results["micros"] = [{"module": "bench.micro_transport", "error": "timed out after 90 s"}]
    goals = [g for g in evaluate_goals(results) if "aiohttp, req/s" in g["goal"]]
    assert len(goals) == 4
    assert {g["met"] for g in goals} == {"n/a"}
    assert "timed out" in goals[-1]["figure"]


def test_profile_summary_groups_samples_by_innermost_stage() -> None:
    raw = (
        "main (app/cli/main.py:1);enforce_ex (casbin/core_enforcer.py:450) 30\n"
        "main (app/cli/main.py:1);request (httpx/_client.py:1);send (anyio/x.py:2) 10\n"
        "garbage line\n"
    )
    text = "\n".join(summarise(raw))
    assert "40 samples." in text
    assert "| authz (policy) | 75.0 |" in text
    assert "| downstream client | 25.0 |" in text


def test_micro_runner_returns_table_and_result() -> None:
    outcome = run_micro("tests.bench.fake_micro", timeout_s=60)
    assert outcome["result"] == {"noop_us": 0.1}
    assert "| noop | 0.1 |" in outcome["table"]


def test_micro_runner_reports_a_failure_instead_of_raising() -> None:
    outcome = run_micro("tests.bench.broken_micro", timeout_s=60)
    assert "broken on purpose" in outcome["error"]
    assert "result" not in outcome


def test_discovery_finds_only_micro_modules() -> None:
    assert all(name.startswith("bench.micro_") for name in discover())


def test_tracing_goals_compare_cpu_per_request() -> None:
    results = _results(900.0, 6.0)
    for key, cpu in (("gateway", 600.0), ("gateway_base", 580.0), ("gateway_trace", 690.0)):
        results["matrix"].setdefault(key, {c: _cell(900.0, 6.0) for c in (1, 16, 64)})
        results["matrix"][key][64]["target_cpu_us"] = cpu
    results["micros"] = [
        {
            "module": "bench.micro_tracing",
            "result": {"added_no_traceparent_us": 6.0, "added_traceparent_us": 18.0},
        }
    ]
    goals = {g["goal"]: g for g in evaluate_goals(results)}
    off = goals["tracing off vs the commit before tracing, gateway CPU per request at 64 conns"]
    assert (off["met"], off["figure"][:6]) == ("**not met**", "1.034\u00d7")
    on = goals["tracing on at ratio 1.0 vs off, gateway CPU per request at 64 conns"]
    assert on["figure"].startswith("1.150\u00d7")
    sampled = goals["tracing on at ratio 0.1 vs off, gateway CPU per request at 64 conns"]
    assert sampled["figure"] == "not measured"
    micro = goals["tracing off, added CPU a request (micro_tracing) vs gateway CPU per request"]
    assert (micro["met"], micro["figure"][:5]) == ("**met**", "1.00%")


def test_redis_deployments_table_sets_each_topology_against_one_server() -> None:
    cells = {
        "gateway_w2": {16: {"rps": 1000.0, "p99_ms": 10.0, "target_cpu_us": 900.0}},
        "gateway_w2_cluster": {16: {"rps": 800.0, "p99_ms": 14.0, "target_cpu_us": 1200.0}},
    }
    rows = [{"key": k, "label": k} for k in (*cells, "gateway_w2_sentinel")]
    table = _redis_deployments({"matrix": cells, "rows": rows})
    assert "| gateway_w2_cluster | 16 | 0.800\N{MULTIPLICATION SIGN} | 4.00 | 300 |" in table
    assert "| gateway_w2_sentinel | \N{EN DASH} | not measured |||" in table


@pytest.mark.integration
@pytest.mark.parametrize("topology", ["standalone", "cluster", "sentinel"])
def test_with_redis_points_the_command_at_a_working_deployment(topology: str) -> None:
    """The command runs with the settings of a live deployment that takes a write."""
    if missing(topology):
        pytest.skip(f"{', '.join(missing(topology))} not installed (make test installs it)")
    probe = (
        "import asyncio; from app.core.config import load_settings; "
        "from app.core.redis import create_redis\n"
        "async def main():\n"
        "    client = create_redis(load_settings().redis)\n"
        "    await client.set('bench-probe', 'ok'); print(await client.get('bench-probe'))\n"
        "    await client.aclose()\n"
        "asyncio.run(main())"
    )
    done = subprocess.run(  # fixed argv: this repository's harness and interpreter
        [
            sys.executable,
            "-m",
            "bench.with_redis",
            "--topology",
            topology,
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "b'ok'"


def test_policy_micro_reload_swaps_a_directory_the_store_accepts(tmp_path: Any) -> None:
    """bench.micro_policy reloads a generated policy directory (the store refuses one with no
    test case: the committed results once showed this micro failing on that)."""
    from bench.micro_policy import bench_reload

    reload = bench_reload(tmp_path, lines=2_000, engagements=20)
    assert set(reload) == {"idle", "off_loop", "on_loop"}
    for elapsed, worst, p99 in reload.values():
        assert elapsed > 0
        assert worst >= p99 >= 0
