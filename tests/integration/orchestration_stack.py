"""A gateway in front of three stub services that verify its outbound signature.

Documented test key for the gateway's outbound signatures (never used outside
the tests): ``OUTBOUND_SECRET`` under key ids ``gateway-<service>``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter

from app.authn.keys import KeyRing, SigningKey
from app.core.config import Settings
from app.main import create_app
from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import POLICY_DIR, TEST_KEY_ENV, TEST_KEY_ID, LiveServer

OUTBOUND_SECRET = b"gateway-outbound-test-secret-0123456789abcdef"
OUTBOUND_KEY_ENV = "GATEWAY_TEST_OUTBOUND_KEY"
FAST_RETRY = {
    "attempts": 3,
    "backoff_initial_seconds": 0.01,
    "backoff_max_seconds": 0.05,
    "deadline_seconds": 5,
}


def outbound_key_id(service: str) -> str:
    return f"gateway-{service}"


@dataclass
class OrchestrationStack:
    gateway: LiveServer
    stubs: dict[str, LiveServer]

    @property
    def url(self) -> str:
        return self.gateway.url

    def stub(self, name: str) -> FastAPI:
        app = self.stubs[name].server.config.app
        assert isinstance(app, FastAPI)
        return app

    def faults(self, name: str, **config: Any) -> None:
        """Set a stub's faults through its real control endpoint."""
        response = httpx.post(f"{self.stubs[name].url}/_faults", json=config, timeout=5)
        assert response.status_code == 200, response.text

    def requests_seen(self, name: str) -> int:
        stats = httpx.get(f"{self.stubs[name].url}/_stats", timeout=5).json()
        return int(stats["requests"])

    def seen(self, name: str) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.stubs[name].url}/_seen", timeout=5).json())


def stack_settings(
    stubs: dict[str, LiveServer], service: dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    services = {
        name: {
            "url": server.url,
            "signing_key": {"id": outbound_key_id(name), "secret_env": OUTBOUND_KEY_ENV},
            "retry": FAST_RETRY,
            **(service or {}),
        }
        for name, server in stubs.items()
    }
    values: dict[str, Any] = {
        "signing": {"keys": [{"id": TEST_KEY_ID, "secret_env": TEST_KEY_ENV}]},
        "policy": {"dir": str(POLICY_DIR)},
        "services": services,
    }
    values.update(overrides)
    return Settings(**values)


class StackBuilder:
    """Builds stacks with per-service settings (``service=``) and Settings overrides."""

    def __init__(
        self, live_server: Callable[[FastAPI], LiveServer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(OUTBOUND_KEY_ENV, OUTBOUND_SECRET.decode())
        self._live_server = live_server

    def __call__(
        self,
        service: dict[str, Any] | None = None,
        span_exporter: SpanExporter | None = None,
        **overrides: Any,
    ) -> OrchestrationStack:
        ring = {
            name: KeyRing([SigningKey(outbound_key_id(name), OUTBOUND_SECRET)])
            for name in STUB_NAMES
        }
        stubs = {
            name: self._live_server(
                create_stub_app(name, keyring=ring[name], require_signature=True)
            )
            for name in STUB_NAMES
        }
        settings = stack_settings(stubs, service, **overrides)
        gateway = self._live_server(create_app(settings, span_exporter=span_exporter))
        return OrchestrationStack(gateway=gateway, stubs=stubs)

    def another_gateway(self, stack: OrchestrationStack, **overrides: Any) -> LiveServer:
        """One more gateway in front of the same stubs; it shares state only through Redis."""
        return self._live_server(create_app(stack_settings(stack.stubs, None, **overrides)))


def closed_writer_lead_policy(tmp_path: Path) -> Path:
    """The shipped policy with bob (the lead) also a closed_writer: he may write after a close.

    A closed engagement is read-only at once, so a test that sends a close again
    (an idempotent replay) needs a caller the policy lets write a closed engagement.
    """
    target = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, target)
    with (target / "policy.csv").open("a") as policy:
        policy.write("g2, bob, closed_writer\n")
    return target
