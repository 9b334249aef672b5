"""Gateways with operations settings (Redis, rate limits) in front of a findings stub."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import REPO, TEST_KEY_ENV, TEST_SECRET, LiveServer, make_settings

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


class ServedProcess:
    """A gateway process (``argv``) on ``port``, with the test key, logging to ``log_path``:
    started in its own process group (``close()`` reaches a ``--workers`` supervisor's
    workers too) and returned once ``/healthz`` answers 200."""

    def __init__(self, port: int, argv: list[str], log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(self._healthy, timeout=30)
        except BaseException:
            self.close()  # one that never became healthy must not outlive the test
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, "the gateway exited during start-up"
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        # The whole group: killing only a --workers supervisor leaves its workers running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()
