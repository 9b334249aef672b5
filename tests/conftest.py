"""Shared fixtures: real uvicorn servers on 127.0.0.1, settings and signed clients."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from hypothesis import settings
from structlog.testing import capture_logs

from app.authn.signer import HttpSignatureAuth
from app.cli.serve import server_options
from app.core import logcontext
from app.core.config import Settings
from app.stubs.faults import FaultState
from app.stubs.server import stub_server

REPO = Path(__file__).resolve().parent.parent
POLICY_DIR = REPO / "policies"
# Documented test keys: never used outside the test suite.
TEST_KEY_ID = "test-2026"
TEST_SECRET = b"test-secret-not-for-production-0123456789"
TEST_KEY_ENV = "GATEWAY_TEST_KEY"

# Property tests run hypothesis's default profile (100 examples, a random seed) unless
# GATEWAY_HYPOTHESIS_PROFILE names another: "deep" draws 3,000 with no deadline, to shake
# out the rare inputs one default run in many meets (not for `make test`: it takes long).
# A test that sets its own max_examples (the server-bound ones) keeps it under any profile.
settings.register_profile("deep", max_examples=3_000, deadline=None)
settings.load_profile(os.environ.get("GATEWAY_HYPOTHESIS_PROFILE", "default"))


def free_port() -> int:
    """A loopback port free now; from ``GATEWAY_TEST_PORTS`` (``LOW-HIGH``) when set,
    so runs beside other work on the same host stay in the range they were given."""
    low, _, high = os.environ.get("GATEWAY_TEST_PORTS", "0-0").partition("-")
    candidates = list(range(int(low), int(high) + 1))
    random.shuffle(candidates)
    # A port handed out but not yet bound (two stubs started in turn) is free too:
    # those given lately are tried last.
    candidates.sort(key=_GIVEN_PORTS.__contains__)
    for candidate in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            _GIVEN_PORTS.append(port)
            return port
    raise RuntimeError(f"no free port in GATEWAY_TEST_PORTS={low}-{high}")


_GIVEN_PORTS: deque[int] = deque(maxlen=32)


class LiveServer:
    """A uvicorn server in a background thread, on a free loopback port."""

    def __init__(self, app: FastAPI, port: int | None = None, loop: str = "auto") -> None:
        self.port = port or free_port()
        self.server = _server(app, self.port, loop)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop and wait for the thread (bounded): whatever its loop's close reports then
        belongs to the test that ran this server, not to the next one."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        if self.thread.is_alive():
            raise RuntimeError(f"the server on port {self.port} did not stop within 60 s")


def _server(app: FastAPI, port: int, loop: str) -> uvicorn.Server:
    """An app served as in production: a stub as ``gateway stub`` serves it
    (``stub_server``: a hung request is cut off when the stop begins, not waited out),
    the gateway as ``gateway serve`` does (its own HTTP protocol, ``server_options``:
    a fragment, an unknown method or a slow head get its problem answers, not
    uvicorn's), any other app by a plain server."""
    options: dict[str, Any] = {"lifespan": "on", "loop": loop}
    if isinstance(getattr(app.state, "faults", None), FaultState):
        return stub_server(app, port=port, **options)
    settings = getattr(app.state, "settings", None)
    if isinstance(settings, Settings):
        options.update(server_options(settings), ws="none")
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, **options
    )
    return uvicorn.Server(config)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Start any number of apps as real servers; all are stopped at teardown."""
    started: list[LiveServer] = []

    def start(app: FastAPI, loop: str = "auto") -> LiveServer:
        server = LiveServer(app, loop=loop).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def test_key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
    return TEST_KEY_ENV


def make_settings(services: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings for tests: the test key, the shipped policies, the given services."""
    values: dict[str, Any] = {
        "signing": {"keys": [{"id": TEST_KEY_ID, "secret_env": TEST_KEY_ENV}]},
        "policy": {"dir": str(POLICY_DIR)},
        "services": {name: {"url": url} for name, url in (services or {}).items()},
    }
    values.update(overrides)
    return Settings(**values)


def signer(subject: str = "alice", groups: tuple[str, ...] = ()) -> HttpSignatureAuth:
    return HttpSignatureAuth(TEST_KEY_ID, TEST_SECRET, subject=subject, groups=groups)


def resent_to(gateway: LiveServer, request: httpx.Request) -> httpx.Request:
    """The same signed bytes, sent to ``gateway`` (only the path is signed, not the port)."""
    request.url = request.url.copy_with(port=gateway.port)
    return request


def send(request: httpx.Request) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.send(request)


def signature_param(request: httpx.Request, name: str) -> str:
    """One Signature-Input parameter of a signed request (``created``, ``nonce``...)."""
    params = request.headers["signature-input"].split(";")
    return next(p for p in params if p.startswith(f"{name}=")).removeprefix(f"{name}=").strip('"')


@pytest.fixture
def signed_client() -> Callable[..., httpx.Client]:
    """A factory of httpx clients that sign as the given subject."""

    def make(base_url: str, subject: str = "alice") -> httpx.Client:
        return httpx.Client(base_url=base_url, auth=signer(subject), timeout=10)

    return make


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog line emitted during the test, with contextvars merged in."""
    with capture_logs(processors=[logcontext.merge]) as logs:
        yield logs


pytest_plugins = ["tests.redis_server", "tests.redis_topologies"]
