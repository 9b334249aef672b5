"""Redis Cluster and Sentinel deployments of real servers on 127.0.0.1, for tests.

Timeouts are tuned low (cluster-node-timeout, down-after-milliseconds) so a
failover completes in a few seconds; every wait polls the servers' own view of
their state (``CLUSTER INFO``, ``SENTINEL`` replies), never a fixed sleep.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.conftest import free_port
from tests.redis_server import RedisServer, redis_binary

Failed = pytest.fail.Exception  # what wait_for raises when a state is not reached

# Low enough for a failover in seconds, high enough that a node starved of CPU for a
# moment on a loaded 2-core machine is not failed over by mistake.
CLUSTER_NODE_TIMEOUT_MS = 2500
SENTINEL_DOWN_AFTER_MS = 2000
SENTINEL_FAILOVER_TIMEOUT_MS = 5000
SERVICE_NAME = "gw-primary"


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` (a bound)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def distinct_free_ports(count: int) -> list[int]:
    """``count`` ports free now and all different, from ``GATEWAY_TEST_PORTS`` when set
    (``free_port`` tries the ports it gave lately last, so a few calls give distinct ones)."""
    ports: list[int] = []
    for _ in range(8 * count):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"{count} distinct free ports not found")


def probe(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)


def cut_off(replica: RedisServer) -> None:
    """Make ``replica`` miss every write from now on: a replica that fell behind.

    Its link to the primary is dropped, and it cannot come back: it now offers a
    password the primary does not expect, so the replication handshake fails. A
    primary killed next leaves its latest writes on no other node.
    """
    client = probe(replica.port)
    client.config_set("masterauth", "not-the-primary-password")
    client.client_kill_filter(_type="master")
    wait_for("the replica's link is down", lambda: not _link_up(replica))


def _link_up(node: RedisServer) -> bool:
    info = probe(node.port).info("replication")
    return bool(info.get("master_link_status") == "up")


class Cluster:
    """Three primaries and three replicas (``redis-cli --cluster create --cluster-replicas 1``)."""

    def __init__(self, workdir: Path, size: int = 6) -> None:
        self.workdir = workdir
        self.size = size
        self.tries = 0
        self.nodes = self._nodes()

    def _nodes(self) -> list[RedisServer]:
        """Fresh nodes: their own directories, and ports (client and bus) distinct and free."""
        binary = redis_binary()
        ports = distinct_free_ports(2 * self.size)
        nodes = []
        for i in range(self.size):
            node_dir = self.workdir / f"try-{self.tries}" / f"node-{i}"
            node_dir.mkdir(parents=True)
            args = [
                "--cluster-enabled",
                "yes",
                # The bus port chosen free too: port + 10000 may be taken or past 65535.
                "--cluster-port",
                str(ports[self.size + i]),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(CLUSTER_NODE_TIMEOUT_MS),
                "--dir",
                str(node_dir),
                # A replica's first sync starts at once, not after the default 5 s.
                "--repl-diskless-sync-delay",
                "0",
            ]
            nodes.append(RedisServer(binary, args, port=ports[i]))
        return nodes

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, attempts: int = 3) -> Cluster:
        """Start the nodes and form the cluster; every node stopped if that fails.

        Twelve ports are chosen free before the nodes bind them: on a loaded machine one
        can be taken meanwhile, and that node never joins. A failed start is retried on
        fresh ports and directories, ``attempts`` times in all; the last failure is raised.
        """
        for tried in range(1, attempts + 1):
            try:
                return self._start_once()
            except (RuntimeError, subprocess.SubprocessError, redis.RedisError, Failed):
                self.stop()
                if tried == attempts:
                    raise
                self.tries += 1
                self.nodes = self._nodes()
        raise AssertionError("unreachable")

    def _start_once(self) -> Cluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"]
        subprocess.run(  # fixed argv: the Debian package's redis-cli on loopback
            [redis_binary("redis-cli"), *create],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for("cluster state ok on every node", lambda: self.healthy(self.nodes))
        # A replica that never synced may not take over: wait until every link is up.
        wait_for("every replica in sync", self._replicas_in_sync)
        return self

    def _replicas_in_sync(self) -> bool:
        roles = [probe(node.port).info("replication") for node in self.nodes]
        replicas = [info for info in roles if info["role"] == "slave"]
        in_sync = [info for info in replicas if info.get("master_link_status") == "up"]
        return len(in_sync) == len(self.nodes) // 2

    def healthy(self, nodes: list[RedisServer]) -> bool:
        """Every node in ``nodes`` sees all slots served (``cluster_state:ok``)."""
        for node in nodes:
            try:
                if probe(node.port).cluster("info")["cluster_state"] != "ok":
                    return False
            except redis.RedisError:
                return False
        return True

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None]

    def shard_of(self, key: str) -> tuple[range, RedisServer]:
        """The slot range holding ``key`` and its primary now, as a live node sees them."""
        slot = key_slot(key.encode())
        for start, end, primary, *_ in probe(self.live()[0].port).execute_command(
            "CLUSTER", "SLOTS"
        ):
            if start <= slot <= end:
                port = int(primary[1])
                return range(start, end + 1), next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"slot {slot} is not served")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.live():
            info = probe(node.port).info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary.port:
                return node
        raise AssertionError(f"no replica of {primary.port}")

    def took_over(self, key: str, old: RedisServer) -> bool:
        """Whether all slots are served again and ``key``'s by another node than ``old``."""
        return self.healthy(self.live()) and self.shard_of(key)[1] is not old

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelServer(RedisServer):
    """One redis-sentinel watching ``SERVICE_NAME``; its config file is its own to rewrite."""

    def __init__(self, workdir: Path, primary_port: int) -> None:
        super().__init__(redis_binary("redis-sentinel"))
        self.config = workdir / f"sentinel-{self.port}.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"dir {workdir}",
                    f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {primary_port} 2",
                    f"sentinel down-after-milliseconds {SERVICE_NAME} {SENTINEL_DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE_NAME} {SENTINEL_FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE_NAME} 1",
                    "",
                ]
            )
        )

    def argv(self) -> list[str]:
        return [self.binary, str(self.config), "--port", str(self.port), "--bind", "127.0.0.1"]


class SentinelDeployment:
    """One primary, one replica and three sentinels."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_binary()
        # A replica's first sync starts at once, not after the default 5 s; the RDB a
        # replica receives is written in the test's directory, not the working one.
        quick_sync = ["--repl-diskless-sync-delay", "0", "--dir", str(workdir)]
        self.primary = RedisServer(binary, quick_sync)
        self.replica = RedisServer(
            binary, ["--replicaof", "127.0.0.1", str(self.primary.port), *quick_sync]
        )
        self.sentinels = [SentinelServer(workdir, self.primary.port) for _ in range(3)]

    @property
    def sentinel_nodes(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self) -> SentinelDeployment:
        """Start every server; those already started are stopped if one fails."""
        try:
            self.primary.start()
            self.replica.start()
            wait_for("the replica is in sync", lambda: _link_up(self.replica))
            for sentinel in self.sentinels:
                sentinel.start()
            wait_for("every sentinel sees the replica and the others", self._sentinels_ready)
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = probe(sentinel.port).sentinel_master(SERVICE_NAME)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return True

    def primary_port(self) -> int:
        """The primary's port as the first live sentinel reports it."""
        _, port = probe(self.sentinels[0].port).sentinel_get_master_addr_by_name(SERVICE_NAME)
        return int(port)

    def promoted(self) -> bool:
        """Whether the sentinels name the replica the primary, and it acts as one."""
        return (
            self.primary_port() == self.replica.port
            and probe(self.replica.port).info("replication")["role"] == "master"
        )

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for a test module (tests use their own subjects and keys)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    deployment = SentinelDeployment(tmp_path_factory.mktemp("sentinel")).start()
    yield deployment
    deployment.stop()
