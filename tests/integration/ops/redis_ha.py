"""What every ``redis.mode`` must guarantee, as scenarios over two real gateways.

The cluster and sentinel test modules run the same scenarios on their own
engines: a replay is refused on the other gateway, rate limits are shared (and
a refused request spends neither bucket), a policy reload reaches the other
gateway, and a primary's failover gives 503s, never an accepted replay, then
recovers by itself while everything signed before it stays refused.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.authn.nonces import NonceKeys
from app.authz.closed import ClosedFact
from app.authz.closed_redis import RedisEngagementState
from app.core.config import RedisSettings
from app.core.engagement_settings import EngagementStateSettings
from app.core.errors import Conflict
from app.core.redis import create_redis
from app.workflows.idempotency import Codec, RedisIdempotencyStore
from tests.conftest import (
    POLICY_DIR,
    TEST_KEY_ID,
    LiveServer,
    resent_to,
    send,
    signature_param,
    signer,
)
from tests.integration.ops.conftest import FINDINGS, GatewayFactory, wait_until

RESET = "replay_window_reset"
RATE_LIMITS = {
    "subject": {"limit": 3, "window_seconds": 60},
    "engagement": {"limit": 5, "window_seconds": 60},
}


@dataclass
class Pair:
    """Two gateways on one shared Redis (of any mode), and the policy files they read."""

    one: LiveServer
    two: LiveServer
    policies: Path


def start_pair(factory: GatewayFactory, redis: dict[str, Any], tmp_path: Path) -> Pair:
    """Two gateways with rate limits on; only pub/sub can carry a reload between them."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    sections: dict[str, Any] = {
        # 2 s, not the 0.5 s default: on a machine shared by many test runs a healthy
        # Redis can be slower than 0.5 s to answer, and this is not what is tested here.
        "redis": {"socket_timeout": 2.0, **redis},
        "policy": {"dir": str(policies), "watch_interval": 0},
        "ops": {
            "rate_limit": {**RATE_LIMITS, "on_redis_error": "closed"},
            "reload_notices": {"check_interval_seconds": 3600},
        },
    }
    # The stdlib event loop, not uvloop: after a primary is killed, uvloop's loop.close()
    # could block for minutes on a connection left behind (seen in about one run in six
    # under load; never with this loop), and the stuck server thread then ran on beside
    # later tests. Production runs uvloop; what these tests check is Redis semantics.
    return Pair(factory(loop="asyncio", **sections), factory(loop="asyncio", **sections), policies)


def signed(gateway: LiveServer, path: str = FINDINGS, subject: str = "alice") -> httpx.Request:
    """One signed GET that can be sent (and replayed) to any gateway: the port is not signed."""
    return next(signer(subject).auth_flow(httpx.Request("GET", gateway.url + path)))


def nonce_of(request: httpx.Request) -> str:
    return signature_param(request, "nonce")


def fence_key_of(request: httpx.Request, grouped: bool) -> str:
    """The fence that vouches for the request's nonce (a cluster: its group's)."""
    fence, _ = NonceKeys(grouped).claim_keys(TEST_KEY_ID, nonce_of(request))
    return fence


def replay_is_refused_on_the_other_gateway(pair: Pair) -> None:
    captured = signed(pair.one)
    assert send(captured).status_code == 200
    replay = send(resent_to(pair.two, captured))
    assert replay.status_code == 401, replay.text


def rate_limits_are_shared(pair: Pair, engagement: str) -> None:
    """Subject and engagement buckets spent across gateways (decision 0013): the
    engagement's only by requests the policy allowed (dana and rita audit every
    engagement; rl-first is staffed on none)."""
    path = f"/v1/engagements/{engagement}/findings"

    def statuses(subject: str, gateways: tuple[LiveServer, ...]) -> list[int]:
        return [send(signed(gw, path, subject)).status_code for gw in gateways]

    # Denied: spends rl-first's own quota only, never the engagement's.
    assert statuses("rl-first", (pair.one, pair.two)) == [403, 403]
    # dana: three of her 3 per minute are allowed (the service may fail), then 429,
    # refused before the policy: it spent nothing.
    dana = statuses("dana", (pair.one, pair.two) * 2)
    assert [s == 429 for s in dana] == [False, False, False, True], dana
    # The engagement's 5 per minute: dana spent 3, so rita gets 2, then 429.
    rita = statuses("rita", (pair.two, pair.one))
    assert 429 not in rita, rita
    refused = send(signed(pair.two, path, "rita"))
    assert refused.status_code == 429
    assert refused.headers["RateLimit"].startswith('"engagement";r=0;')


def policy_in_force(gateway: LiveServer) -> str:
    """The ``/readyz`` detail of the policy check (it names the revision in force)."""
    checks = httpx.get(gateway.url + "/readyz").json()["checks"]
    return str({check["name"]: check["detail"] for check in checks}["policy"])


def reload_on_one_reaches_the_other(pair: Pair) -> None:
    """Only a pub/sub notice can carry it: file watching off, periodic checks an hour apart."""
    with httpx.Client(auth=signer("zack"), timeout=10) as zack:
        assert zack.get(pair.two.url + FINDINGS).status_code == 403
        with (pair.policies / "policy.csv").open("a") as csv:
            csv.write("\ng, zack, analyst, acme-2026\n")
        with httpx.Client(auth=signer("sam"), timeout=10) as admin:
            reloaded = admin.post(pair.one.url + "/admin/policy/reload")
        assert reloaded.status_code == 200
        revision = reloaded.json()["revision"]
        # Polled on readiness, not on requests: each request would spend zack's rate limit.
        wait_until(lambda: revision in policy_in_force(pair.two))
        assert zack.get(pair.two.url + FINDINGS).status_code == 200


def idempotency_claims_are_exclusive(redis: dict[str, Any]) -> None:
    """Two gateways' stores (two pools): a running key is a conflict, then replayed, once."""
    text = Codec(str.encode, bytes.decode)
    calls: list[str] = []

    async def scenario() -> None:
        clients = [create_redis(RedisSettings(socket_timeout=2.0, **redis)) for _ in range(2)]
        one, two = (RedisIdempotencyStore(client, 60, 30) for client in clients)
        release, running = asyncio.Event(), asyncio.Event()

        async def slow_close() -> str:
            calls.append("close")
            running.set()
            await release.wait()
            return "closed"

        try:
            first = asyncio.create_task(one.run(("close", "bob", "k-ha"), "fp", slow_close, text))
            await running.wait()
            with pytest.raises(Conflict):
                await two.run(("close", "bob", "k-ha"), "fp", slow_close, text)
            release.set()
            assert await first == ("closed", False)
            assert await two.run(("close", "bob", "k-ha"), "fp", slow_close, text) == (
                "closed",
                True,
            )
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(scenario())
    assert calls == ["close"]


def closed_engagements_are_shared(redis: dict[str, Any]) -> None:
    """A close on one process is pushed to the other (no periodic check in time), then undone."""
    settings = EngagementStateSettings(check_interval_seconds=60, startup_timeout_seconds=5)
    fact = ClosedFact("ha-2026", "close_saga", "corr-ha", 1_800_000_000.0, "bob")

    async def seen_by(state: RedisEngagementState, expected: ClosedFact | None) -> None:
        for _ in range(100_000):  # polled: the state has no event; bounded by wait_for
            if state.get("ha-2026") == expected:
                return
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        clients = [create_redis(RedisSettings(socket_timeout=2.0, **redis)) for _ in range(2)]
        one, two = (RedisEngagementState(client, settings) for client in clients)
        try:
            async with one.running(), two.running():
                await asyncio.wait_for(two.listening.wait(), 10)
                await one.close(fact)
                await asyncio.wait_for(seen_by(two, fact), 10)
                assert await two.reopen("ha-2026") == fact
                await asyncio.wait_for(seen_by(one, None), 10)
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(scenario())


@dataclass
class Failover:
    """How one deployment fails over, seen from a test."""

    on_failing_primary: Callable[[httpx.Request], bool]  # its nonce lives on the doomed primary
    cut_off: Callable[[], None]  # the replica stops receiving writes
    kill: Callable[[], None]  # SIGKILL the primary
    switched: Callable[[], bool]  # the replica serves as primary now
    holds: Callable[[str], bool]  # whether the serving primary holds this key


def nonce_key_of(request: httpx.Request, grouped: bool) -> str:
    _, key = NonceKeys(grouped).claim_keys(TEST_KEY_ID, nonce_of(request))
    return key


def failover_refuses_replays_then_recovers(
    pair: Pair, failover: Failover, grouped: bool, logs: list[dict[str, Any]]
) -> list[int]:
    """A replica behind by the latest claims is promoted: 503s, then nothing signed before passes.

    Returns what the gateways answered during the switch.
    """

    def fresh() -> httpx.Request:
        while not failover.on_failing_primary(request := signed(pair.one)):
            pass
        return request

    failover.cut_off()
    captured = fresh()  # accepted by the primary alone: the replica never hears of it
    assert send(captured).status_code == 200
    signed_before = fresh()  # never sent before the failover
    failover.kill()
    during = []
    while not failover.switched():
        for gateway in (pair.one, pair.two):
            replay = send(resent_to(gateway, captured))
            assert replay.status_code in (401, 503), f"replay answered {replay.status_code}"
            during += [replay.status_code, send(resent_to(gateway, fresh())).status_code]
    assert 503 in during, "the switch was seen: the failing primary could not answer"
    assert set(during) <= {200, 401, 503}, during
    # The gateways recover by themselves: a fresh signature passes again on both.
    for gateway in (pair.one, pair.two):
        wait_until(lambda gw=gateway: send(resent_to(gw, fresh())).status_code == 200, timeout=30)
    assert not failover.holds(nonce_key_of(captured, grouped)), "the claim was lost"
    for request, gateway in ((captured, pair.one), (signed_before, pair.two), (captured, pair.two)):
        refused = send(resent_to(gateway, request))
        assert refused.status_code == 401, refused.text
    reasons = [line["reason"] for line in logs if line.get("stage") == "authn"]
    assert reasons.count(RESET) >= 3, "the promoted primary's fence refused all three"
    return during
