"""``gateway serve`` as a real process: SIGTERM drains in-flight requests; workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import (
    POLICY_DIR,
    REPO,
    TEST_KEY_ENV,
    TEST_SECRET,
    LiveServer,
    free_port,
    signer,
)
from tests.integration.ops.conftest import FINDINGS, ServedProcess, metric_value, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

CONFIG = """
signing:
  keys: [{{id: test-2026, secret_env: {env}}}]
policy: {{dir: "{policy}"}}
services:
  findings: {{url: "{url}"}}
ops: {{graceful_shutdown_seconds: {graceful}}}
log: {{format: json}}
"""
IN_FLIGHT = 3
REQUESTS = "gateway_http_requests_total"


class HeldFindings:
    """A findings service that holds every request until released."""

    def __init__(self, hold: bool = True) -> None:
        self.arrived = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.app = FastAPI()
        self.app.get("/engagements/{engagement_id}/findings")(self._list)

    async def _list(self, engagement_id: str) -> dict[str, object]:
        self.arrived += 1
        await asyncio.to_thread(self.release.wait)  # released from the test thread
        return {"engagement_id": engagement_id, "items": [], "count": 0}


class GatewayProcess(ServedProcess):
    def __init__(
        self,
        tmp_path: Path,
        downstream: str,
        *extra: str,
        graceful: int = 30,
        services: dict[str, str] | None = None,
        redis_url: str | None = None,
    ) -> None:
        port = free_port()
        config = tmp_path / "gateway.yaml"
        text = CONFIG.format(env=TEST_KEY_ENV, policy=POLICY_DIR, url=downstream, graceful=graceful)
        for name, url in (services or {}).items():  # more services beside findings
            text = text.replace("services:\n", f'services:\n  {name}: {{url: "{url}"}}\n', 1)
        if redis_url is not None:
            text += f'redis: {{url: "{redis_url}"}}\n'
        config.write_text(text)
        argv = ["serve", "--port", str(port), "--config", str(config), *extra]
        super().__init__(
            port, [sys.executable, "-m", "app.cli.main", *argv], tmp_path / "gateway.log"
        )

    def accepting(self) -> bool:
        try:
            httpx.get(self.url + "/healthz", timeout=1)
        except httpx.TransportError:
            return False
        return True

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(
        downstream: str,
        *extra: str,
        graceful: int = 30,
        services: dict[str, str] | None = None,
        redis_url: str | None = None,
    ) -> GatewayProcess:
        process = GatewayProcess(
            tmp_path, downstream, *extra, graceful=graceful, services=services, redis_url=redis_url
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def test_sigterm_lets_in_flight_requests_finish(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
    signed_client: Callable[..., httpx.Client],
) -> None:
    held = HeldFindings()
    gateway = gateway_process(live_server(held.app).url)

    def fetch() -> httpx.Response:
        with signed_client(gateway.url, "alice") as client:
            return client.get(FINDINGS)

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        try:
            futures = [pool.submit(fetch) for _ in range(IN_FLIGHT)]
            wait_until(lambda: held.arrived == IN_FLIGHT)
            gateway.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: not gateway.accepting())  # stopped accepting, still draining
            assert gateway.proc.poll() is None
        finally:
            held.release.set()
        responses = [f.result(timeout=30) for f in futures]
    assert [r.status_code for r in responses] == [200] * IN_FLIGHT
    assert all(r.json()["engagement_id"] == "acme-2026" for r in responses)
    # uvicorn re-raises the signal after a clean shutdown: exit by SIGTERM, pools closed.
    assert gateway.proc.wait(timeout=30) == -signal.SIGTERM
    log = gateway.log_text()
    assert '"event":"shutdown_complete"' in log
    # Dying of the re-raised signal runs no atexit: the server's last lines, queued for
    # a loop tick that never came, were lost (the log ended at "Waiting for application
    # shutdown."). They are written at once now.
    assert "Application shutdown complete." in log
    assert log.rstrip().splitlines()[-1].find("Finished server process") != -1


def test_a_request_still_running_when_the_drain_runs_out_gets_a_503_problem(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
    signed_client: Callable[..., httpx.Client],
) -> None:
    """Found by an audit: uvicorn cancels what is still running after
    ``graceful_shutdown_seconds`` and answered it with a plain-text 500. It is a 503
    problem+json with the corr_id and ``Retry-After`` now, a request to retry."""
    held = HeldFindings()
    gateway = gateway_process(live_server(held.app).url, graceful=1)

    def fetch() -> httpx.Response:
        with signed_client(gateway.url, "alice") as client:
            return client.get(FINDINGS, headers={"x-request-id": "corr-drain-overrun"})

    with ThreadPoolExecutor(1) as pool:
        try:
            future = pool.submit(fetch)
            wait_until(lambda: held.arrived == 1)
            gateway.proc.send_signal(signal.SIGTERM)
            response = future.result(timeout=30)
        finally:
            held.release.set()
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert response.json()["corr_id"] == "corr-drain-overrun"
    assert response.json()["type"] == "urn:authz-gateway:problem:unavailable"
    gateway.proc.wait(timeout=30)
    log = gateway.log_text()
    assert '"event":"request_cancelled"' in log
    # The one line per cancelled request: uvicorn's 40-frame error traceback is dropped.
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
def test_a_close_cut_short_by_the_end_of_the_drain_is_undone_before_the_process_exits(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
    signed_client: Callable[..., httpx.Client],
    redis_server: RedisServer,
    shared: bool,
) -> None:
    """A close still running when graceful shutdown ran out was cancelled with its
    findings frozen: the engagement stayed half closed. The saga undoes its done steps,
    the request then releases its engagement lock and key and answers 503 (with Redis,
    an audit found the process gone before that: no answer, lock and key held for
    their lease), and only then do the pools and Redis close."""
    stubs = {name: live_server(create_stub_app(name)) for name in STUB_NAMES}
    faults = {"hang": True, "hang_max_seconds": 20, "path_prefix": "/engagements/acme-2026/reports"}
    assert httpx.post(stubs["reports"].url + "/_faults", json=faults, timeout=5).status_code == 200
    others = {name: stubs[name].url for name in ("engagements", "reports")}
    redis_url = redis_server.url if shared else None
    gateway = gateway_process(
        stubs["findings"].url, graceful=1, services=others, redis_url=redis_url
    )
    frozen = stubs["findings"].url + "/_frozen"

    def close() -> httpx.Response:
        with signed_client(gateway.url, "bob") as client:
            return client.post(
                "/v1/engagements/acme-2026/close",
                json={"reason": "Retest complete; client signed off."},
                headers={"idempotency-key": "close-drain-overrun-1"},
            )

    with ThreadPoolExecutor(1) as pool:
        try:
            future = pool.submit(close)
            wait_until(lambda: httpx.get(frozen, timeout=5).json() == ["acme-2026"])
            wait_until(
                lambda: (
                    httpx.get(stubs["reports"].url + "/_stats", timeout=5).json()["requests"] > 0
                )
            )
            gateway.proc.send_signal(signal.SIGTERM)
            response = future.result(timeout=30)
        finally:
            httpx.post(stubs["reports"].url + "/_faults", json={}, timeout=5)
    assert response.status_code == 503
    assert response.json()["type"] == "urn:authz-gateway:problem:unavailable"
    gateway.proc.wait(timeout=30)
    assert httpx.get(frozen, timeout=5).json() == []  # the freeze was undone
    log = gateway.log_text()
    assert '"status":"cancelled"' in log
    assert '"step":"freeze_findings","status":"compensated"' in log.replace(", ", ",")
    if shared:  # nothing left held in Redis: the lock and the key's claim were released
        with redis.Redis.from_url(redis_server.url) as client:
            left = [key.decode() for key in client.scan_iter("gateway:*")]
        assert not [k for k in left if "engagement-lock" in k or "idempotency" in k], left


def test_workers_share_one_metrics_view_and_one_replay_cache(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics_dir = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    monkeypatch.setenv("GATEWAY_REDIS__URL", redis_server.url)
    held = HeldFindings(hold=False)
    gateway = gateway_process(live_server(held.app).url, "--workers", "2")
    wait_until(lambda: len(list(metrics_dir.glob("counter_*.db"))) == 2, timeout=30)
    signed = next(signer("alice").auth_flow(httpx.Request("GET", gateway.url + FINDINGS)))
    with httpx.Client(timeout=10) as client:
        # Fresh connections, so the two sends may land on different workers.
        statuses = [client.send(signed).status_code for _ in range(4)]
    assert statuses == [200, 401, 401, 401]
    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    before = metric_value(httpx.get(gateway.url + "/metrics").text, REQUESTS, **healthz)
    for _ in range(20):
        assert httpx.get(gateway.url + "/healthz").status_code == 200
    # Each scrape is answered by either worker; every one must count all 20 requests.
    for _ in range(6):
        text = httpx.get(gateway.url + "/metrics").text
        assert metric_value(text, REQUESTS, **healthz) == before + 20
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0  # the supervisor exits 0 after its workers
    assert gateway.log_text().count('"event":"shutdown_complete"') == 2  # one per worker


def test_workers_without_redis_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        CONFIG.format(env=TEST_KEY_ENV, policy="policies", url="http://127.0.0.1:1", graceful=30)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "GATEWAY_REDIS__URL")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "serve", "--workers", "2", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**env, TEST_KEY_ENV: TEST_SECRET.decode()},
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "gateway: configuration error: --workers 2 needs shared state: redis.url, "
        "or redis.mode sentinel with redis.nodes"
    )


def test_bad_config_with_workers_stops_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        CONFIG.format(env=TEST_KEY_ENV, policy="nowhere", url="http://127.0.0.1:1", graceful=30)
    )
    result = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "serve", "--workers", "2", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gateway: configuration error: policy.dir: nowhere/model.conf is not a readable file"
    ]


def test_cluster_mode_with_no_reachable_node_starts_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's RedisClusterException is no RedisError: start-up crashed (exit 3, a
    traceback) where standalone and sentinel start not ready and recover by themselves."""
    monkeypatch.setenv("GATEWAY_REDIS__MODE", "cluster")
    gateway = GatewayProcess(
        tmp_path, "http://127.0.0.1:1", redis_url=f"redis://127.0.0.1:{free_port()}"
    )
    try:
        ready = httpx.get(gateway.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        signed = httpx.get(
            gateway.url + "/v1/engagements/acme-2026/findings", auth=signer(), timeout=5
        )
        assert signed.status_code == 503  # fail closed: no replay check, no request
        assert "Traceback" not in gateway.log_text()
    finally:
        gateway.close()


def test_a_restarted_process_refuses_a_replay_of_what_it_accepted_before(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
) -> None:
    """The in-memory replay store dies with the process; the new one's fence refuses the past."""
    findings = live_server(create_stub_app("findings")).url
    first = gateway_process(findings)
    captured = next(signer().auth_flow(httpx.Request("GET", first.url + FINDINGS)))
    with httpx.Client(timeout=10) as client:
        assert client.send(captured).status_code == 200
        first.close()  # killed: a crash, nothing written anywhere
        restarted = gateway_process(findings)
        captured.url = captured.url.copy_with(port=restarted.port)
        assert client.send(captured).status_code == 401
        assert client.get(restarted.url + FINDINGS, auth=signer()).status_code == 200
    assert '"reason":"replay_window_reset"' in restarted.log_text()


def _workers(supervisor: int) -> list[int]:
    """The supervisor's live worker processes (not a zombie that died)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if (
                int(stat[1]) == supervisor
                and stat[0] != "Z"
                and b"spawn_main" in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
    return found


def test_a_worker_started_again_serves_what_the_supervisor_validated(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An audit: a worker that died was replaced by one that read the configuration file
    again; edited since (here, invalid), every replacement died with a traceback, about
    one a second, and the pod served on one worker fewer. Workers build from the
    settings the supervisor validated: the replacement serves."""
    monkeypatch.setenv("GATEWAY_REDIS__URL", redis_server.url)
    gateway = gateway_process(live_server(HeldFindings(hold=False).app).url, "--workers", "2")
    wait_until(lambda: len(_workers(gateway.proc.pid)) == 2, timeout=30)
    worker = _workers(gateway.proc.pid)[0]  # started with it in its environment
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    named = [v for v in environ if v.startswith(b"GATEWAY_SETTINGS_SNAPSHOT=")]
    snapshot = Path(named[0].partition(b"=")[2].decode())
    assert snapshot.stat().st_mode & 0o077 == 0  # owner-only, in an owner-only directory
    assert snapshot.parent.stat().st_mode & 0o077 == 0
    config = tmp_path / "gateway.yaml"
    config.write_text(config.read_text() + "bogus_key: 1\n")  # an edit after start-up
    wait_until(lambda: gateway.log_text().count("Application startup complete") == 2, timeout=30)
    first, _ = _workers(gateway.proc.pid)
    os.kill(first, signal.SIGKILL)
    # The replacement built its app and served its lifespan's start (it died there before).
    wait_until(lambda: gateway.log_text().count("Application startup complete") == 3, timeout=60)
    assert len(_workers(gateway.proc.pid)) == 2
    assert first not in _workers(gateway.proc.pid)
    with httpx.Client(timeout=10) as client:  # fresh connections: both workers answer
        for _ in range(6):
            request = httpx.Request("GET", gateway.url + FINDINGS)
            assert client.send(next(signer("alice").auth_flow(request))).status_code == 200
    log = gateway.log_text()
    assert "Traceback" not in log
    assert "configuration error" not in log
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=60) == 0
    assert not snapshot.parent.exists()  # removed when serving ended


def test_sigterm_after_a_burst_of_sighups_stops_the_workers_without_waiting_for_restarts(
    live_server: Callable[[FastAPI], LiveServer],
    gateway_process: Callable[..., GatewayProcess],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drill: 30 SIGHUPs (logrotate for many files), then SIGTERM. uvicorn's supervisor
    queued each SIGHUP as a whole rolling restart and saw the SIGTERM only after all of
    them (minutes of restarts, past any grace period). The stop goes first, and the
    SIGHUPs one poll finds are one restart."""
    monkeypatch.setenv("GATEWAY_REDIS__URL", redis_server.url)
    gateway = gateway_process(live_server(HeldFindings(hold=False).app).url, "--workers", "2")
    wait_until(lambda: gateway.log_text().count("Application startup complete") == 2, timeout=30)
    for _ in range(10):
        gateway.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "Received SIGHUP" in gateway.log_text(), timeout=30)  # a restart runs
    for _ in range(10):  # queued behind the restart in progress
        gateway.proc.send_signal(signal.SIGHUP)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=60) == 0
    log = gateway.log_text()
    assert log.count("Received SIGHUP") == 1
    assert "Received SIGTERM, exiting." in log


def test_a_port_already_taken_stops_before_the_app_is_built(tmp_path: Path) -> None:
    """An audit: uvicorn found the port taken only after the lifespan had run (the
    engagement state reconciled, pools opened), then exited 3 with a log line. It is one
    line and exit 3 before anything starts."""
    config = tmp_path / "gw.yaml"
    config.write_text(
        CONFIG.format(env=TEST_KEY_ENV, policy="policies", url="http://127.0.0.1:1", graceful=30)
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port),
             "--config", str(config)],
            capture_output=True, text=True, timeout=30, cwd=REPO,
            env={**os.environ, TEST_KEY_ENV: TEST_SECRET.decode()}, check=False,
        )  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert result.stdout == ""  # no lifespan ran: nothing logged
