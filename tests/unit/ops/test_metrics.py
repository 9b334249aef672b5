"""Metric helpers: bounded labels and the exposition text."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.routing import Route

from app.api.pipeline import REPLAY_CHECK_UNAVAILABLE
from app.authn.verifier import Reason
from app.ops import metrics
from app.ops.processes import MULTIPROC_ENV
from tests.conftest import TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET
from tests.integration.ops.conftest import metric_value

OTHER = {"route": "/healthz", "method": "OTHER", "status": "405"}


def test_route_label_is_the_template_or_unmatched() -> None:
    route = Route("/v1/engagements/{engagement_id}/findings", endpoint=lambda: None)
    assert metrics.route_label({"type": "http", "route": route}) == route.path
    assert metrics.route_label({"type": "http"}) == metrics.UNMATCHED_ROUTE


def test_unknown_methods_share_one_label() -> None:
    before = metric_value(metrics.render().decode(), "gateway_http_requests_total", **OTHER)
    metrics.observe_request("/healthz", "BREW", 405, 0.001)
    metrics.observe_request("/healthz", "PROPFIND", 405, 0.001)
    after = metric_value(metrics.render().decode(), "gateway_http_requests_total", **OTHER)
    assert after == before + 2
    assert "BREW" not in metrics.render().decode()


def test_breaker_state_rejects_unknown_states() -> None:
    with pytest.raises(KeyError):
        metrics.set_breaker_state("findings", "melted")


def test_downstream_attempts_are_labelled() -> None:
    text = metrics.render().decode()
    labels = {"service": "reports", "outcome": "timeout", "attempt": "2"}
    before = metric_value(text, "gateway_downstream_calls_total", **labels)
    metrics.observe_downstream("reports", "timeout", 2)
    after = metric_value(metrics.render().decode(), "gateway_downstream_calls_total", **labels)
    assert after == before + 1


_WORKER = """
import os, sys
from prometheus_client import Counter, Gauge
Gauge("t_breaker_state", "x", ["service"], multiprocess_mode="livemax").labels("findings").set(2)
Counter("t_requests", "x").inc()
print("ready", flush=True)
sys.stdin.read()  # until the test closes it or kills this worker
os._exit(0)  # no clean exit: mark_worker_exited never runs
"""


def test_a_worker_killed_without_its_clean_exit_leaves_no_live_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multiprocess mode: a SIGKILLed worker's breaker gauge left the alert on for good."""
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    command = [sys.executable, "-c", _WORKER]
    with subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == b"ready\n"
            monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
            live = metrics.render().decode()
            assert metric_value(live, "t_breaker_state", service="findings") == 2.0
        finally:
            worker.kill()
            worker.wait(timeout=10)
    after = metrics.render().decode()
    assert "t_breaker_state{" not in after  # the dead worker's gauge is gone
    assert metric_value(after, "t_requests_total") == 1.0  # its counts stay counted
    assert not list(tmp_path.glob(f"gauge_live*_{worker.pid}.db"))


_SERIES = """
import sys
from app.main import create_app
from app.ops.metrics import render
from tests.conftest import make_settings
settings = make_settings(
    redis={"url": "redis://127.0.0.1:9"},  # never reached: create_app does not connect
    ops={"rate_limit": {"subject": {"limit": 5}}},
    tracing={"enabled": sys.argv[1] == "traced"},
)
create_app(settings)
print(render().decode())
"""


@pytest.mark.parametrize("tracing", ["traced", "untraced"])
def test_error_series_exist_at_zero_before_their_first_event(tracing: str) -> None:
    """ops32: a labelled counter had no series until its first increment, so
    ``increase(gateway_redis_errors_total[5m]) > 0`` never saw a component's first
    error, nor an alert on ``reason="replayed"`` the first replay (born at 1). A fresh
    process has each series an alert watches at 0: only those it can count (no
    engagement limit is configured here)."""
    env = {**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()}
    env.pop(MULTIPROC_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", _SERIES, tracing],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    text = done.stdout
    for component in metrics.REDIS_COMPONENTS:
        assert f'gateway_redis_errors_total{{component="{component}"}} 0.0' in text
    assert 'gateway_rate_limited_total{scope="subject"} 0.0' in text
    for reason in (*Reason, REPLAY_CHECK_UNAVAILABLE):  # a first replay is an attack's
        assert f'gateway_signature_failures_total{{reason="{reason}"}} 0.0' in text
    assert 'scope="engagement"' not in text
    # Each configured key: a signer's first signature from the future is seen too.
    assert f'gateway_signatures_dated_ahead_total{{key_id="{TEST_KEY_ID}"}} 0.0' in text
    dropped = 'gateway_trace_spans_dropped_total{reason="queue_full"} 0.0'
    assert (dropped in text) == (tracing == "traced")


def test_every_component_that_counts_redis_errors_is_started() -> None:
    """A component added later with ``count_redis_error("x")`` must join the list."""
    app_dir = Path(metrics.__file__).resolve().parents[1]
    named = {
        match
        for path in app_dir.rglob("*.py")
        for match in re.findall(r'count_redis_error\("([a-z_]+)"\)', path.read_text())
    }
    assert named == set(metrics.REDIS_COMPONENTS)
