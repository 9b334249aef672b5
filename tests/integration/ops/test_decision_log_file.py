"""The decision log file of a real ``gateway serve`` process, rotated as logrotate does.

logrotate without ``copytruncate`` renames the file and signals the process
(``postrotate``: ``kill -HUP``); the gateway reopens the path. Lines written
before the signal land in the renamed file, lines after it in the new one, none
is lost or cut, and ``gateway policy diff --log`` can read either file as it is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.authz.diff import read_log
from app.stubs.server import create_stub_app
from tests.conftest import POLICY_DIR, REPO, TEST_KEY_ENV, TEST_SECRET, LiveServer, free_port
from tests.conftest import signer as signed_as
from tests.integration.ops.conftest import FINDINGS, wait_until

pytestmark = pytest.mark.integration

FIELDS = {
    "event",
    "stage",
    "corr_id",
    "subject",
    "groups",
    "engagement",
    "object",
    "action",
    "decision",
    "matched_rule",
    "role_chain",
    "policy_revision",
    "reason",
    "closed",
    "level",
    "logger",
    "timestamp",
}


class Gateway:
    def __init__(self, tmp_path: Path, findings: str, decisions: dict[str, Any]) -> None:
        self.port = free_port()
        config = tmp_path / "gateway.json"
        settings = {
            "signing": {"keys": [{"id": "test-2026", "secret_env": TEST_KEY_ENV}]},
            "policy": {"dir": str(POLICY_DIR)},
            "services": {"findings": {"url": findings}},
            "log": {"format": "json", "decisions": decisions},
        }
        config.write_text(json.dumps(settings))
        self.log_path = tmp_path / "gateway.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
        env[TEST_KEY_ENV] = TEST_SECRET.decode()
        env.pop("REDIS_URL", None)
        argv = ["serve", "--port", str(self.port), "--config", str(config)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", *argv],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=90)  # start-up on a busy shared machine

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, subject: str, times: int = 1) -> list[int]:
        with httpx.Client(base_url=self.url, auth=signed_as(subject), timeout=10) as client:
            return [client.get(FINDINGS).status_code for _ in range(times)]

    def main_log(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(text) for text in lines if text.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def start(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> Iterator[Callable[[dict[str, Any]], Gateway]]:
    findings = live_server(create_stub_app("findings")).url
    started: list[Gateway] = []

    def run(decisions: dict[str, Any]) -> Gateway:
        started.append(Gateway(tmp_path, findings, decisions))
        return started[-1]

    yield run
    for gateway in started:
        gateway.stop()


def decisions_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_rename_then_sighup_moves_the_lines_to_a_fresh_file(
    tmp_path: Path, start: Callable[[dict[str, Any]], Gateway]
) -> None:
    path = tmp_path / "decisions.jsonl"
    gateway = start({"file": str(path), "main_log": False})
    assert gateway.get("alice", 3) == [200] * 3
    assert gateway.get("mallory") == [403]
    rotated = path.rename(tmp_path / "decisions.jsonl.1")  # logrotate's rename ...
    assert gateway.get("alice", 2) == [200] * 2  # ... still into the open, renamed file
    gateway.proc.send_signal(signal.SIGHUP)  # ... then postrotate's kill -HUP
    wait_until(lambda: any(x["event"] == "decision_log_reopened" for x in gateway.main_log()))
    assert gateway.get("alice", 2) == [200] * 2

    before, after = decisions_in(rotated), decisions_in(path)
    assert [d["decision"] for d in before] == ["allow"] * 3 + ["deny"] + ["allow"] * 2
    assert [d["decision"] for d in after] == ["allow"] * 2
    for line in before + after:  # the main log's fields, nothing cut (key_id: bound or not)
        assert FIELDS <= set(line) <= FIELDS | {"key_id"}, line
    assert not [x for x in gateway.main_log() if x["event"] == "decision"], "instead of stderr"
    for file in (rotated, path):  # `policy diff --log` reads the file as it is
        reading = read_log(file)
        assert [p.subject for p in reading.probes] == [d["subject"] for d in decisions_in(file)]
        assert not reading.skipped  # the file holds decisions only


def test_deny_only_besides_the_main_log(
    tmp_path: Path, start: Callable[[dict[str, Any]], Gateway]
) -> None:
    path = tmp_path / "denials.jsonl"
    gateway = start({"file": str(path), "deny_only": True})
    assert gateway.get("alice", 2) + gateway.get("mallory") == [200, 200, 403]
    wait_until(lambda: path.stat().st_size > 0)
    (denial,) = decisions_in(path)
    assert (denial["subject"], denial["decision"]) == ("mallory", "deny")
    on_main = [x for x in gateway.main_log() if x["event"] == "decision"]
    assert [x["decision"] for x in on_main] == ["allow", "allow", "deny"]
    assert on_main[-1] == denial, "the same line in both places"
