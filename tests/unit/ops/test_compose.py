"""docker-compose.yml describes the documented scale-out deployment."""

from __future__ import annotations

from typing import Any

import yaml

from tests.conftest import REPO


def _services() -> dict[str, Any]:
    with (REPO / "docker-compose.yml").open() as handle:
        services: dict[str, Any] = yaml.safe_load(handle)["services"]
    return services


def test_two_gateway_replicas_share_one_redis() -> None:
    services = _services()
    gateways = {name: s for name, s in services.items() if name.startswith("gateway")}
    assert len(gateways) == 2
    urls = {s["environment"]["GATEWAY_REDIS__URL"] for s in gateways.values()}
    assert urls == {"redis://redis:6379/0"}
    assert "redis" in services
    ports = [s["ports"][0] for s in gateways.values()]
    assert len(set(ports)) == 2
    for service in gateways.values():
        assert {"redis", "engagements", "findings", "reports"} <= set(service["depends_on"])
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > int(service["environment"]["GATEWAY_OPS__GRACEFUL_SHUTDOWN_SECONDS"])
