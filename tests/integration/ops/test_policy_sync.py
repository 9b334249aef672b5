"""A policy reload on one gateway is in force on another through Redis notices."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import POLICY_DIR
from tests.integration.ops.conftest import FINDINGS, GatewayFactory, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_reload_on_one_gateway_reaches_the_other_by_notice(
    gateway_factory: GatewayFactory,
    redis_server: RedisServer,
    signed_client: Callable[..., httpx.Client],
    captured_logs: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    sections: dict[str, Any] = {
        "redis": {"url": redis_server.url},
        # File watching and the periodic check are off: only the pub/sub notice can
        # carry the new revision to the second gateway.
        "policy": {"dir": str(policies), "watch_interval": 0},
        "ops": {"reload_notices": {"check_interval_seconds": 3600}},
    }
    one, two = gateway_factory(**sections), gateway_factory(**sections)
    with signed_client(one.url, "zack") as z1, signed_client(two.url, "zack") as z2:
        assert (z1.get(FINDINGS).status_code, z2.get(FINDINGS).status_code) == (403, 403)
        with (policies / "policy.csv").open("a") as csv:
            csv.write("\ng, zack, analyst, acme-2026\n")
        with signed_client(one.url, "sam") as admin:
            reloaded = admin.post("/admin/policy/reload")
        assert reloaded.status_code == 200
        new_revision = reloaded.json()["revision"]
        assert z1.get(FINDINGS).status_code == 200
        wait_until(lambda: z2.get(FINDINGS).status_code == 200)
    followed = [
        e
        for e in captured_logs
        if e["event"] == "policy_reloaded" and str(e.get("reason", "")).startswith("notice:")
    ]
    assert followed, "the second gateway reloaded because of the notice"
    assert followed[0]["policy_revision"] == new_revision
    for gateway in (one, two):
        status = httpx.get(gateway.url + "/readyz").json()
        assert new_revision in {c["name"]: c["detail"] for c in status["checks"]}["policy"]
