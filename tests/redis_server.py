"""Real redis-server processes on free loopback ports, for tests.

Under ``CI=true`` a missing ``redis-server`` is a failure, never a skip:
``make test`` installs it (scripts/ensure-packages.sh).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence

import pytest

from tests.conftest import free_port


def answers_ping(port: int) -> bool:
    """Whether a Redis server (or sentinel) on ``port`` answers PING now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server; ``stop()`` and ``start()`` again keep the same port.

    ``args``: more command-line options (replication, cluster mode). Its working
    directory (where a replication's ``dump.rdb`` lands) is a private temporary one
    unless ``args`` names a ``--dir``: in the current directory, a later "fresh"
    server started there would load an earlier test's keys.
    """

    def __init__(self, binary: str, args: Sequence[str] = (), port: int | None = None) -> None:
        self.binary = binary
        self.args = list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workdir = tempfile.mkdtemp(prefix="redis-test-")
        weakref.finalize(self, shutil.rmtree, self.workdir, True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--dir",
            self.workdir,
            *self.args,  # a later --dir wins
        ]

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if answers_ping(self.port):
                return self
            if self.proc.poll() is not None:  # exited: its port taken, a bad option
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary} did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to hand anything over."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


def redis_binary(name: str = "redis-server") -> str:
    binary = shutil.which(name)
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing; make test installs it (scripts/ensure-packages.sh)")
        pytest.skip(f"{name} is not installed (make test installs it)")
    return binary


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty redis-server for one test."""
    server = RedisServer(redis_binary()).start()
    yield server
    server.stop()
