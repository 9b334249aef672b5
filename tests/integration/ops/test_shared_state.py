"""Two gateways sharing one real Redis: one rate limit, outages handled, recovery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import signer
from tests.integration.ops.conftest import FINDINGS, GatewayFactory, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

ALICE_3_PER_MINUTE = {"subject": {"limit": 3, "window_seconds": 60}}


def _pair(factory: GatewayFactory, redis_url: str, **rate_limit: object) -> tuple[str, str]:
    sections = {"redis": {"url": redis_url}, "ops": {"rate_limit": rate_limit}}
    return factory(**sections).url, factory(**sections).url


def test_a_limit_spent_on_one_gateway_is_spent_on_both(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
) -> None:
    one, two = _pair(gateway_factory, redis_server.url, **ALICE_3_PER_MINUTE)
    with signed_client(one, "alice") as a, signed_client(two, "alice") as b:
        answers = [a.get(FINDINGS), b.get(FINDINGS), a.get(FINDINGS)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert [r.headers["RateLimit"] for r in answers] == [
            '"subject";r=2;t=20',
            '"subject";r=1;t=40',
            '"subject";r=0;t=60',
        ]
        assert answers[0].headers["RateLimit-Policy"] == '"subject";q=3;w=60'
        refused = b.get(FINDINGS)
        also_refused = a.get(FINDINGS)
    for response in (refused, also_refused):
        assert response.status_code == 429
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "urn:authz-gateway:problem:rate_limited"
        assert response.json()["corr_id"] == response.headers["x-request-id"]
        assert 1 <= int(response.headers["Retry-After"]) <= 20
        assert response.headers["RateLimit"].startswith('"subject";r=0;')


def test_engagement_limit_is_shared_by_subjects_and_gateways(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
) -> None:
    rule = {"engagement": {"limit": 2, "window_seconds": 60}}
    one, two = _pair(gateway_factory, redis_server.url, **rule)
    with signed_client(one, "alice") as alice, signed_client(two, "bob") as bob:
        assert alice.get(FINDINGS).status_code == 200
        assert bob.get(FINDINGS).status_code == 200
        refused = bob.get(FINDINGS)
        other_engagement = alice.get("/v1/engagements/globex-cloud/findings")
    assert refused.status_code == 429
    assert refused.headers["RateLimit-Policy"] == '"engagement";q=2;w=60'
    assert other_engagement.status_code == 200


def test_a_caller_the_policy_refuses_spends_no_engagement_quota(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
) -> None:
    """erin is staffed on initech only: her requests to acme are refused (403) and,
    on either gateway, leave acme's shared quota whole for bob and alice (decision
    0013). Before, each of them spent a unit: bob and alice got 429."""
    rule = {"engagement": {"limit": 2, "window_seconds": 60}}
    one, two = _pair(gateway_factory, redis_server.url, **rule)
    with signed_client(one, "erin") as erin_one, signed_client(two, "erin") as erin_two:
        refused = [client.get(FINDINGS).status_code for client in (erin_one, erin_two) * 3]
    assert refused == [403] * 6
    with signed_client(one, "bob") as bob, signed_client(two, "alice") as alice:
        first, second = bob.get(FINDINGS), alice.get(FINDINGS)
        third = bob.get(FINDINGS)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["RateLimit"] == '"engagement";r=1;t=30'
    assert third.status_code == 429  # the two units were the staff's, and are now spent
    assert third.headers["RateLimit-Policy"] == '"engagement";q=2;w=60'


def test_a_caller_over_its_own_limit_is_refused_before_the_policy(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
    captured_logs: list[dict[str, Any]],
) -> None:
    """The subject's quota is still spent before the policy: erin's third request is a
    429 with no decision line, and her refused requests spent her own quota."""
    rule = {"subject": {"limit": 2, "window_seconds": 60}}
    one, two = _pair(gateway_factory, redis_server.url, **rule)
    with signed_client(one, "erin") as a, signed_client(two, "erin") as b:
        answers = [a.get(FINDINGS), b.get(FINDINGS), a.get(FINDINGS)]
    assert [r.status_code for r in answers] == [403, 403, 429]
    decided = [e for e in captured_logs if e.get("stage") == "authz" and e.get("subject") == "erin"]
    assert [e["decision"] for e in decided] == ["deny", "deny"]


def test_redis_outage_fails_closed_for_nonces_and_limits_resume_by_themselves(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
    captured_logs: list[dict[str, Any]],
) -> None:
    """With Redis gone the replay check cannot answer: 503 whatever the rate-limit mode.

    ``on_redis_error: open`` only relaxes the rate limiter; the nonce claim that runs
    before it always fails closed, so no request is accepted unchecked.
    """
    rule = {"subject": {"limit": 2, "window_seconds": 60}, "on_redis_error": "open"}
    one, two = _pair(gateway_factory, redis_server.url, **rule)
    with signed_client(one, "alice") as a, signed_client(two, "alice") as b:
        assert [a.get(FINDINGS).status_code, b.get(FINDINGS).status_code] == [200, 200]
        assert a.get(FINDINGS).status_code == 429
        redis_server.stop()
        during = [a.get(FINDINGS), b.get(FINDINGS), a.get(FINDINGS)]
        assert [r.status_code for r in during] == [503, 503, 503]
        assert {r.json()["type"] for r in during} == {
            "urn:authz-gateway:problem:replay_check_unavailable"
        }
        assert httpx.get(one + "/readyz").status_code == 503
        redis_server.start()
        wait_until(lambda: "RateLimit" in a.get(FINDINGS).headers)
        # Back on Redis (emptied by its restart): the shared limit holds again.
        wait_until(lambda: b.get(FINDINGS).status_code == 429)
        assert a.get(FINDINGS).status_code == 429
    assert httpx.get(two + "/readyz").status_code == 200
    unavailable = [e for e in captured_logs if e.get("reason") == "replay_check_unavailable"]
    assert len(unavailable) >= 3


def test_redis_outage_fails_closed_when_configured(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
) -> None:
    rule = {"subject": {"limit": 100, "window_seconds": 60}, "on_redis_error": "closed"}
    one, two = _pair(gateway_factory, redis_server.url, **rule)
    with signed_client(one, "alice") as a, signed_client(two, "alice") as b:
        assert a.get(FINDINGS).status_code == 200
        redis_server.stop()
        for response in (a.get(FINDINGS), b.get(FINDINGS)):
            assert response.status_code == 503
            # The nonce claim runs first and fails closed before the rate limiter does.
            assert response.json()["type"] == "urn:authz-gateway:problem:replay_check_unavailable"
            assert response.headers["Retry-After"] == "1"
        redis_server.start()
        wait_until(lambda: a.get(FINDINGS).status_code == 200)
        wait_until(lambda: b.get(FINDINGS).status_code == 200)


def test_readiness_reports_redis(
    gateway_factory: GatewayFactory, redis_server: RedisServer
) -> None:
    url = gateway_factory(redis={"url": redis_server.url}).url
    checks = {c["name"]: c for c in httpx.get(url + "/readyz").json()["checks"]}
    assert checks["redis"] == {"name": "redis", "ok": True, "detail": "reachable"}
    redis_server.stop()
    response = httpx.get(url + "/readyz")
    assert response.status_code == 503
    assert {c["name"]: c["ok"] for c in response.json()["checks"]}["redis"] is False
    redis_server.start()
    wait_until(lambda: httpx.get(url + "/readyz").status_code == 200)


def _signed_twice(url: str) -> list[tuple[str, str]]:
    """One GET carrying two valid signatures (sig1, sig2: two nonces), as in a key rotation."""
    one, two = (next(signer("alice").auth_flow(httpx.Request("GET", url))) for _ in range(2))
    fields = [(k, v) for k, v in one.headers.items() if k not in ("signature", "signature-input")]
    renamed = {
        k: two.headers[k].replace("sig1=", "sig2=", 1) for k in ("signature", "signature-input")
    }
    both = {k: f"{one.headers[k]}, {renamed[k]}" for k in ("signature-input", "signature")}
    return [*fields, *both.items()]


def _only(fields: list[tuple[str, str]], label: str) -> list[tuple[str, str]]:
    """The request with one of its signatures left out (``label``'s kept)."""
    kept = []
    for name, value in fields:
        if name in ("signature", "signature-input"):
            value = next(m for m in value.split(", ") if m.startswith(f"{label}="))
        kept.append((name, value))
    return kept


def _reordered(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (n, ", ".join(reversed(v.split(", "))) if n in ("signature", "signature-input") else v)
        for n, v in fields
    ]


def test_no_signature_of_an_accepted_request_can_be_replayed_on_either_gateway(
    gateway_factory: GatewayFactory, redis_server: RedisServer
) -> None:
    """Each signature's nonce is used up with the request: sent alone, or reordered, to
    the same or the other gateway, it is a replay (a real finding: sig2 alone passed)."""
    one, two = _pair(gateway_factory, redis_server.url)
    fields = _signed_twice(one + FINDINGS)
    with httpx.Client(timeout=10) as client:
        assert client.get(one + FINDINGS, headers=fields).status_code == 200
        for url, variant in [
            (two + FINDINGS, _only(fields, "sig2")),
            (one + FINDINGS, _only(fields, "sig2")),
            (one + FINDINGS, _reordered(fields)),
            (two + FINDINGS, _only(fields, "sig1")),
        ]:
            refused = client.get(url, headers=variant)
            assert refused.status_code == 401, variant
            assert refused.json()["type"] == "urn:authz-gateway:problem:unauthenticated"
