"""``gateway serve`` exporting its traces over OTLP/HTTP, as a real process.

A receiver on 127.0.0.1 (``app.stubs.otlp``) decodes each
``ExportTraceServiceRequest`` with ``opentelemetry-proto``; the test finds the
whole tree under the trace id that the findings stub received in its
``traceparent``. With the collector down, requests are answered as before and
the lost spans are counted in ``/metrics``, with one log line at most.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.stubs.otlp import OtlpReceiver, ReceivedSpan
from app.stubs.server import create_stub_app
from tests.conftest import POLICY_DIR, REPO, TEST_KEY_ENV, TEST_SECRET, LiveServer, free_port
from tests.conftest import signer as signed_as
from tests.integration.ops.conftest import FINDINGS, metric_value, wait_until
from tests.span_tree import Node, render
from tests.span_tree import roots as tree_roots

pytestmark = pytest.mark.integration

DROPPED = "gateway_trace_spans_dropped_total"


class TracedGateway:
    """``gateway serve`` with tracing on, its log in a file."""

    def __init__(self, tmp_path: Path, findings: str, tracing: dict[str, Any]) -> None:
        self.port = free_port()
        config = tmp_path / "gateway.json"
        config.write_text(
            json.dumps(
                {
                    "signing": {"keys": [{"id": "test-2026", "secret_env": TEST_KEY_ENV}]},
                    "policy": {"dir": str(POLICY_DIR)},
                    "services": {"findings": {"url": findings}},
                    "log": {"format": "json"},
                    "tracing": {"enabled": True, "schedule_delay_seconds": 0.1, **tracing},
                }
            )
        )
        self.log_path = tmp_path / "gateway.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
        env[TEST_KEY_ENV] = TEST_SECRET.decode()
        env.pop("REDIS_URL", None)
        argv = ["serve", "--port", str(self.port), "--config", str(config)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", *argv],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=90)  # start-up on a busy shared machine

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for text in self.log_path.read_text().splitlines():
            if text.startswith("{"):
                lines.append(json.loads(text))
        return lines

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture
def findings_stub(live_server: Callable[[FastAPI], LiveServer]) -> LiveServer:
    return live_server(create_stub_app("findings"))


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver().start()
    yield running
    running.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[..., TracedGateway]]:
    started: list[TracedGateway] = []

    def start(findings: str, **tracing: Any) -> TracedGateway:
        started.append(TracedGateway(tmp_path, findings, tracing))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


def nodes_of(spans: list[ReceivedSpan]) -> list[Node]:
    return [
        Node(
            trace_id=int(s.trace_id, 16),
            span_id=int(s.span_id, 16),
            parent_id=int(s.parent_span_id, 16) if s.parent_span_id else None,
            name=s.name,
            start=s.start_ns,
            end=s.end_ns,
            kind=s.kind,
            attributes=s.attributes,
        )
        for s in spans
    ]


def test_the_whole_tree_arrives_under_the_trace_id_the_service_saw(
    findings_stub: LiveServer,
    receiver: OtlpReceiver,
    gateways: Callable[..., TracedGateway],
) -> None:
    gateway = gateways(findings_stub.url, endpoint=receiver.endpoint)
    with httpx.Client(base_url=gateway.url, auth=signed_as("alice"), timeout=10) as client:
        assert client.get(FINDINGS).status_code == 200
    seen = [s for s in httpx.get(findings_stub.url + "/_seen").json() if "findings" in s["path"]]
    _, trace_id, parent_span, _ = seen[-1]["headers"]["traceparent"].split("-")
    server_name = "GET /v1/engagements/{engagement_id}/findings"
    wait_until(lambda: any(s.name == server_name for s in receiver.trace(trace_id)), timeout=20)
    nodes = nodes_of(receiver.trace(trace_id))
    (root,) = tree_roots(nodes)
    assert root.parent_id is None, "no traceparent came in: the gateway started the trace"
    stages = ["  authn", "  rate_limit", "  authz"]
    assert render(nodes, root) == [server_name, *stages, "  GET findings"]
    (authz,) = [n for n in nodes if n.name == "authz"]
    assert authz.attributes["gateway.decision.result"] == "allow"
    assert authz.attributes["gateway.decision.reason"] == "allowed_by_rule"
    assert authz.attributes["gateway.policy.revision"]
    (call,) = [n for n in nodes if n.name == "GET findings"]
    assert f"{call.span_id:016x}" == parent_span, "the service's parent is the attempt span"
    assert {s.service for s in receiver.trace(trace_id)} == {"authz-gateway"}
    lines = [line for line in gateway.log_lines() if line.get("trace_id") == trace_id]
    assert {"request_completed", "decision"} <= {x["event"] for x in lines}
    (decision,) = [x for x in lines if x["event"] == "decision"]
    assert decision["span_id"] == f"{authz.span_id:016x}", "logged inside the authz span"
    assert gateway.stop() == -signal.SIGTERM  # a clean shutdown re-raises the signal


def test_a_collector_that_is_down_changes_no_answer(
    findings_stub: LiveServer, gateways: Callable[..., TracedGateway]
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    gateway = gateways(
        findings_stub.url, endpoint=nobody, max_queue_size=8, export_timeout_seconds=1
    )
    with httpx.Client(base_url=gateway.url, auth=signed_as("alice"), timeout=10) as client:
        statuses = [client.get(FINDINGS).status_code for _ in range(40)]
    assert statuses == [200] * 40

    def metrics() -> str:
        return httpx.get(gateway.url + "/metrics", timeout=5).text

    def lost() -> float:
        text = metrics()
        return metric_value(text, DROPPED, reason="export_failed") + metric_value(
            text, DROPPED, reason="queue_full"
        )

    wait_until(lambda: lost() > 0, timeout=20)
    assert metric_value(metrics(), DROPPED, reason="queue_full") > 0, "the queue stays bounded"
    reports = [line for line in gateway.log_lines() if line["event"] == "trace_spans_dropped"]
    assert len(reports) <= 1, "one line a minute at most"
    noise = [line for line in gateway.log_lines() if "opentelemetry" in str(line.get("logger"))]
    assert noise == []
    assert gateway.stop() == -signal.SIGTERM  # a clean shutdown re-raises the signal
