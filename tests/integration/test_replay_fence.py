"""The replay fence end to end: a store that lost its history refuses what it cannot vouch for.

Real gateways on loopback, a real redis-server stopped and started again (no
persistence, so it comes back empty), real signed requests replayed byte for byte.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from app.authn.nonces import Claim, RedisNonceStore
from app.core.config import RedisSettings
from app.core.redis import create_redis
from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, make_settings, resent_to, send, signature_param, signer
from tests.integration.ops.conftest import metric_value
from tests.redis_server import RedisServer, redis_binary

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
RESET = "replay_window_reset"
GatewayStarter = Callable[..., LiveServer]


@pytest.fixture
def start_gateway(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str
) -> GatewayStarter:
    """Start gateways sharing one findings stub; keyword arguments are settings sections."""
    stub = live_server(create_stub_app("findings"))

    def start(**sections: Any) -> LiveServer:
        return live_server(create_app(make_settings({"findings": stub.url}, **sections)))

    return start


@pytest.fixture
def probe(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to read the fence the gateways keep."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    yield client
    client.close()


def signed(url: str) -> httpx.Request:
    """One signed GET that can be sent (and replayed) any number of times, to any gateway."""
    return next(signer().auth_flow(httpx.Request("GET", url)))


def created_of(request: httpx.Request) -> int:
    return int(signature_param(request, "created"))


def fence_of(client: redis.Redis) -> float:
    value = client.get(RedisNonceStore.FENCE_KEY)
    assert isinstance(value, bytes), "the fence key exists"
    seconds, owner = value.decode().split()
    run_id, replid = owner.split(":")
    assert run_id == client.info("server")["run_id"], "stamped by this Redis process"
    assert replid == client.info("replication")["master_replid"], "in its current history"
    return float(seconds)


def wait_for_second_after(fence: float) -> None:
    """Let the wall clock pass the fence's second, so ``created = int(now)`` clears it."""
    time.sleep(max(0.0, math.ceil(fence) - time.time()))


def counts(gateway: LiveServer) -> tuple[float, float]:
    """(signature failures for the reset reason, Redis errors of the nonce store) so far."""
    text = httpx.get(gateway.url + "/metrics").text
    return (
        metric_value(text, "gateway_signature_failures_total", reason=RESET),
        metric_value(text, "gateway_redis_errors_total", component="nonces"),
    )


def authn_denials(logs: list[dict[str, Any]]) -> list[str]:
    return [line["reason"] for line in logs if line.get("stage") == "authn"]


def test_replay_after_a_redis_restart_is_refused_on_every_gateway(
    start_gateway: GatewayStarter,
    redis_server: RedisServer,
    probe: redis.Redis,
    captured_logs: list[dict[str, Any]],
) -> None:
    """Redis stopped mid-run: 503 for new nonces; back (empty): no replay, fresh ones pass."""
    one, two = (start_gateway(redis={"url": redis_server.url}) for _ in range(2))
    captured = signed(one.url + FINDINGS)
    assert send(captured).status_code == 200
    assert send(resent_to(two, captured)).status_code == 401, "shared store: replay refused"
    counted_before = counts(one)

    redis_server.stop()
    for request in (signed(one.url + FINDINGS), resent_to(one, captured)):
        down = send(request)
        assert down.status_code == 503
        assert down.json()["type"] == "urn:authz-gateway:problem:replay_check_unavailable"
    redis_server.start()

    # Redis came back empty: without the fence both replays would be accepted.
    for gateway in (one, two):
        replay = send(resent_to(gateway, captured))
        assert replay.status_code == 401, replay.text
        assert replay.json()["title"] == "Authentication required"
        assert RESET not in replay.text, "the client never learns the reason"
    fence = fence_of(probe)
    assert created_of(captured) < fence
    assert probe.ttl(RedisNonceStore.FENCE_KEY) == -1
    assert authn_denials(list(captured_logs))[-2:] == [RESET, RESET]
    # Set twice: by the first gateway's start on the empty Redis, then after the restart.
    assert [line["event"] for line in captured_logs].count("nonce_fence_set") == 2
    counted = counts(one)
    assert counted[0] - counted_before[0] == 2, "both replays counted as replay_window_reset"
    assert counted[1] - counted_before[1] == 2, "both outage claims counted as Redis errors"

    wait_for_second_after(fence)
    for gateway in (one, two):
        assert send(signed(gateway.url + FINDINGS)).status_code == 200
    assert fence_of(probe) == fence, "the fence moves only when Redis loses it again"


def test_first_use_of_an_empty_redis_refuses_only_what_was_signed_before_it(
    start_gateway: GatewayStarter,
    redis_server: RedisServer,
    probe: redis.Redis,
    captured_logs: list[dict[str, Any]],
) -> None:
    """The first gateway to start sets the fence; it serves once a fresh signature clears it."""
    early = signed("http://127.0.0.1" + FINDINGS)
    assert probe.exists(RedisNonceStore.FENCE_KEY) == 0
    gateway = start_gateway(redis={"url": redis_server.url})
    fence = fence_of(probe)
    assert created_of(early) < fence <= time.time()
    assert send(signed(gateway.url + FINDINGS)).status_code == 200, "no wait after start-up"
    assert send(resent_to(gateway, early)).status_code == 401
    assert authn_denials(list(captured_logs)) == [RESET]
    later = start_gateway(redis={"url": redis_server.url})
    assert fence_of(probe) == fence, "a second gateway adopts the fence"
    assert send(signed(later.url + FINDINGS)).status_code == 200


def test_memory_store_refuses_what_a_previous_process_may_have_accepted(
    start_gateway: GatewayStarter, captured_logs: list[dict[str, Any]]
) -> None:
    """A gateway restart (a new in-memory store) refuses signatures made before it started."""
    before = start_gateway()
    captured = signed(before.url + FINDINGS)
    assert send(captured).status_code == 200
    assert send(captured).status_code == 401
    restarted = start_gateway()
    assert send(resent_to(restarted, captured)).status_code == 401
    assert send(signed(restarted.url + FINDINGS)).status_code == 200
    assert authn_denials(list(captured_logs)) == ["replayed", RESET]


def _synced_from(replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return bool(info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == 0)


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within 20 s: {what}")
        time.sleep(0.05)


def test_a_failback_to_a_node_resynced_from_another_refuses_what_it_claimed_meanwhile(
    tmp_path: Path,
) -> None:
    """An audit's failback: P claims X while R (promoted, holding P's replicated fence)
    never saw it; P is resynced from R and promoted back. Its run_id is the same and its
    fence is its own, but X's nonce is gone: the fence must reset (it kept, and X passed)."""
    binary = redis_binary()
    # A full resync writes an RDB file in the server's directory: the test's, never the
    # working one, where every later redis-server would load it at start.
    primary, other = (
        RedisServer(binary, ["--repl-diskless-sync-delay", "0", "--dir", str(tmp_path)]).start()
        for _ in range(2)
    )
    p = redis.Redis(port=primary.port, socket_timeout=5)
    r = redis.Redis(port=other.port, socket_timeout=5)

    async def claim(nonce: str, created: int) -> Claim:
        store = RedisNonceStore(create_redis(RedisSettings(url=primary.url)))
        try:
            return await store.claim("k1", nonce, created, 300)
        finally:
            await store.aclose()

    try:
        r.replicaof("127.0.0.1", primary.port)
        _wait(lambda: _synced_from(r), "R follows P")
        seconds, _ = p.time()
        assert asyncio.run(claim("n0", seconds + 1)) is Claim.CLAIMED  # P's own fence
        _wait(lambda: r.get(RedisNonceStore.FENCE_KEY) is not None, "the fence reaches R")
        r.replicaof("no", "one")  # R promoted; P still takes claims (no min-replicas)
        created = int(float(p.get(RedisNonceStore.FENCE_KEY).split()[0])) + 1
        assert asyncio.run(claim("x", created)) is Claim.CLAIMED
        p.replicaof("127.0.0.1", other.port)  # P resynced from R: X's nonce is gone
        _wait(lambda: _synced_from(p) and not p.exists(RedisNonceStore.key("k1", "x")), "P = R")
        p.replicaof("no", "one")  # the failback
        _wait(lambda: p.time()[0] > created, "a second past X's created")
        assert asyncio.run(claim("x", created)) is Claim.BEFORE_FENCE
    finally:
        p.close()
        r.close()
        primary.stop()
        other.stop()
