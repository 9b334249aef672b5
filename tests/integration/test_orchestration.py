"""Resilient orchestration over loopback: retries, breakers, timeouts, propagation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from tests.conftest import LiveServer, signer
from tests.integration.orchestration_stack import StackBuilder, outbound_key_id
from tests.integration.test_gateway_e2e import assert_problem

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"


def client(base_url: str, subject: str = "alice") -> httpx.Client:
    return httpx.Client(base_url=base_url, auth=signer(subject), timeout=15)


def test_transient_failures_are_retried_to_success(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.faults("findings", fail_next=2, fail_status=503)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert response.status_code == 200
    assert stack.requests_seen("findings") == 3


def test_retry_after_is_honoured_and_bounded(
    make_stack: StackBuilder, captured_logs: list[dict[str, Any]]
) -> None:
    stack = make_stack()
    stack.faults("findings", fail_next=1, fail_status=503, retry_after=1)
    with client(stack.url) as gateway:
        assert gateway.get(FINDINGS).status_code == 200
    retries = [line for line in captured_logs if line["event"] == "downstream_retry"]
    assert len(retries) == 1
    assert retries[0]["delay_s"] >= 1.0


def test_retry_after_beyond_the_cap_is_not_waited_for(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.faults("findings", fail_next=1, fail_status=503, retry_after=600)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert_problem(response, 502, "bad_gateway")
    assert stack.requests_seen("findings") == 1


def test_post_without_idempotency_key_is_not_retried(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.faults("findings", fail_next=1, fail_status=503)
    with client(stack.url) as gateway:
        response = gateway.post(FINDINGS, json={"title": "Open redirect", "severity": "low"})
    body = assert_problem(response, 502, "bad_gateway")
    assert body["service"] == "findings"
    assert stack.requests_seen("findings") == 1


def test_downstream_5xx_body_never_leaks(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.faults("findings", error_rate=1.0, error_status=500)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert_problem(response, 502, "bad_gateway")
    assert "stack trace" not in response.text
    assert "injected" not in response.text


def test_breaker_opens_fails_fast_then_recovers_through_half_open(
    make_stack: StackBuilder, captured_logs: list[dict[str, Any]]
) -> None:
    stack = make_stack(service={"breaker": {"fail_max": 3, "reset_timeout_seconds": 2}})
    opened_before = opened_count("findings")
    stack.faults("findings", error_rate=1.0, error_status=500)  # 500: not retried
    with client(stack.url) as gateway:
        for _ in range(3):
            assert gateway.get(FINDINGS).status_code == 502
        calls_when_opened = stack.requests_seen("findings")
        rejected = [gateway.get(FINDINGS) for _ in range(3)]
        assert stack.requests_seen("findings") == calls_when_opened == 3
        for response in rejected:
            body = assert_problem(response, 503, "circuit_open")
            assert body["service"] == "findings"
            assert int(response.headers["retry-after"]) >= 1
        stack.faults("findings")
        time.sleep(2.1)  # let the reset timeout pass so the breaker admits a trial call
        assert gateway.get(FINDINGS).status_code == 200
    transitions = [
        (line["from_state"], line["to_state"])
        for line in captured_logs
        if line["event"] == "breaker_transition" and line["service"] == "findings"
    ]
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert opened_count("findings") == opened_before + 1
    assert REGISTRY.get_sample_value("gateway_breaker_state", {"service": "findings"}) == 0


def test_fail_max_counts_requests_not_attempts(make_stack: StackBuilder) -> None:
    """Three attempts a request, fail_max 2: the third request, not the second, fails fast."""
    stack = make_stack(service={"breaker": {"fail_max": 2}, "retry": {"attempts": 3}})
    stack.faults("findings", error_rate=1.0, error_status=503)  # 503: retried
    with client(stack.url) as gateway:
        statuses = []
        for _ in range(3):
            statuses.append(gateway.get(FINDINGS).status_code)
            statuses.append(stack.requests_seen("findings"))
    assert statuses == [502, 3, 502, 6, 503, 6]


def opened_count(service: str) -> float:
    labels = {"service": service, "to": "open"}
    return REGISTRY.get_sample_value("gateway_breaker_transitions_total", labels) or 0.0


def test_admin_breakers_shows_states_to_admins_only(make_stack: StackBuilder) -> None:
    stack = make_stack(service={"breaker": {"fail_max": 1}})
    stack.faults("findings", error_rate=1.0, error_status=500)
    with client(stack.url) as gateway:
        gateway.get(FINDINGS)
    with client(stack.url, "sam") as admin:
        body = admin.get("/admin/breakers").json()
    states = {b["service"]: b for b in body["breakers"]}
    assert states["findings"]["state"] == "open"
    assert states["findings"]["retry_after_seconds"] >= 1
    assert states["reports"]["state"] == "closed"
    with client(stack.url, "alice") as analyst:
        assert_problem(analyst.get("/admin/breakers"), 403, "forbidden")
    ready = httpx.get(stack.url + "/readyz").json()
    assert {"name": "breaker:findings", "ok": True, "detail": "open"} in ready["checks"]


def test_slow_service_maps_to_504(make_stack: StackBuilder) -> None:
    stack = make_stack(service={"read_timeout": 0.2, "retry": {"attempts": 2}})
    stack.faults("findings", latency_ms=1500)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    body = assert_problem(response, 504, "gateway_timeout")
    assert body["service"] == "findings"
    assert stack.requests_seen("findings") == 2, "a read timeout before any byte is retried"


# One attempt of 0.5 + 3 s fits the 3.5 s deadline; the stub's Retry-After (1 s) sets the
# retry's start (about 2.5 s in), its 1.5 s latency would end it past the deadline.
DEADLINE_STACK: dict[str, Any] = {
    "service": {"connect_timeout": 0.5, "read_timeout": 3},
    "orchestration": {"downstream_deadline_seconds": 3.5},
}


def test_a_retry_the_deadline_passes_is_cut_with_a_504(make_stack: StackBuilder) -> None:
    """Without the request's deadline the retry answered 200 about 4 s in: one call may
    hold its caller retry.deadline_seconds plus a whole attempt."""
    stack = make_stack(**DEADLINE_STACK)
    stack.faults("findings", latency_ms=1500, fail_next=1, fail_status=503, retry_after=1)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    body = assert_problem(response, 504, "gateway_timeout")
    assert body["service"] == "findings"
    assert "deadline" in str(body["detail"])
    assert stack.requests_seen("findings") == 2, "the retry started inside the deadline"


def test_retries_of_an_idempotent_call_still_succeed_inside_the_deadline(
    make_stack: StackBuilder,
) -> None:
    stack = make_stack(**DEADLINE_STACK)
    stack.faults("findings", fail_next=2, fail_status=503)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert response.status_code == 200
    assert stack.requests_seen("findings") == 3


def test_hung_service_maps_to_504(make_stack: StackBuilder) -> None:
    stack = make_stack(service={"read_timeout": 0.2, "retry": {"attempts": 1}})
    stack.faults("findings", hang=True, hang_max_seconds=5)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    stack.faults("findings")  # release the hanging request
    assert_problem(response, 504, "gateway_timeout")


def test_dropped_connection_maps_to_502(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.faults("findings", reset=True)
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert_problem(response, 502, "bad_gateway")


def test_unreachable_service_maps_to_502_after_retries(make_stack: StackBuilder) -> None:
    stack = make_stack()
    stack.stubs["findings"].stop()
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert_problem(response, 502, "bad_gateway")


def test_corr_id_traceparent_and_signed_identity_reach_the_service(
    make_stack: StackBuilder,
) -> None:
    stack = make_stack()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace_id}-00f067aa0ba902b7-01"
    headers = {"x-request-id": "corr-propagation-0001", "traceparent": incoming}
    with client(stack.url, "alice") as gateway:
        assert gateway.get(FINDINGS, headers=headers).status_code == 200
    seen = [s for s in stack.seen("findings") if s["path"].endswith("/findings")][-1]
    assert seen["headers"]["x-request-id"] == "corr-propagation-0001"
    version, seen_trace, span, flags = seen["headers"]["traceparent"].split("-")
    assert (version, seen_trace, flags) == ("00", trace_id, "01")
    assert span != "00f067aa0ba902b7", "the gateway is a new parent span"
    assert seen["signature"] == "valid"
    assert seen["subject"] == "alice"
    assert seen["key_id"] == outbound_key_id("findings")
    assert seen["headers"]["x-gateway-engagement"] == "acme-2026"
    assert seen["headers"]["signature-input"].startswith("gateway=")


def test_a_trace_is_started_when_none_came_in(make_stack: StackBuilder) -> None:
    stack = make_stack()
    with client(stack.url) as gateway:
        gateway.get(FINDINGS)
    seen = [s for s in stack.seen("findings") if s["path"].endswith("/findings")][-1]
    assert len(seen["headers"]["traceparent"].split("-")[1]) == 32


def test_a_service_with_a_different_key_rejects_the_gateway(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = StackBuilder(live_server, monkeypatch)  # stubs trust OUTBOUND_SECRET
    monkeypatch.setenv("GATEWAY_TEST_OUTBOUND_KEY", "another-secret-entirely-0123456789abcdef")
    stack = builder()
    with client(stack.url) as gateway:
        response = gateway.get(FINDINGS)
    assert_problem(response, 502, "bad_gateway")  # the service's 401: our request was wrong
    assert stack.seen("findings")[-1]["signature"] == "signature_invalid"
