"""``GET /metrics``: every family is exposed and moves when requests are sent."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from app.ops import metrics
from tests.integration.ops.conftest import FINDINGS, GatewayFactory, metric_families, metric_value

pytestmark = pytest.mark.integration

FAMILIES = {
    "gateway_http_requests",
    "gateway_http_request_duration_seconds",
    "gateway_authz_decisions",
    "gateway_signature_failures",
    "gateway_downstream_calls",
    "gateway_breaker_state",
    "gateway_policy_revision_info",
    "gateway_policy_reload_failures",
    "gateway_rate_limited",
    "gateway_redis_errors",
}
ROUTE = "/v1/engagements/{engagement_id}/findings"
# (sample name, labels) whose values the requests below must raise by exactly one.
MOVES: list[tuple[str, dict[str, str]]] = [
    ("gateway_http_requests_total", {"route": ROUTE, "method": "GET", "status": "200"}),
    ("gateway_http_requests_total", {"route": ROUTE, "method": "GET", "status": "403"}),
    ("gateway_http_requests_total", {"route": ROUTE, "method": "GET", "status": "429"}),
    ("gateway_http_requests_total", {"route": ROUTE, "method": "GET", "status": "401"}),
    ("gateway_http_requests_total", {"route": "<unmatched>", "method": "GET", "status": "404"}),
    ("gateway_authz_decisions_total", {"result": "allow", "reason": "allowed_by_rule"}),
    ("gateway_authz_decisions_total", {"result": "deny", "reason": "no_matching_allow"}),
    ("gateway_signature_failures_total", {"reason": "signature_missing"}),
    # attempt="1": a unit test run before may have made an attempt="2" series of the same pair.
    (
        "gateway_downstream_calls_total",
        {"service": "findings", "outcome": "response", "attempt": "1"},
    ),
    ("gateway_rate_limited_total", {"scope": "subject"}),
    ("gateway_policy_reload_failures_total", {}),
]


def _scrape(url: str) -> str:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_every_family_is_exposed_and_moves(
    gateway_factory: GatewayFactory, signed_client: Callable[..., httpx.Client]
) -> None:
    url = gateway_factory(ops={"rate_limit": {"subject": {"limit": 1, "window_seconds": 60}}}).url
    before = _scrape(url)
    assert not FAMILIES - metric_families(before)
    with signed_client(url, "alice") as alice, signed_client(url, "mallory") as mallory:
        assert alice.get(FINDINGS).status_code == 200
        assert alice.get(FINDINGS).status_code == 429
        assert mallory.get(FINDINGS).status_code == 403
    assert httpx.get(url + FINDINGS).status_code == 401
    assert httpx.get(url + "/no/such/route").status_code == 404
    metrics.count_reload_failure()  # wired to PolicyStore.reload by the lead
    after = _scrape(url)
    for name, labels in MOVES:
        assert metric_value(after, name, **labels) == metric_value(before, name, **labels) + 1, (
            name,
            labels,
        )
    latency = {"route": ROUTE, "method": "GET"}
    count = "gateway_http_request_duration_seconds_count"
    assert metric_value(after, count, **latency) == metric_value(before, count, **latency) + 4


def test_gauges_show_breaker_state_and_policy_revision(gateway_factory: GatewayFactory) -> None:
    url = gateway_factory().url
    metrics.set_breaker_state("findings", "open")
    text = _scrape(url)
    assert metric_value(text, "gateway_breaker_state", service="findings") == 2
    metrics.set_breaker_state("findings", "half-open")
    assert metric_value(_scrape(url), "gateway_breaker_state", service="findings") == 1
    metrics.set_policy_revision("0123456789abcdef")
    text = _scrape(url)
    assert metric_value(text, "gateway_policy_revision_info", revision="0123456789abcdef") == 1
    live = [line for line in text.splitlines() if line.startswith("gateway_policy_revision_info{")]
    assert len(live) == 1  # the previous revision's series is gone


def test_request_metrics_use_route_templates_not_raw_paths(
    gateway_factory: GatewayFactory, signed_client: Callable[..., httpx.Client]
) -> None:
    url = gateway_factory().url
    with signed_client(url, "alice") as alice:
        alice.get("/v1/engagements/acme-2026/findings/F-0001")
        alice.get("/v1/engagements/globex-cloud/findings/F-0002")
    text = _scrape(url)
    assert "acme-2026" not in text
    assert "F-0001" not in text
    template = "/v1/engagements/{engagement_id}/findings/{finding_id}"
    assert metric_value(text, "gateway_http_requests_total", route=template) >= 2
