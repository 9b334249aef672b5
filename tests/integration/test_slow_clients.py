"""Slow clients against a real ``gateway serve``: header-read timeout and connection cap."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, signer
from tests.integration.ops.conftest import FINDINGS, wait_until
from tests.integration.ops.test_serve_process import GatewayProcess

pytestmark = pytest.mark.integration

FLOOD = 50
BOUND = 30.0  # seconds: a bound on the outcome, far above the 1 s timeout under test


@pytest.fixture
def serve(
    tmp_path: Path,
    live_server: Callable[[FastAPI], LiveServer],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., GatewayProcess]]:
    """``gateway serve`` (uvloop, httptools, our protocol) with edge settings from the env."""
    findings = live_server(create_stub_app("findings"))
    started: list[GatewayProcess] = []

    def start(header_timeout: float, max_connections: int) -> GatewayProcess:
        monkeypatch.setenv("GATEWAY_EDGE__HEADER_TIMEOUT_SECONDS", str(header_timeout))
        monkeypatch.setenv("GATEWAY_EDGE__MAX_CONNECTIONS", str(max_connections))
        started.append(GatewayProcess(tmp_path, findings.url))
        return started[-1]

    yield start
    for process in started:
        process.close()


class SlowClient:
    """A connection that sends a request head one byte at a time and never finishes it."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 4096

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.sent = 0
        self.answer = b""
        self.closed = False

    def drip(self) -> None:
        """One more byte; notice the server's answer or close."""
        if self.closed:
            return
        try:
            if select.select([self.sock], [], [], 0)[0]:
                chunk = self.sock.recv(65536)
                self.answer += chunk
                self.closed = not chunk
                if self.closed:
                    return
            self.sock.send(self.HEAD[self.sent : self.sent + 1])
            self.sent += 1
        except OSError:  # reset or broken pipe: the server closed it
            self.closed = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def signed_get(url: str) -> httpx.Response:
    with httpx.Client(base_url=url, auth=signer("alice"), timeout=10) as client:
        return client.get(FINDINGS)


def test_a_slow_header_flood_is_cut_off_while_signed_requests_are_served(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout=1, max_connections=200)
    flood = [SlowClient(gateway.port) for _ in range(FLOOD)]
    served: list[int] = []
    try:
        deadline = time.monotonic() + BOUND
        while not all(c.closed for c in flood) and time.monotonic() < deadline:
            for client in flood:
                client.drip()
            served.append(signed_get(gateway.url).status_code)
            time.sleep(0.1)
    finally:
        for client in flood:
            client.close()
    assert all(c.closed for c in flood), "slow-header connections were never cut off"
    assert served
    assert set(served) == {200}, "signed requests kept being served during the flood"
    timeouts = [c.answer for c in flood if c.answer]
    assert timeouts
    for answer in timeouts:
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"application/problem+json" in answer
    assert "header_timeout" in gateway.log_text()


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout=1, max_connections=200)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as idle:
        assert idle.recv(1024) == b""


def test_above_the_connection_cap_requests_get_a_503_problem(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout=60, max_connections=4)
    idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(4)]
    refused: list[httpx.Response] = []
    try:

        def over_the_cap() -> bool:
            response = signed_get(gateway.url)
            refused.append(response)
            return response.status_code == 503

        wait_until(over_the_cap, timeout=BOUND)
    finally:
        for sock in idle:
            sock.close()
    assert_problem_without_corr_id(refused[-1], 503, "unavailable")
    assert refused[-1].headers["retry-after"] == "1"
    wait_until(lambda: signed_get(gateway.url).status_code == 200, timeout=BOUND)


def assert_problem_without_corr_id(response: httpx.Response, status: int, code: str) -> None:
    """Refused before the app ran: problem+json, but no request id was ever made."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:authz-gateway:problem:{code}"
    assert body["status"] == status
