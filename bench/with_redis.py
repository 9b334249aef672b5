"""Run a command beside a private Redis deployment: the bench rows that share state.

``python -m bench.with_redis [--topology standalone|cluster|sentinel] CMD ...``
starts, on free loopback ports, one redis-server (standalone, the default), a
Redis Cluster of three primaries and three replicas, or one primary, one replica
and three sentinels; runs CMD with the ``GATEWAY_REDIS__*`` settings that reach
it; and stops both together. The Redis processes are this process's children, so
the row's CPU figures include Redis's own, replication and sentinels included:
the honest cost of shared state. (``gateway serve --workers N`` refuses to start
without Redis: in-memory nonces are per process.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from tests.redis_server import RedisServer
from tests.redis_topologies import SERVICE_NAME, Cluster, SentinelDeployment

TOPOLOGIES = ("standalone", "cluster", "sentinel")
BINARIES = {
    "standalone": ("redis-server",),
    "cluster": ("redis-server", "redis-cli"),
    "sentinel": ("redis-server", "redis-sentinel"),
}


def missing(topology: str) -> list[str]:
    """The Debian programs ``topology`` needs that are not installed."""
    return [name for name in BINARIES[topology] if shutil.which(name) is None]


@contextlib.contextmanager
def deployment(topology: str) -> Iterator[dict[str, str]]:
    """Start ``topology``; the environment that points a gateway at it."""
    with tempfile.TemporaryDirectory(prefix=f"bench-redis-{topology}-") as tmp:
        if topology == "cluster":
            cluster = Cluster(Path(tmp)).start()
            try:
                yield {"GATEWAY_REDIS__MODE": "cluster", "GATEWAY_REDIS__URL": cluster.url}
            finally:
                cluster.stop()
        elif topology == "sentinel":
            sentinel = SentinelDeployment(Path(tmp)).start()
            try:
                yield {
                    "GATEWAY_REDIS__MODE": "sentinel",
                    "GATEWAY_REDIS__NODES": json.dumps(sentinel.sentinel_nodes),
                    "GATEWAY_REDIS__SERVICE_NAME": SERVICE_NAME,
                }
            finally:
                sentinel.stop()
        else:
            server = RedisServer(shutil.which("redis-server") or "redis-server").start()
            try:
                yield {"GATEWAY_REDIS__URL": server.url}
            finally:
                server.stop()


def main(argv: list[str]) -> int:
    topology = "standalone"
    if argv[:1] == ["--topology"] and len(argv) > 1:
        topology, argv = argv[1], argv[2:]
    if topology not in TOPOLOGIES or missing(topology) or not argv:
        needs = ", ".join(BINARIES.get(topology, TOPOLOGIES))
        print(f"bench.with_redis: needs {needs} and a command", file=sys.stderr)
        return 2
    with deployment(topology) as env:
        child = subprocess.Popen(argv, env={**os.environ, **env})  # the row's own argv

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
