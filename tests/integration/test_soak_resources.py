"""A bounded soak of a real ``gateway serve`` under injected faults: resources come back.

One gateway process (in-memory state) in front of the three stubs, on loopback. Two
equal rounds of a seeded request mix (``soak_load``: typed and pass-through routes,
small, streamed and large bodies both ways, clients that leave mid-body and
mid-answer, unsigned and denied callers) while the stubs' faults change phase by
phase: healthy, 503s with ``Retry-After`` and resets mid-answer, stalls past the
read timeout and bodies that stall, a breaker opened and its half-open recovery.

Once the load has stopped and the gateway is idle, what it holds is compared with
a baseline taken before the load: file descriptors and sockets to the stubs
(``/proc``), and through the test-only ``/_soak/state`` route (``soak_probe``) its
asyncio tasks, the transports' open connections and free slots, and the breakers'
half-open trials. Memory is compared across the rounds: the second, equal, round
must not grow the process as the first did. Every assertion is about counts
returning to the baseline, never about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import POLICY_DIR, TEST_KEY_ENV, LiveServer, free_port
from tests.integration.ops.conftest import ServedProcess
from tests.integration.soak_load import PASSTHROUGH, Target, run_load
from tests.integration.soak_probe import STATE_PATH

pytestmark = pytest.mark.integration

ROUND = 1500  # requests a round; two rounds
CONCURRENCY = 16
FD_SLACK = 4  # descriptors a process may open lazily (a log file, an epoll set)
SETTLE_SECONDS = 20  # a bound on the wait for cut-off requests to end, not a claim
RSS_SLACK_KIB = 8 * 1024  # a leak of one large answer in a hundred requests exceeds it
SERVICE = {
    "connect_timeout": 0.5,
    "read_timeout": 0.5,
    "pool_timeout": 1.0,
    "max_connections": 32,
    "retry": {
        "attempts": 3,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "deadline_seconds": 2,
    },
    "breaker": {"fail_max": 5, "reset_timeout_seconds": 0.3, "half_open_max_calls": 2},
}
PROBE = [sys.executable, "-m", "tests.integration.soak_probe", "serve"]
REPORTS = "/engagements/acme-2026/reports"
# Each phase: the stubs' faults (POST /_faults, replacing) and its share of the round.
PHASES: list[tuple[str, dict[str, dict[str, Any]], float]] = [
    ("healthy", {}, 0.25),
    (
        "errors_and_resets",
        {
            "findings": {"error_rate": 0.3, "error_status": 503, "retry_after": 0},
            "reports": {"reset": True, "path_prefix": REPORTS},
            "engagements": {"latency_ms": 50},
        },
        0.2,
    ),
    (
        "stalls",
        {
            "findings": {"hang": True, "hang_max_seconds": 3, "error_rate": 0.0},
            "reports": {"slow_body_ms": 600, "slow_chunk_bytes": 64 * 1024},
            "engagements": {"hang": True, "hang_max_seconds": 3},
        },
        0.15,
    ),
    ("breaker_open", {"findings": {"fail_next": 10_000, "fail_status": 503}}, 0.15),
    ("slow_bodies_recovery", {"reports": {"slow_body_ms": 2, "slow_chunk_bytes": 32 * 1024}}, 0.25),
]


@dataclass
class Resources:
    """What the gateway process holds at one moment."""

    fds: int
    stub_sockets: Counter[str]  # TCP state -> count, sockets to the stubs
    rss_kib: int
    tasks: int
    services: dict[str, dict[str, Any]]


class SoakGateway(ServedProcess):
    """``gateway serve`` through ``soak_probe``: one process, in-memory state."""

    def __init__(self, tmp_path: Path, stubs: dict[str, LiveServer]) -> None:
        port = free_port()
        self.stub_ports = {server.port for server in stubs.values()}
        services = {name: {"url": server.url, **SERVICE} for name, server in stubs.items()}
        config = {
            "signing": {"keys": [{"id": "test-2026", "secret_env": TEST_KEY_ENV}]},
            "policy": {"dir": str(POLICY_DIR), "watch_interval": 0},
            "services": services,
            "orchestration": {
                "passthrough": PASSTHROUGH,
                "downstream_deadline_seconds": 2,
                "overview_deadline_seconds": 1,
            },
            "log": {"format": "json", "level": "WARNING"},
        }
        path = tmp_path / "soak.yaml"
        path.write_bytes(orjson.dumps(config))  # JSON is YAML
        argv = [*PROBE, "--port", str(port), "--config", str(path)]
        super().__init__(port, argv, tmp_path / "gateway.log")

    def resources(self) -> Resources:
        state = httpx.get(self.url + STATE_PATH, timeout=10).json()
        proc = Path(f"/proc/{self.proc.pid}")
        fds = list((proc / "fd").iterdir())
        status = (proc / "status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return Resources(len(fds), self._stub_sockets(fds), rss, state["tasks"], state["services"])

    def _stub_sockets(self, fds: list[Path]) -> Counter[str]:
        """TCP states of the process's own sockets whose peer is a stub."""
        inodes = set()
        for fd in fds:
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        states: Counter[str] = Counter()
        for line in Path(f"/proc/{self.proc.pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[9] in inodes and remote_port in self.stub_ports:
                states[TCP_STATES.get(fields[3], fields[3])] += 1
        return states


TCP_STATES = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT",
              "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0B": "CLOSING"}  # fmt: skip


@pytest.fixture
def soak(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> Iterator[tuple[SoakGateway, dict[str, LiveServer]]]:
    stubs = {name: live_server(create_stub_app(name)) for name in STUB_NAMES}
    gateway = SoakGateway(tmp_path, stubs)
    try:
        yield gateway, stubs
    finally:
        gateway.close()


def set_faults(stubs: dict[str, LiveServer], faults: dict[str, dict[str, Any]]) -> None:
    for name, server in stubs.items():
        response = httpx.post(f"{server.url}/_faults", json=faults.get(name, {}), timeout=5)
        assert response.status_code == 200, response.text


def run_round(gateway: SoakGateway, stubs: dict[str, LiveServer], seed: int) -> Counter[str]:
    target = Target("127.0.0.1", gateway.port)
    outcomes: Counter[str] = Counter()
    for index, (_, faults, share) in enumerate(PHASES):
        set_faults(stubs, faults)
        count = int(ROUND * share)
        outcomes += asyncio.run(run_load(target, count, CONCURRENCY, seed * 100 + index))
    set_faults(stubs, {})
    return outcomes


def in_use(resources: Resources) -> list[str]:
    """What the idle gateway still holds beyond its pool's idle connections."""
    held = [f"{state} x{count}" for state, count in resources.stub_sockets.items()
            if state != "ESTABLISHED"]  # fmt: skip
    idle = sum(service["idle"] for service in resources.services.values())
    if resources.stub_sockets["ESTABLISHED"] > idle:  # the pool's are all it may keep
        held.append(f"{resources.stub_sockets['ESTABLISHED']} sockets, {idle} pooled")
    for name, service in resources.services.items():
        if service["open"] != service["idle"]:
            held.append(f"{name}: {service['open'] - service['idle']} connections in use")
        if service["slots_free"] != SERVICE["max_connections"]:
            held.append(f"{name}: {service['slots_free']} slots free")
        if service["trials_in_flight"]:
            held.append(f"{name}: {service['trials_in_flight']} breaker trials entered")
    return held


def settled(gateway: SoakGateway, baseline: Resources) -> Resources:
    """The gateway's resources once nothing it started is left in flight (a bound on the
    wait: requests cut off by the load's end finish on the gateway's own timeouts)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    now = gateway.resources()
    while (in_use(now) or now.tasks > baseline.tasks) and time.monotonic() < deadline:
        time.sleep(0.1)
        now = gateway.resources()
    return now  # what is still held then is named by the assertions


def assert_back_to(baseline: Resources, now: Resources) -> None:
    assert not in_use(now), in_use(now)
    # Beside the pool's kept connections (their number is the pool's to choose).
    fds, before = now.fds - now.stub_sockets.total(), baseline.fds - baseline.stub_sockets.total()
    assert fds <= before + FD_SLACK, f"{fds} descriptors, {before} before"
    assert now.tasks <= baseline.tasks, f"{now.tasks} asyncio tasks, {baseline.tasks} before"


def test_a_soak_under_faults_leaves_no_resource_behind(
    soak: tuple[SoakGateway, dict[str, LiveServer]],
) -> None:
    gateway, stubs = soak
    target = Target("127.0.0.1", gateway.port)
    asyncio.run(run_load(target, 64, 8, seed=0))  # every path once: lazy imports, caches
    baseline = gateway.resources()
    assert not in_use(baseline)

    first = run_round(gateway, stubs, seed=1)
    after_first = settled(gateway, baseline)
    assert_back_to(baseline, after_first)
    second = run_round(gateway, stubs, seed=2)
    after_second = settled(gateway, baseline)
    assert_back_to(baseline, after_second)

    # The faults were met: answers failed every way the phases make them fail.
    outcomes = first + second
    for status in ("200", "201", "401", "403", "502", "503", "504"):
        assert any(key.endswith(f":{status}") for key in outcomes), (status, outcomes)
    # The second, equal round does not grow the process as a leak would (the first
    # warms allocator arenas; the replay store keeps every nonce for its window).
    grown = after_second.rss_kib - after_first.rss_kib
    assert grown <= RSS_SLACK_KIB, f"RSS grew {grown} KiB in the second round"
