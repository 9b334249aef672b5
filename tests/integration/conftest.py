"""A running gateway in front of running stub services, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from app.main import create_app
from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import LiveServer, make_settings
from tests.integration.orchestration_stack import StackBuilder

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    gateway: LiveServer
    stubs: dict[str, LiveServer]

    @property
    def url(self) -> str:
        return self.gateway.url

    def stub_app(self, name: str) -> FastAPI:
        app = self.stubs[name].server.config.app
        assert isinstance(app, FastAPI)
        return app


@pytest.fixture
def stack(live_server: Callable[[FastAPI], LiveServer], test_key_env: str) -> Stack:
    stubs = {name: live_server(create_stub_app(name)) for name in STUB_NAMES}
    settings = make_settings({name: server.url for name, server in stubs.items()})
    gateway = live_server(create_app(settings))
    return Stack(gateway=gateway, stubs=stubs)


@pytest.fixture
def make_stack(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, monkeypatch: pytest.MonkeyPatch
) -> StackBuilder:
    """Stacks of a gateway and three stubs that require its outbound signature."""
    return StackBuilder(live_server, monkeypatch)
