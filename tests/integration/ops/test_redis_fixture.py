"""The test Redis servers keep their files to themselves."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer, redis_binary

pytestmark = pytest.mark.integration


def test_a_test_server_works_in_a_private_directory_removed_with_it() -> None:
    server = RedisServer(redis_binary()).start()
    workdir = Path(server.workdir)
    try:
        client = redis.Redis(port=server.port)
        try:
            served_from = Path(client.config_get("dir")["dir"]).resolve()
            client.save()  # what a replication's full sync writes
        finally:
            client.close()
        assert served_from == workdir.resolve()
        assert served_from != Path(os.getcwd()).resolve()
        assert (workdir / "dump.rdb").exists()
        assert not Path("dump.rdb").exists()
    finally:
        server.stop()
    del server
    gc.collect()
    assert not workdir.exists()


def test_a_dir_given_by_the_test_wins(tmp_path: Path) -> None:
    server = RedisServer(redis_binary(), ["--dir", str(tmp_path)]).start()
    try:
        client = redis.Redis(port=server.port)
        try:
            assert Path(client.config_get("dir")["dir"]).resolve() == tmp_path.resolve()
        finally:
            client.close()
    finally:
        server.stop()
