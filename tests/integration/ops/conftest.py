"""Gateways with operations settings (Redis, rate limits) in front of a findings stub."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, make_settings

FINDINGS = "/v1/engagements/acme-2026/findings"
GatewayFactory = Callable[..., LiveServer]


@pytest.fixture
def gateway_factory(live_server: Callable[..., LiveServer], test_key_env: str) -> GatewayFactory:
    """Start gateways sharing one findings stub; keyword arguments are settings sections."""
    stub = live_server(create_stub_app("findings"))

    def start(*, loop: str = "auto", **sections: Any) -> LiveServer:
        return live_server(create_app(make_settings({"findings": stub.url}, **sections)), loop)

    return start


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds (a bound, not a claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text; 0 when the series does not exist yet."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def metric_families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}
