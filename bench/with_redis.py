"""Run a command beside a private redis-server: the bench rows that share state.

``python -m bench.with_redis CMD ...`` starts redis-server on a free loopback port,
runs CMD with ``GATEWAY_REDIS__URL`` pointing at it, and stops both together. The
row's CPU figures then include Redis's own, which is the honest cost of shared state.
(``gateway serve --workers N`` refuses to start without Redis: in-memory nonces are
per process.)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import FrameType


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_redis(port: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main(argv: list[str]) -> int:
    binary = shutil.which("redis-server")
    if binary is None or not argv:
        print("bench.with_redis: needs redis-server and a command", file=sys.stderr)
        return 2
    port = _free_port()
    redis = subprocess.Popen(  # fixed argv: a local redis-server on loopback
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for_redis(port)
        env = {**os.environ, "GATEWAY_REDIS__URL": f"redis://127.0.0.1:{port}/0"}
        child = subprocess.Popen(argv, env=env)

        def forward(signum: int, _frame: FrameType | None) -> None:
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return child.wait()
    finally:
        redis.terminate()
        redis.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
