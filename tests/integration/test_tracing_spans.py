"""Span trees of real requests through a real gateway, recorded by an in-memory exporter.

One tree per case the issue names: a typed route, a retried call, an open
breaker, the close saga with a compensation, a degraded overview. The gateway
runs under uvicorn on 127.0.0.1 in front of three stub services that verify its
outbound signature; the spans go through the same batch processor as in
production, with the OTLP exporter swapped for an in-memory one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.ops.tracing import TracingRuntime
from tests.conftest import signer
from tests.integration.orchestration_stack import OrchestrationStack, StackBuilder
from tests.span_tree import Node, find, from_sdk, render

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
OVERVIEW = "/v1/engagements/acme-2026/overview"
CLOSE = "/v1/engagements/acme-2026/close"
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
STAGES = ("  authn", "  rate_limit", "  authz")
TRACING = {"enabled": True, "sample_ratio": 1.0, "schedule_delay_seconds": 0.05}


@dataclass
class Traced:
    stack: OrchestrationStack
    exporter: InMemorySpanExporter

    @property
    def runtime(self) -> TracingRuntime:
        app = self.stack.gateway.server.config.app
        assert isinstance(app, FastAPI)
        runtime: TracingRuntime = app.state.tracing
        return runtime

    def request(
        self, method: str, path: str, subject: str = "bob", **kwargs: Any
    ) -> httpx.Response:
        with httpx.Client(base_url=self.stack.url, auth=signer(subject), timeout=15) as client:
            return client.request(method, path, **kwargs)

    def trace(self, response: httpx.Response) -> tuple[list[Node], Node]:
        """Every span of the request's trace, and its server span (waits for it to end)."""
        corr_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while True:
            self.runtime.force_flush()
            nodes = from_sdk(self.exporter.get_finished_spans())
            server = [n for n in nodes if n.attributes.get("gateway.corr_id") == corr_id]
            if server or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert server, f"no server span for {corr_id}"
        return [n for n in nodes if n.trace_id == server[0].trace_id], server[0]


TracedStack = Callable[..., Traced]


@pytest.fixture
def traced(make_stack: StackBuilder) -> TracedStack:
    """Stacks whose gateway records every span in memory."""

    def build(**overrides: Any) -> Traced:
        exporter = InMemorySpanExporter()
        stack = make_stack(span_exporter=exporter, tracing=TRACING, **overrides)
        return Traced(stack, exporter)

    return build


def test_a_typed_route_is_one_server_span_over_its_downstream_call(traced: TracedStack) -> None:
    run = traced()
    parent = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"
    response = run.request("GET", FINDINGS, "alice", headers={"traceparent": parent})
    assert response.status_code == 200
    nodes, server = run.trace(response)
    assert render(nodes, server) == [
        "GET /v1/engagements/{engagement_id}/findings",
        *STAGES,
        "  GET findings",
    ]
    assert f"{server.trace_id:032x}" == PARENT_TRACE
    assert server.parent_id == 0x00F067AA0BA902B7
    assert server.kind == "SERVER"
    assert server.attributes["http.route"] == "/v1/engagements/{engagement_id}/findings"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == FINDINGS
    (authz,) = find(nodes, "authz")
    assert authz.attributes["gateway.decision.result"] == "allow"
    assert authz.attributes["gateway.decision.reason"] == "allowed_by_rule"
    assert "findings" in str(authz.attributes["gateway.decision.matched_rule"])
    assert len(str(authz.attributes["gateway.policy.revision"])) >= 8
    assert authz.attributes["gateway.engagement"] == "acme-2026"
    (call,) = find(nodes, "GET findings")
    assert call.kind == "CLIENT"
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["peer.service"] == "findings"
    assert str(call.attributes["url.full"]).endswith("/engagements/acme-2026/findings")
    seen = [s for s in run.stack.seen("findings") if s["path"].endswith("/findings")][-1]
    assert seen["headers"]["traceparent"] == f"00-{PARENT_TRACE}-{call.span_id:016x}-01"
    secrets = ("signature", "x-auth-subject", "alice", "authorization")
    for node in nodes:
        text = repr(node.attributes).lower()
        assert not any(word in text for word in secrets), node


def test_refusals_are_recorded_on_their_stage(traced: TracedStack) -> None:
    run = traced()
    denied = run.request("GET", FINDINGS, "mallory")
    assert denied.status_code == 403
    nodes, server = run.trace(denied)
    assert render(nodes, server) == ["GET /v1/engagements/{engagement_id}/findings", *STAGES]
    (authz,) = find(nodes, "authz")
    assert authz.attributes["gateway.decision.result"] == "deny"
    assert authz.attributes["error.type"] == "forbidden"
    assert server.attributes["http.response.status_code"] == 403
    with httpx.Client(base_url=run.stack.url, timeout=15) as unsigned:
        refused = unsigned.get(FINDINGS)
    assert refused.status_code == 401
    nodes, server = run.trace(refused)
    assert render(nodes, server) == ["GET /v1/engagements/{engagement_id}/findings", "  authn"]
    (authn,) = find(nodes, "authn")
    assert authn.attributes["gateway.decision.result"] == "deny"
    assert authn.attributes["gateway.decision.reason"] == "signature_missing"


def test_a_retried_call_is_one_client_span_per_attempt(traced: TracedStack) -> None:
    run = traced()
    run.stack.faults("findings", fail_next=2, fail_status=503)
    response = run.request("GET", FINDINGS, "alice")
    assert response.status_code == 200
    nodes, server = run.trace(response)
    assert render(nodes, server) == [
        "GET /v1/engagements/{engagement_id}/findings",
        *STAGES,
        "  GET findings",
        "  GET findings",
        "  GET findings",
    ]
    attempts = sorted(find(nodes, "GET findings"), key=lambda n: n.start)
    assert [a.attributes.get("http.response.status_code") for a in attempts] == [503, 503, 200]
    assert [a.attributes.get("error.type") for a in attempts] == ["bad_gateway"] * 2 + [None]
    assert [a.attributes.get("http.request.resend_count") for a in attempts] == [None, 1, 2]
    assert attempts[0].end <= attempts[1].start, "retries are sequential, backoff between"


def test_an_open_breaker_fails_the_attempt_without_a_call(traced: TracedStack) -> None:
    run = traced(service={"breaker": {"fail_max": 1}, "retry": {"attempts": 1}})
    run.stack.faults("findings", error_rate=1.0, error_status=500)
    assert run.request("GET", FINDINGS, "alice").status_code == 502
    calls_before = run.stack.requests_seen("findings")
    response = run.request("GET", FINDINGS, "alice")
    assert response.status_code == 503
    assert run.stack.requests_seen("findings") == calls_before, "the breaker sent nothing"
    nodes, server = run.trace(response)
    assert render(nodes, server) == [
        "GET /v1/engagements/{engagement_id}/findings",
        *STAGES,
        "  GET findings",
    ]
    (attempt,) = find(nodes, "GET findings")
    assert attempt.attributes["error.type"] == "circuit_open"
    assert attempt.attributes["gateway.breaker.state"] == "open"
    assert "http.response.status_code" not in attempt.attributes
    assert server.attributes["http.response.status_code"] == 503


def test_the_close_saga_with_a_compensation(traced: TracedStack) -> None:
    run = traced(service={"retry": {"attempts": 1}})
    run.stack.faults(
        "engagements", error_rate=1.0, error_status=500, path_prefix="/engagements/acme-2026/close"
    )
    response = run.request(
        "POST", CLOSE, json={"reason": "Retest done."}, headers={"idempotency-key": "trace-0001"}
    )
    assert response.status_code == 502
    nodes, server = run.trace(response)
    assert render(nodes, server) == [
        "POST /v1/engagements/{engagement_id}/close",
        *STAGES,
        "  GET engagements",
        "  saga close_engagement",
        "    step freeze_findings",
        "      POST findings",
        "    step render_report",
        "      POST reports",
        "    step close",
        "      POST engagements",
        "    compensate close",  # a 5xx may have followed the close: reopened too
        "      POST engagements",
        "    compensate render_report",
        "      DELETE reports",
        "    compensate freeze_findings",
        "      GET engagements",  # not closed by another close meanwhile: unfreeze
        "      POST findings",
    ]
    (failed,) = find(nodes, "step close")
    assert failed.attributes["error.type"] == "bad_gateway"
    assert failed.attributes["peer.service"] == "engagements"
    for name in ("compensate close", "compensate render_report", "compensate freeze_findings"):
        (undo,) = find(nodes, name)
        assert "error.type" not in undo.attributes
    (saga,) = find(nodes, "saga close_engagement")
    assert saga.attributes["error.type"] == "bad_gateway"
    # The request's own span names the problem's code too (it named the status, "502").
    assert server.attributes["error.type"] == "bad_gateway"


def test_a_degraded_overview_marks_the_failed_branch(traced: TracedStack) -> None:
    run = traced(service={"retry": {"attempts": 1}})
    run.stack.stubs["reports"].stop()
    response = run.request("GET", OVERVIEW)
    assert response.status_code == 200
    assert response.json()["degraded"] == [{"service": "reports", "reason": "bad_gateway"}]
    nodes, server = run.trace(response)
    assert render(nodes, server) == [
        "GET /v1/engagements/{engagement_id}/overview",
        *STAGES,
        "  fanout overview",
        "    branch engagements",
        "      GET engagements",
        "    branch findings",
        "      GET findings",
        "    branch reports",
        "      GET reports",
    ]
    (fanout,) = find(nodes, "fanout overview")
    assert fanout.attributes["gateway.degraded"] == ("reports",)
    (reports,) = find(nodes, "branch reports")
    assert reports.attributes["error.type"] == "bad_gateway"
    (findings,) = find(nodes, "branch findings")
    assert "error.type" not in findings.attributes


OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TWO_PARENTS = [
    ("traceparent", f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"),
    ("traceparent", f"00-{OTHER_TRACE}-b7ad6b7169203331-01"),
    ("tracestate", "vendor=kept-only-with-one-parent"),
]


def _seen_findings(stack: OrchestrationStack) -> dict[str, str]:
    seen = [s for s in stack.seen("findings") if s["path"].endswith("/findings")][-1]
    headers: dict[str, str] = seen["headers"]
    return headers


def test_several_traceparent_fields_start_one_new_trace_span_and_service_alike(
    traced: TracedStack,
) -> None:
    """W3C Trace Context: several traceparent fields are an invalid one, so a new trace
    starts (its tracestate dropped). The server span took the last field while the
    downstream context read the fields joined; both now follow the one rule."""
    run = traced()
    response = run.request("GET", FINDINGS, "alice", headers=TWO_PARENTS)
    assert response.status_code == 200
    nodes, server = run.trace(response)
    assert server.parent_id is None
    assert f"{server.trace_id:032x}" not in (PARENT_TRACE, OTHER_TRACE)
    (call,) = find(nodes, "GET findings")
    sent = _seen_findings(run.stack)
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{server.trace_id:032x}",
        f"{call.span_id:016x}",
    )
    assert int(flags, 16) & 1, "sampled, as the new root (the SDK may add its random flag)"
    assert "tracestate" not in sent


def test_several_tracestate_fields_are_one_list(traced: TracedStack) -> None:
    """W3C Trace Context: tracestate fields combine; the server span kept only the last."""
    run = traced()
    headers = [
        ("traceparent", f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"),
        ("tracestate", "a=1"),
        ("tracestate", "b=2"),
    ]
    response = run.request("GET", FINDINGS, "alice", headers=headers)
    assert response.status_code == 200
    _, server = run.trace(response)
    assert f"{server.trace_id:032x}" == PARENT_TRACE
    assert _seen_findings(run.stack)["tracestate"] == "a=1,b=2"


def test_with_tracing_off_several_traceparent_fields_start_a_new_trace_too(
    make_stack: StackBuilder,
) -> None:
    stack = make_stack()
    with httpx.Client(base_url=stack.url, auth=signer("alice"), timeout=15) as client:
        one = client.get(FINDINGS, headers=TWO_PARENTS[:1])
        assert one.status_code == 200
        assert _seen_findings(stack)["traceparent"].startswith(f"00-{PARENT_TRACE}-")
        two = client.get(FINDINGS, headers=TWO_PARENTS)
        assert two.status_code == 200
    sent = _seen_findings(stack)
    assert sent["traceparent"].split("-")[1] not in (PARENT_TRACE, OTHER_TRACE)
    assert "tracestate" not in sent
