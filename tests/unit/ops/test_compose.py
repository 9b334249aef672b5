"""docker-compose.yml describes the documented scale-out deployment."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from app.core.config import load_settings
from app.downstream.client import load_outbound_keys
from app.workflows.saga import UNDO_ON_SHUTDOWN_SECONDS
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
        drain = int(service["environment"]["GATEWAY_OPS__GRACEFUL_SHUTDOWN_SECONDS"])
        assert grace > drain + UNDO_ON_SHUTDOWN_SECONDS


def test_stubs_require_the_signature_the_gateways_sign_with() -> None:
    services = _services()
    keys = {s["environment"]["GATEWAY_DEMO_OUTBOUND_KEY"] for n, s in services.items() if "-" in n}
    assert len(keys) == 1
    for name in ("engagements", "findings", "reports"):
        stub = services[name]
        command = stub["command"]
        assert stub["environment"]["GATEWAY_DEMO_OUTBOUND_KEY"] in keys
        assert "--require-signature" in command
        assert command[command.index("--verify-key-id") + 1] == "gateway-demo"


def test_demo_config_signs_to_every_stub_with_the_stubs_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG_FILE", str(REPO / "config/demo.yaml"))
    monkeypatch.setenv("GATEWAY_DEMO_KEY", "demo-key-not-secret-0123456789abcdef")
    monkeypatch.setenv("GATEWAY_DEMO_OUTBOUND_KEY", "demo-outbound-not-secret-0123456789abcdef")
    monkeypatch.chdir(REPO)
    settings = load_settings()
    keys = load_outbound_keys(settings.services)
    assert sorted(keys) == ["engagements", "findings", "reports"]
    assert {key.id for key in keys.values()} == {"gateway-demo"}
