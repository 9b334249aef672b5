"""Metric helpers: bounded labels and the exposition text."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from app.ops import metrics
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
