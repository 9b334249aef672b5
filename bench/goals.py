"""The issue's goals, each turned into a figure from this run and a met / not met."""

from __future__ import annotations

from typing import Any

Goal = dict[str, str]


def _rps(matrix: dict[str, Any], key: str, conns: int) -> float | None:
    cells = matrix.get(key)
    return cells[conns]["rps"] if cells and conns in cells and cells[conns]["rps"] else None


def _rps_ratio(
    matrix: dict[str, Any], row: str, ref: str, conns: int, need: float, goal: str, digits: int = 2
) -> Goal:
    """``row``'s req/s over ``ref``'s at ``conns``, against ``≥ need``: every ratio goal."""
    mine, theirs = _rps(matrix, row, conns), _rps(matrix, ref, conns)
    if mine is None or theirs is None:
        return {"goal": goal, "figure": "not measured", "target": f"≥ {need}×", "met": "n/a"}
    ratio = mine / theirs
    return {
        "goal": goal,
        "figure": f"{ratio:.{digits}f}× ({mine:,.0f} vs {theirs:,.0f} req/s)",
        "target": f"≥ {need}×",
        "met": _met(ratio >= need),
    }


def _ratio_goal(matrix: dict[str, Any], base: str, label: str, need: float) -> Goal:
    goal = f"gateway req/s at 64 conns vs {label}"
    return _rps_ratio(matrix, "gateway", base, 64, need, goal, digits=3)


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _added_p99(matrix: dict[str, Any]) -> Goal:
    goal = "added p99 over bare proxy (aiohttp) at 16 conns"
    gw, bare = matrix.get("gateway"), matrix.get("bare_aiohttp")
    if not gw or not bare or 16 not in gw:
        return {"goal": goal, "figure": "not measured", "target": "≤ 2 ms", "met": "n/a"}
    added = gw[16]["p99_ms"] - bare[16]["p99_ms"]
    figure = f"{added:,.2f} ms ({gw[16]['p99_ms']:,.2f} vs {bare[16]['p99_ms']:,.2f})"
    return {"goal": goal, "figure": figure, "target": "≤ 2 ms", "met": _met(added <= 2.0)}


def _our_client(matrix: dict[str, Any], conns: int) -> Goal:
    """Issue 5: a bare pass-through on our client against one on aiohttp, same run."""
    goal = f"bare proxy on our client vs on aiohttp, req/s at {conns} conns"
    return _rps_ratio(matrix, "bare_ours", "bare_aiohttp", conns, 0.8, goal)


def _transport_micro(micros: list[dict[str, Any]]) -> list[Goal]:
    """Issue 5 again, from ``bench/micro_transport.py`` (best of interleaved rounds)."""
    found = next((m for m in micros if m.get("module") == "bench.micro_transport"), None)
    result = (found or {}).get("result") or {}
    goals = []
    for variant, label in (
        ("ours_transport", "our transport (httpx.Request -> Http1Transport)"),
        ("ours_quiet", "our DownstreamClient.call"),
    ):
        goal = f"micro_transport: pass-through on {label} vs on aiohttp, req/s"
        figures = result.get(variant)
        if not figures:
            why = (found or {}).get("error", "not measured")
            goals.append({"goal": goal, "figure": why, "target": "≥ 0.8×", "met": "n/a"})
            continue
        ratio = figures["ratio"]
        figure = f"{ratio:.2f}× (CPU ratio {figures['cpu_ratio']:.2f})"
        goals.append(
            {"goal": goal, "figure": figure, "target": "≥ 0.8×", "met": _met(ratio >= 0.8)}
        )
    return goals


def _decision_endpoint(matrix: dict[str, Any], conns: int = 64) -> Goal:
    """Issue 13: the decision endpoint (no downstream call) against the full gateway."""
    goal = f"decision endpoint req/s vs the full gateway at {conns} conns (p99 of each)"
    dec, gw = _rps(matrix, "decision", conns), _rps(matrix, "gateway", conns)
    if dec is None or gw is None:
        return {"goal": goal, "figure": "not measured", "target": "≥ 2×", "met": "n/a"}
    p99 = (matrix["decision"][conns]["p99_ms"], matrix["gateway"][conns]["p99_ms"])
    figure = (
        f"{dec / gw:.2f}× ({dec:,.0f} vs {gw:,.0f} req/s; p99 {p99[0]:,.2f} vs {p99[1]:,.2f} ms)"
    )
    return {"goal": goal, "figure": figure, "target": "≥ 2×", "met": _met(dec / gw >= 2)}


def _signature(probe: dict[str, Any]) -> Goal:
    goal = "signature verification vs one raw HMAC, 1 KB body"
    if "ratio" not in probe:
        return {
            "goal": goal,
            "figure": f"probe failed: {probe.get('error')}",
            "target": "≤ 2×",
            "met": "n/a",
        }
    figure = f"{probe['ratio']:.1f}× ({probe['verify_us']:.1f} µs vs {probe['raw_hmac_us']:.2f} µs)"
    return {"goal": goal, "figure": figure, "target": "≤ 2×", "met": _met(probe["ratio"] <= 2)}


def _decision(probe: dict[str, Any]) -> Goal:
    goal = f"decision p99 at {probe.get('lines', 100_000):,} policy lines"
    if "p99_us" not in probe:
        return {
            "goal": goal,
            "figure": f"probe failed: {probe.get('error')}",
            "target": "≤ 100 µs",
            "met": "n/a",
        }
    figure = (
        f"{probe['p99_us']:,.1f} µs (p50 {probe['p50_us']:,.1f}; {probe['decisions']} decisions)"
    )
    met = _met(probe["p99_us"] <= 100) if probe["lines"] >= 100_000 else "n/a (reduced policy)"
    return {"goal": goal, "figure": figure, "target": "≤ 100 µs", "met": met}


def _workers(results: dict[str, Any]) -> Goal:
    goal = "two workers vs one (both on Redis), req/s at 64 conns"
    one = _rps(results["matrix"], "gateway_redis", 64)
    two = _rps(results["matrix"], "gateway_w2", 64)
    if one is None or two is None:
        note = next((r["note"] for r in results["rows"] if r["key"] == "gateway_w2"), "")
        return {
            "goal": goal,
            "figure": f"skipped: {note or 'not measured'}",
            "target": "≥ 1.7×",
            "met": "n/a",
        }
    return {
        "goal": goal,
        "figure": f"{two / one:.2f}× ({two:,.0f} vs {one:,.0f} req/s)",
        "target": "≥ 1.7×",
        "met": _met(two / one >= 1.7),
    }


def _rss(soak: dict[str, Any]) -> Goal:
    goal = "gateway RSS growth after warm-up over the soak"
    if "growth" not in soak:
        return {
            "goal": goal,
            "figure": f"not measured: {soak.get('error')}",
            "target": "< 10%",
            "met": "n/a",
        }
    figure = (
        f"{soak['growth'] * 100:+.1f}% ({soak['rss_warm_mb']:.1f} → {soak['rss_end_mb']:.1f}"
        f" MB over {soak['requests']:,} requests in {soak['seconds']} s)"
    )
    enough = soak["requests"] >= 200_000
    met = _met(soak["growth"] < 0.10 and enough)
    if not enough:
        met += f" (soak below 200k requests: target {soak['target_requests']:,} or time cap)"
    return {"goal": goal, "figure": figure, "target": "< 10% over ≥ 200k requests", "met": met}


def _cpu(matrix: dict[str, Any], key: str, conns: int) -> float | None:
    cells = matrix.get(key)
    return cells[conns].get("target_cpu_us") if cells and conns in cells else None


def _tracing_micro(results: dict[str, Any], conns: int = 64) -> Goal:
    """Issue 14, isolated: the micro-benchmark's added CPU over the gateway's CPU a request."""
    goal = "tracing off, added CPU a request (micro_tracing) vs gateway CPU per request"
    found = next(
        (m for m in results.get("micros", []) if m.get("module") == "bench.micro_tracing"), None
    )
    figures = (found or {}).get("result") or {}
    cpu = _cpu(results["matrix"], "gateway", conns)
    if not figures or cpu is None:
        why = (found or {}).get("error", "not measured")
        return {"goal": goal, "figure": why, "target": "≤ 2%", "met": "n/a"}
    share = figures["added_no_traceparent_us"] / cpu
    with_parent = figures["added_traceparent_us"] / cpu
    figure = (
        f"{share:.2%} ({figures['added_no_traceparent_us']:.1f} of {cpu:,.0f} µs; "
        f"{with_parent:.2%} when a traceparent comes in)"
    )
    return {"goal": goal, "figure": figure, "target": "≤ 2%", "met": _met(share <= 0.02)}


def _tracing(matrix: dict[str, Any], conns: int = 64) -> list[Goal]:
    """Issue 14: tracing off against the commit before it; tracing on, reported."""
    off, base = _cpu(matrix, "gateway", conns), _cpu(matrix, "gateway_base", conns)
    goal = f"tracing off vs the commit before tracing, gateway CPU per request at {conns} conns"
    if off is None or base is None:
        goals = [{"goal": goal, "figure": "not measured", "target": "≤ 1.02×", "met": "n/a"}]
    else:
        figure = f"{off / base:.3f}× ({off:,.0f} vs {base:,.0f} µs)"
        goals = [
            {"goal": goal, "figure": figure, "target": "≤ 1.02×", "met": _met(off <= base * 1.02)}
        ]
    for key, ratio in (("gateway_trace", "1.0"), ("gateway_trace01", "0.1")):
        on = _cpu(matrix, key, conns)
        goal = f"tracing on at ratio {ratio} vs off, gateway CPU per request at {conns} conns"
        if on is None or off is None:
            figure = "not measured"
        else:
            figure = f"{on / off:.3f}× ({on:,.0f} vs {off:,.0f} µs)"
        goals.append({"goal": goal, "figure": figure, "target": "reported", "met": "n/a"})
    return goals


def _vs_bare(matrix: dict[str, Any], key: str, label: str, conns: int, need: float) -> Goal:
    """Issue 11: a gateway row's req/s against the bare aiohttp proxy's, same run."""
    goal = f"{label} req/s vs bare proxy (aiohttp) at {conns} conns"
    return _rps_ratio(matrix, key, "bare_aiohttp", conns, need, goal)


def _passthrough_vs_typed(matrix: dict[str, Any], conns: int) -> Goal:
    goal = f"pass-through route vs typed route, req/s at {conns} conns"
    return _rps_ratio(matrix, "gateway_passthrough", "gateway", conns, 1.0, goal)


def _p99_ratio(matrix: dict[str, Any]) -> Goal:
    goal = "gateway p99 vs bare proxy (aiohttp) p99 at 64 conns"
    gw, bare = matrix.get("gateway"), matrix.get("bare_aiohttp")
    if not gw or not bare or 64 not in gw or not bare[64]["p99_ms"]:
        return {"goal": goal, "figure": "not measured", "target": "≤ 2×", "met": "n/a"}
    ratio = gw[64]["p99_ms"] / bare[64]["p99_ms"]
    figure = f"{ratio:.2f}× ({gw[64]['p99_ms']:,.1f} vs {bare[64]['p99_ms']:,.1f} ms)"
    return {"goal": goal, "figure": figure, "target": "≤ 2×", "met": _met(ratio <= 2.0)}


def pipeline_goals(matrix: dict[str, Any]) -> list[Goal]:
    """Issue 11's targets: typed and pass-through routes against the bare proxy."""
    return [
        _vs_bare(matrix, "gateway", "gateway (typed route)", 16, 0.7),
        _vs_bare(matrix, "gateway", "gateway (typed route)", 64, 0.7),
        _vs_bare(matrix, "gateway_passthrough", "gateway (pass-through route)", 16, 0.8),
        _vs_bare(matrix, "gateway_passthrough", "gateway (pass-through route)", 64, 0.8),
        _passthrough_vs_typed(matrix, 16),
        _passthrough_vs_typed(matrix, 64),
        _p99_ratio(matrix),
    ]


def _shadow(results: dict[str, Any]) -> Goal:
    """Issue 16: deciding every request on a candidate policy too costs a bounded amount."""
    goal = "shadow policy: gateway with a candidate decided on every request vs without, 64 conns"
    matrix = results["matrix"]
    with_shadow, without = _rps(matrix, "gateway_shadow", 64), _rps(matrix, "gateway", 64)
    if with_shadow is None or without is None:
        return {"goal": goal, "figure": "not measured", "target": "≥ 0.9×", "met": "n/a"}
    cpu = matrix["gateway_shadow"][64]["target_cpu_us"] - matrix["gateway"][64]["target_cpu_us"]
    ratio = with_shadow / without
    figure = f"{ratio:.3f}× ({with_shadow:,.0f} vs {without:,.0f} req/s; {cpu:+,.0f} µs CPU/req)"
    return {"goal": goal, "figure": figure, "target": "≥ 0.9×", "met": _met(ratio >= 0.9)}


def evaluate_goals(results: dict[str, Any]) -> list[Goal]:
    matrix = results["matrix"]
    return [
        *pipeline_goals(matrix),
        _ratio_goal(matrix, "bare_aiohttp", "bare proxy (aiohttp)", 0.85),
        _ratio_goal(matrix, "naive", "naive gateway", 15),
        _ratio_goal(matrix, "nginx", "nginx", 0.5),
        _added_p99(matrix),
        *([_signature(results["signature"])] if "signature" in results else []),
        *([_decision(results["decision"])] if "decision" in results else []),
        _workers(results),
        _rss(results["soak"]),
        _our_client(matrix, 64),
        _our_client(matrix, 16),
        _decision_endpoint(matrix),
        *_transport_micro(results.get("micros", [])),
        *_tracing(matrix),
        _tracing_micro(results),
        _shadow(results),
    ]
