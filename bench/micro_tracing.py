"""Micro-benchmark: what tracing costs a request when it is off (issue 14).

Off, a request of the bench's route (typed GET, one downstream attempt, three log
lines) runs these tracing points: three stage spans, one client span with two
``is_recording`` checks, one ``record_decision``, ``add_trace_ids`` on each log
line, and the outbound trace context built by OpenTelemetry's propagator instead
of the gateway's former regex and formatter (``child_traceparent``, kept below
as the reference). Each is timed in thread CPU time, best of interleaved rounds;
``off_added_us`` is their sum less the former propagation. ``bench/goals.py``
divides it by the gateway row's CPU per request.

    .venv/bin/python -m bench.micro_tracing
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

import httpx

from app.core import tracing
from app.core.tracing import (
    add_trace_ids,
    client_span,
    parent_of,
    record_decision,
    stage_span,
    trace_headers,
)

ITERATIONS = 20_000
ROUNDS = 7
INBOUND = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
URL = httpx.URL("http://127.0.0.1:9102/engagements/acme-2026/findings")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def child_traceparent(incoming: str | None) -> str:
    """The gateway's propagation before issue 14 (reference only)."""
    match = _TRACEPARENT.match(incoming or "")
    random = secrets.token_hex(24)
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        trace_id, flags = match.group(1), match.group(3)
    else:
        trace_id, flags = random[16:], "01"
    return f"00-{trace_id}-{random[:16]}-{flags}"


def hooks() -> None:
    """The no-op tracing points of one request, tracing off."""
    for stage in ("authn", "rate_limit", "authz"):
        with stage_span(stage):
            pass
    record_decision(True, "allowed_by_rule", ("analyst", "*"), "rev", "acme-2026")
    with client_span("findings", "GET", URL, 1) as span:
        span.is_recording()
        span.is_recording()
    for _ in range(3):
        add_trace_ids(None, "info", {"event": "x"})


CASES: dict[str, Callable[[], object]] = {
    "tracing points of one request (off)": hooks,
    "propagation before, no traceparent in": lambda: child_traceparent(None),
    "propagation now, no traceparent in": lambda: trace_headers(parent_of(None)),
    "propagation before, traceparent in": lambda: child_traceparent(INBOUND),
    "propagation now, traceparent in": lambda: trace_headers(parent_of(INBOUND)),
    "propagation now, traceparent and tracestate in": lambda: trace_headers(
        parent_of(INBOUND, "vendor=abc")
    ),
}


def per_call_us(fn: Callable[[], object]) -> float:
    started = time.thread_time_ns()
    for _ in range(ITERATIONS):
        fn()
    return (time.thread_time_ns() - started) / ITERATIONS / 1000


def main() -> dict[str, float]:
    assert not tracing.enabled()
    best = dict.fromkeys(CASES, float("inf"))
    for _ in range(ROUNDS):  # interleaved: machine noise lands on every case alike
        for name, fn in CASES.items():
            best[name] = min(best[name], per_call_us(fn))
    names = list(CASES)
    points = best[names[0]]
    added = {
        "no_traceparent": points + best[names[2]] - best[names[1]],
        "traceparent": points + best[names[4]] - best[names[3]],
    }
    print("| case | µs a call (best of rounds, thread CPU) |")
    print("|---|---|")
    for name in names:
        print(f"| {name} | {best[name]:.2f} |")
    for case, value in added.items():
        print(f"| **added a request, tracing off ({case.replace('_', ' ')})** | {value:.2f} |")
    return {
        "hooks_us": points,
        "off_added_us": max(added.values()),
        **{f"added_{case}_us": value for case, value in added.items()},
        **{name: value for name, value in best.items()},
    }


if __name__ == "__main__":
    main()
