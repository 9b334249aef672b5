"""`gateway demo` (make run) as a newcomer meets it: busy ports, chosen ports, the banner."""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

DEMO_ENV = {
    "GATEWAY_DEMO_KEY": "demo-key-not-secret-0123456789abcdef",
    "GATEWAY_DEMO_OUTBOUND_KEY": "demo-outbound-not-secret-0123456789abcdef",
}


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (Linux)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now, below the
    ephemeral range: a port there could be taken by any outgoing connection between
    this check and the demo's bind (a clean-clone run lost a stub port that way)."""
    rng = random.Random()
    high = min(_ephemeral_low(), 65_534) - count
    for _ in range(200):
        first = (
            rng.randrange(20_000, high) if high > 20_000 else rng.randrange(1_024, 65_534 - count)
        )
        if all(_bindable(first + n) for n in range(count)):
            return first
    pytest.fail("no run of free ports found")


@contextmanager
def listening(port: int) -> Iterator[None]:
    """Something else listening on ``port`` (not an HTTP server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **DEMO_ENV, **(env or {})},
        check=False,
    )


def test_a_busy_gateway_port_is_named_with_the_options_that_choose_others() -> None:
    port, stubs = free_ports(1), free_ports(3)
    with listening(port):
        done = demo("--port", str(port), "--stub-port", str(stubs))
    assert done.returncode == 1
    assert f"port {port} (the gateway) is already in use on 127.0.0.1" in done.stderr
    assert 'make run DEMO_ARGS="--port ' in done.stderr
    assert "Gateway ready" not in done.stdout


def test_a_busy_stub_port_is_named() -> None:
    port, stubs = free_ports(1), free_ports(3)
    with listening(stubs + 1):
        done = demo("--port", str(port), "--stub-port", str(stubs))
    assert done.returncode == 1
    assert f"port {stubs + 1} (the findings stub) is already in use" in done.stderr
    suggested = done.stderr.split("--stub-port ")[-1].split('"')[0].split()[0]
    assert int(suggested) != stubs


def test_a_server_that_exits_is_reported_at_once(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("signing: {keys: []}\nnot_a_section: 1\n")
    port, stubs = free_ports(1), free_ports(3)
    done = demo("--port", str(port), "--stub-port", str(stubs), "--config", str(broken))
    assert done.returncode == 1
    assert "gateway demo: the gateway exited (code 2); its error is above" in done.stderr
    assert all(_bindable(p) for p in (port, stubs, stubs + 1, stubs + 2)), "stubs stopped"


def _wait_for_banner(out: Path, proc: subprocess.Popen[bytes]) -> str:
    """The demo's output once its banner is complete (bounded, not a timing claim)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        if "'Example routes'" in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.2)
    pytest.fail("the demo printed no banner within 60 s")


def test_the_demo_runs_on_chosen_ports_and_prints_what_its_commands_need(
    tmp_path: Path,
) -> None:
    port, stubs = free_ports(1), free_ports(3)
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        argv = ["demo", "--port", str(port), "--stub-port", str(stubs)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", *argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **DEMO_ENV},
        )
        try:
            banner = _wait_for_banner(out, proc)
            presigned = next(line for line in banner.splitlines() if "curl -sS" in line)
            curl = shlex.split(presigned)
            headers = dict(curl[i + 1].split(": ", 1) for i, a in enumerate(curl) if a == "-H")
            answer = httpx.get(curl[-1], headers=headers, timeout=10)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
    assert curl[-1] == f"http://127.0.0.1:{port}/v1/engagements/acme-2026/findings"
    assert answer.status_code == 200, "the gateway reached the findings stub on its chosen port"
    assert f"export GATEWAY_DEMO_KEY={DEMO_ENV['GATEWAY_DEMO_KEY']}" in banner
    assert f"findings {stubs + 1}" in banner
    assert code == 0, "SIGTERM stops the demo cleanly"
    assert all(_bindable(p) for p in (port, stubs, stubs + 1, stubs + 2)), "servers stopped"
