"""A whole gateway run, as a real process, never shows a secret.

Every line the process logs (start-up, good and bad requests, a keys file
change, a SIGHUP secret rotation, a broken keys file, shutdown) is captured,
with ``/openapi.json`` and ``/readyz``, and searched for every secret in play.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.authn.signer import HttpSignatureAuth
from app.stubs.server import create_stub_app
from tests.conftest import REPO, TEST_KEY_ENV, TEST_SECRET, LiveServer, free_port

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
SECRET_K2 = b"process-test-k2-secret-0123456789abcdef"
SECRET_K2_ROTATED = b"process-test-k2-rotated-0123456789abcdef"
SECRET_K3 = b"process-test-k3-secret-0123456789abcdef"
INLINE_SECRET = "inline-secret-must-never-be-echoed-0123456789"
ALL_SECRETS = [TEST_SECRET, SECRET_K2, SECRET_K2_ROTATED, SECRET_K3, INLINE_SECRET.encode()]


def forms(secret: bytes) -> list[str]:
    """The secret as text, base64 and hex: none of them may appear."""
    return [secret.decode(), base64.b64encode(secret).decode(), secret.hex()]


class GatewayProcess:
    def __init__(self, tmp_path: Path, findings_url: str) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.keys_file = tmp_path / "keys.yaml"
        # Secrets live outside the watched directory: only SIGHUP reloads them.
        (tmp_path / "secrets").mkdir()
        self.k2_file = tmp_path / "secrets" / "k2.secret"
        self.k3_file = tmp_path / "secrets" / "k3.secret"
        self.k2_file.write_bytes(SECRET_K2 + b"\n")
        self.write_keys(with_k3=False)
        self.config = tmp_path / "gateway.yaml"
        self.config.write_text(
            json.dumps(
                {
                    "signing": {"keys_file": str(self.keys_file)},
                    "policy": {"dir": str(REPO / "policies")},
                    "services": {"findings": {"url": findings_url}},
                    "log": {"level": "DEBUG", "format": "json"},
                }
            )
        )
        self.log_path = tmp_path / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_keys(self, with_k3: bool) -> None:
        text = f"keys:\n  - id: k1\n    secret_env: {TEST_KEY_ENV}\n"
        text += f"  - id: k2\n    secret_file: {self.k2_file}\n"
        if with_k3:
            text += f"  - id: k3\n    secret_file: {self.k3_file}\n"
        self.keys_file.write_text(text)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env[TEST_KEY_ENV] = TEST_SECRET.decode()
        env.pop("REDIS_URL", None)
        argv = [sys.executable, "-m", "app.cli.main", "serve", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*argv, "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        assert wait_until(lambda: self.ready_status() == 200), self.log_path.read_text()

    def ready_status(self) -> int:
        try:
            return httpx.get(self.url + "/readyz", timeout=1).status_code
        except httpx.TransportError:
            return 0

    def readyz(self) -> str:
        return httpx.get(self.url + "/readyz", timeout=5).text

    def stop(self) -> str:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
            self.proc = None
        return self.log_path.read_text()


def wait_until(condition: Callable[[], bool], limit_s: float = 20.0) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture
def gateway_process(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> Iterator[GatewayProcess]:
    findings = live_server(create_stub_app("findings"))
    process = GatewayProcess(tmp_path, findings.url)
    try:
        process.start()
        yield process
    finally:
        process.stop()  # also when start-up failed: no gateway outlives the test


def get(gateway: GatewayProcess, key_id: str, secret: bytes, **kw: str) -> int:
    auth = HttpSignatureAuth(key_id, secret, "alice")
    return httpx.get(gateway.url + FINDINGS, auth=auth, headers=kw, timeout=10).status_code


def exercise(gateway: GatewayProcess) -> list[int]:
    """Good and bad requests of every kind; the statuses seen, in order."""
    statuses = [get(gateway, "k1", TEST_SECRET), get(gateway, "k2", SECRET_K2)]
    auth = HttpSignatureAuth("k2", SECRET_K2, "alice")
    statuses.append(
        httpx.post(
            gateway.url + FINDINGS, json={"title": "Secret check", "severity": "low"}, auth=auth
        ).status_code
    )
    statuses += [get(gateway, "k1", SECRET_K2), get(gateway, "nope", TEST_SECRET)]
    statuses.append(httpx.get(gateway.url + FINDINGS).status_code)
    garbage = {"signature-input": "sig1=(;", "signature": "sig1=:!!:", "x-auth-subject": "a"}
    statuses.append(httpx.get(gateway.url + FINDINGS, headers=garbage).status_code)
    once = next(HttpSignatureAuth("k1", TEST_SECRET, "alice").auth_flow(
        httpx.Request("GET", gateway.url + FINDINGS)
    ))  # fmt: skip
    with httpx.Client() as client:
        statuses += [client.send(once).status_code, client.send(once).status_code]
    return statuses


def test_no_secret_in_any_log_line_schema_or_readiness(gateway_process: GatewayProcess) -> None:
    gw = gateway_process
    assert exercise(gw) == [200, 200, 201, 401, 401, 401, 401, 200, 401]

    gw.k3_file.write_bytes(SECRET_K3)
    gw.write_keys(with_k3=True)  # picked up by the file watcher
    assert wait_until(lambda: "k3" in gw.readyz())
    assert get(gw, "k3", SECRET_K3) == 200

    gw.k2_file.write_bytes(SECRET_K2_ROTATED)  # a secret file elsewhere: SIGHUP
    before = gw.readyz()
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: get(gw, "k2", SECRET_K2_ROTATED) == 200)
    assert get(gw, "k2", SECRET_K2) == 401
    assert gw.readyz() != before

    gw.keys_file.write_text(f"keys:\n  - id: k9\n    secret: {INLINE_SECRET}\n")
    assert wait_until(lambda: "last reload failed" in gw.readyz())
    assert get(gw, "k3", SECRET_K3) == 200, "the last good ring stays in force"

    exposed = {
        "openapi": httpx.get(gw.url + "/openapi.json").text,
        "readyz": gw.readyz(),
        "log": gw.stop(),
    }
    lines = [json.loads(line) for line in exposed["log"].splitlines() if line.startswith("{")]
    events = [line.get("event") for line in lines]
    reasons = {line.get("reason") for line in lines if line.get("stage") == "authn"}
    assert {"signature_invalid", "unknown_key", "signature_missing"} <= reasons
    assert {"signature_malformed", "replayed"} <= reasons
    assert events.count("signing_keys_reloaded") >= 2
    triggers = {
        line.get("trigger")
        for line in lines
        if line.get("event") == "signing_keys_reload_requested"
    }
    assert triggers == {"SIGHUP", "file_change"}
    assert "signing_keys_reload_failed" in events
    assert "request_completed" in events
    assert len(lines) == len(exposed["log"].splitlines()), "every line is structured JSON"
    for where, text in exposed.items():
        for secret in ALL_SECRETS:
            for form in forms(secret):
                assert form not in text, f"a secret appears in {where}"
