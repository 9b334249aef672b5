"""``redis.mode``: settings, the client each mode opens, and key layouts that fit a cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from app.authn.nonces import NonceKeys, NonceStoreUnavailable, RedisNonceStore
from app.core.config import RedisSettings, load_settings
from app.core.errors import ConfigError, ServiceUnavailable
from app.core.ops_settings import RateLimitRule
from app.core.redis import beside, create_redis, is_cluster, retry_record_ms
from app.ops.ratelimit import Bucket, RedisRateLimiter
from app.workflows.engagement_lock import RedisEngagementLocks
from app.workflows.idempotency import Codec, IdempotencyStoreUnavailable, RedisIdempotencyStore

CLUSTER = RedisSettings(mode="cluster", url="redis://127.0.0.1:7000")
SENTINEL = RedisSettings(mode="sentinel", nodes=("127.0.0.1:26379", "127.0.0.1:26380"))
KEY_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def test_modes_and_their_nodes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REDIS__MODE", "sentinel")
    monkeypatch.setenv("GATEWAY_REDIS__NODES", '["10.0.0.1:26379", "sentinel-2:26379"]')
    monkeypatch.setenv("GATEWAY_REDIS__SERVICE_NAME", "gateway")
    monkeypatch.setenv("REDIS_URL", "redis://ignored-in-sentinel-mode:6379/0")
    redis = load_settings().redis
    assert (redis.mode, redis.service_name, redis.url) == ("sentinel", "gateway", None)
    assert redis.nodes == ("10.0.0.1:26379", "sentinel-2:26379")
    assert redis.enabled


def test_standalone_and_cluster_still_fall_back_to_redis_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://10.0.0.9:7000")
    assert RedisSettings().url == "redis://10.0.0.9:7000"
    assert RedisSettings(mode="cluster").enabled
    monkeypatch.delenv("REDIS_URL")
    assert not RedisSettings().enabled


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "sentinel"}, "sentinel mode needs nodes"),
        ({"mode": "sentinel", "nodes": ["a:1"], "url": "redis://a:1"}, "unset url"),
        ({"mode": "cluster", "url": None}, "cluster mode needs url"),
        ({"mode": "cluster", "url": "unix:///run/redis.sock"}, "cluster mode needs url"),
        ({"mode": "cluster", "url": "redis://a:7000/3"}, "only database 0"),
        ({"mode": "standalone", "url": "redis://a:1", "nodes": ["b:2"]}, "nodes is for"),
        ({"mode": "sentinel", "nodes": ["no-port"]}, "host:port"),
        ({"mode": "sentinel", "nodes": ["a:70000"]}, "host:port"),
        ({"mode": "replicated", "url": "redis://a:1"}, "redis.mode"),
        ({"url": "redis://:pw@a:1", "password_env": "PW"}, "not both"),
        ({"url": "redis://a:notaport/0"}, "not a valid Redis URL: Port could not be cast"),
        ({"url": "unix:///tmp/redis.sock?db=abc"}, "not a valid Redis URL"),
    ],
)
def test_a_mode_without_what_it_needs_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, object], message: str
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(redis=values)
    assert message in caught.value.detail
    assert "\n" not in caught.value.detail


def test_each_mode_opens_its_own_client_lazily() -> None:
    async def scenario() -> None:
        standalone = create_redis(RedisSettings(url="redis://127.0.0.1:1/0"))
        cluster = create_redis(CLUSTER)
        primary = create_redis(SENTINEL)
        assert type(standalone) is aioredis.Redis
        assert not is_cluster(standalone)
        assert is_cluster(cluster)
        assert isinstance(primary, aioredis.Redis)
        assert not is_cluster(primary)
        pool = primary.connection_pool
        assert pool.service_name == "mymaster"  # type: ignore[attr-defined]  # Sentinel's pool
        for client in (standalone, cluster, primary):
            await client.aclose()  # nothing was connected: closing needs no server

    asyncio.run(scenario())


def test_create_redis_refuses_settings_without_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="not configured"):
        create_redis(RedisSettings())


def test_the_password_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_REDIS_PASSWORD", "from-the-secret")
    for settings in (
        RedisSettings(url="redis://127.0.0.1:1/0", password_env="GW_REDIS_PASSWORD"),
        SENTINEL.model_copy(update={"password_env": "GW_REDIS_PASSWORD"}),
    ):
        client = create_redis(settings)
        assert client.connection_pool.connection_kwargs["password"] == "from-the-secret"
        asyncio.run(client.aclose())


def test_a_malformed_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(redis={"url": "redis://:s3cret-pw@a:s3cret-pw/0"})
    assert "s3cret-pw" not in caught.value.detail
    assert "not a valid Redis URL" in caught.value.detail


@pytest.mark.parametrize(
    ("url", "head", "message"),
    [
        # A generated password (base64) with a "/", "?" or "#" not percent-encoded: the
        # URL parser ends the authority there and reads the password's head as a port.
        ("redis://:k9Zq/Xw+Tail=@redis:6379/0", "k9Zq", "percent-encode any '/'"),
        ("redis://default:Ab12?Tail@redis:6379/0", "Ab12", "percent-encode any '/'"),
        ("rediss://:Hx7#Tail@redis:6379/0", "Hx7", "percent-encode any '/'"),
        ("redis://:Ab12/Tail@redis:notaport/0", "Ab12", "integer value as 'notaport'"),
    ],
)
def test_a_password_the_url_parser_cut_short_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, url: str, head: str, message: str
) -> None:
    """The parser's message quoted what it took for the port: the password's first part."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_settings(redis={"url": url})
    assert head not in caught.value.detail
    assert "Tail" not in caught.value.detail
    assert "not a valid Redis URL: " in caught.value.detail
    assert message in caught.value.detail


@pytest.mark.parametrize("empty", [None, ""])
def test_a_password_variable_that_is_not_set_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, empty: str | None
) -> None:
    """It was read as no password: the gateway started, and only failed to become ready."""
    if empty is None:
        monkeypatch.delenv("GW_REDIS_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("GW_REDIS_PASSWORD", empty)
    cases = [
        (RedisSettings(url="redis://127.0.0.1:1/0", password_env="GW_REDIS_PASSWORD"), "redis."),
        (SENTINEL.model_copy(update={"password_env": "GW_REDIS_PASSWORD"}), "redis."),
        (SENTINEL.model_copy(update={"sentinel_password_env": "GW_REDIS_PASSWORD"}), "sentinel_"),
    ]
    for settings, where in cases:
        with pytest.raises(ConfigError) as caught:
            create_redis(settings)
        assert caught.value.detail.endswith("environment variable GW_REDIS_PASSWORD is not set")
        assert where in caught.value.detail


def test_one_server_keeps_the_single_fence_layout() -> None:
    keys = NonceKeys(grouped=False)
    assert keys.fences() == ["gateway:nonce-fence"]
    assert keys.claim_keys("k1", "n") == ["gateway:nonce-fence", RedisNonceStore.key("k1", "n")]
    assert RedisNonceStore.key("k1", "n") == "gateway:nonce:2:k1:n"


@given(key_id=KEY_IDS, nonce=st.text(min_size=1, max_size=64))
def test_on_a_cluster_a_nonce_and_its_fence_share_a_slot(key_id: str, nonce: str) -> None:
    keys = NonceKeys(grouped=True)
    fence, nonce_key = keys.claim_keys(key_id, nonce)
    assert len(slots([fence, nonce_key])) == 1
    assert fence == keys.fences()[keys.group(key_id, nonce)]
    assert nonce_key.startswith(NonceKeys.PREFIX)
    assert not fence.startswith(NonceKeys.PREFIX)


def test_on_a_cluster_the_readiness_probe_shares_the_first_fence_s_slot() -> None:
    keys = NonceKeys(grouped=True)
    fence, probe = keys.probe_keys("0123abcd")
    assert len(slots([fence, probe])) == 1
    assert fence == keys.fences()[0]
    assert not probe.startswith(NonceKeys.PREFIX)
    assert NonceKeys(grouped=False).probe_keys("t") == [
        NonceKeys.FENCE_KEY,
        f"{NonceKeys.READY_KEY}:t",
    ]


def test_cluster_fence_groups_are_distinct_slots_spread_over_the_range() -> None:
    fences = NonceKeys(grouped=True).fences()
    assert len(fences) == NonceKeys.FENCE_GROUPS
    assert len(slots(fences)) == NonceKeys.FENCE_GROUPS
    # Three equal shards (redis-cli's layout): every one serves some of the groups.
    assert {slot * 3 // 16384 for slot in slots(fences)} == {0, 1, 2}


@given(subject=st.text(min_size=1, max_size=40), engagement=st.text(min_size=1, max_size=40))
def test_on_a_cluster_both_buckets_of_a_request_share_a_slot(subject: str, engagement: str) -> None:
    client = create_redis(CLUSTER)
    limiter = RedisRateLimiter(client, "gw:rl:", "closed")
    rule = RateLimitRule(limit=5)
    keys = [
        limiter.key(Bucket("subject", subject, rule)),
        limiter.key(Bucket("engagement", engagement, rule)),
    ]
    assert len(slots(keys)) == 1
    assert keys[0] == f"{{gw:rl:}}subject:{subject}"


def test_on_one_server_bucket_keys_are_unchanged() -> None:
    client = create_redis(RedisSettings(url="redis://127.0.0.1:1/0"))
    limiter = RedisRateLimiter(client, "gw:rl:", "open")
    assert limiter.key(Bucket("subject", "alice", RateLimitRule(limit=1))) == "gw:rl:subject:alice"


@given(key=st.text(alphabet="ab{}:", max_size=12), suffix=st.text(alphabet="ab{}:", max_size=6))
def test_a_key_beside_another_shares_its_slot_or_is_refused(key: str, suffix: str) -> None:
    """A script's record (``beside``) lands in its key's slot on a Cluster, tagged or not."""
    try:
        record = beside(key, suffix)
    except ValueError:
        assert "}" in key or not key, "only a key no wrapping keeps in its slot is refused"
        return
    assert len(slots([key, record])) == 1


def test_the_keys_of_the_release_and_settle_scripts_share_a_slot() -> None:
    """The lock and idempotency keys carry no hash tag: their records are wrapped in one."""
    lock = RedisEngagementLocks.key("acme-2026")
    claim = RedisIdempotencyStore.key(("alice", "close", "acme-2026", "key-0001"))
    assert "{" not in lock + claim
    assert len(slots([lock, RedisEngagementLocks.released_key(lock)])) == 1
    assert len(slots([claim, RedisIdempotencyStore.settled_key(claim)])) == 1


@given(socket_timeout=st.floats(min_value=0.001, max_value=3600))
def test_a_retry_record_outlives_the_retry(socket_timeout: float) -> None:
    """At least 10 s, and at least four socket timeouts (a read and a connect, twice)."""
    record = retry_record_ms(socket_timeout)
    assert record >= 10_000
    assert record >= 4 * socket_timeout * 1000


class RacingClient:
    """A client whose every call fails the way redis-py's cluster client does mid-refresh."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def register_script(self, _script: str) -> Callable[..., Awaitable[object]]:
        async def run(**_kwargs: object) -> object:
            raise self.error

        return run


RACES = [
    AttributeError("'NoneType' object has no attribute 'writelines'"),
    RuntimeError("closed"),
    # Not a RedisError: a cluster client that reached no node (it crashed start-up).
    RedisClusterException("Redis Cluster cannot be connected. Please provide at least one"),
]


@pytest.mark.parametrize("error", RACES, ids=["attribute-error", "runtime-error", "no-node"])
def test_a_cluster_client_race_fails_closed_not_500(error: Exception) -> None:
    """Each store turns the client's refresh race into its 503, never an unhandled error."""
    client: Any = RacingClient(error)

    async def scenario() -> None:
        with pytest.raises(NonceStoreUnavailable):
            await RedisNonceStore(client).claim("k1", "n", 1, 60)
        assert (await RedisNonceStore(client).check())[0] is False
        limiter = RedisRateLimiter(client, "gw:rl:", "closed")
        with pytest.raises(ServiceUnavailable):
            await limiter.acquire([Bucket("subject", "alice", RateLimitRule(limit=1))])
        idempotency = RedisIdempotencyStore(client, ttl_seconds=60, lease_seconds=10)
        codec = Codec[str](encode=str.encode, decode=bytes.decode)
        with pytest.raises(IdempotencyStoreUnavailable):
            await idempotency.run(("alice", "close"), "fp", _never_run, codec)

    asyncio.run(scenario())


async def _never_run() -> str:
    raise AssertionError("an operation ran without its claim")


def test_sentinels_that_fail_are_each_asked_once_per_attempt_not_retried_with_backoff() -> None:
    """Found by an audit: redis-py's default retries (3, backoff up to 10 s) applied to
    the sentinel connections, so three failing sentinels held each request for ~24 s
    before its 503. Counted, not timed: each sentinel (a real loopback server that
    closes every connection) is asked once per attempt, and the primary's client makes
    two attempts (one retry)."""

    async def scenario() -> list[int]:
        connections: list[int] = []

        async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer.get_extra_info("sockname")[1])
            writer.close()

        servers = [await asyncio.start_server(close_at_once, "127.0.0.1", 0) for _ in range(3)]
        ports = [server.sockets[0].getsockname()[1] for server in servers]
        client = create_redis(
            RedisSettings(mode="sentinel", nodes=tuple(f"127.0.0.1:{p}" for p in ports))
        )
        try:
            with pytest.raises(aioredis.ConnectionError):
                await client.ping()
        finally:
            await client.aclose()
            for server in servers:
                server.close()
                await server.wait_closed()
        return [connections.count(port) for port in ports]

    assert asyncio.run(scenario()) == [2, 2, 2]
