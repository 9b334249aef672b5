"""The policy from a Kubernetes ConfigMap volume: the kubelet's atomic swap is followed.

A ConfigMap volume is not a plain directory. The kubelet writes each version into
a fresh hidden directory (``..2026_01_31_10_00_00.123``), points the symlink
``..data`` at it, and exposes every key as a symlink through ``..data``
(``policy.csv -> ..data/policy.csv``, ``tests -> ..data/tests``). An update writes
the next version beside the old one, makes ``..data_tmp`` point at it and renames
``..data_tmp`` over ``..data`` (one atomic ``rename``), then deletes the old
directory: no file the gateway reads is ever rewritten in place, and the paths it
watches never change. ``ConfigMapVolume`` does exactly that (the steps of the
kubelet's ``AtomicWriter``), and a real gateway must follow it by itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import POLICY_DIR, LiveServer, make_settings, signer
from tests.integration.ops.conftest import FINDINGS, wait_until

pytestmark = pytest.mark.integration

DATA = "..data"


class ConfigMapVolume:
    """A directory updated the way the kubelet updates a mounted ConfigMap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()

    def publish(self, files: dict[str, str]) -> None:
        """Write ``files`` (relative paths) as the volume's next version, atomically."""
        version = Path(
            tempfile.mkdtemp(dir=self.root, prefix=time.strftime("..%Y_%m_%d_%H_%M_%S."))
        )
        for name, text in files.items():
            target = version / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            version.chmod(0o755)
        old = self.root / DATA
        previous = old.resolve() if old.is_symlink() else None
        staging = self.root / "..data_tmp"
        staging.symlink_to(version.name)
        os.rename(staging, old)  # the one atomic step: readers see old or new, never a mix
        for top in {Path(name).parts[0] for name in files}:
            visible = self.root / top
            if not visible.is_symlink():
                visible.symlink_to(f"{DATA}/{top}")
        if previous is not None:
            shutil.rmtree(previous)


def policy_files(policy_csv: str) -> dict[str, str]:
    files = {"model.conf": (POLICY_DIR / "model.conf").read_text(), "policy.csv": policy_csv}
    for suite in (POLICY_DIR / "tests").glob("*.yaml"):
        files[f"tests/{suite.name}"] = suite.read_text()
    return files


def readiness_policy(gateway: LiveServer) -> str:
    checks = httpx.get(gateway.url + "/readyz").json()["checks"]
    return str({c["name"]: c["detail"] for c in checks}["policy"])


def test_a_config_map_update_is_reloaded_through_the_gate(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    tmp_path: Path,
    captured_logs: list[dict[str, Any]],
) -> None:
    volume = ConfigMapVolume(tmp_path / "policy")
    base = (POLICY_DIR / "policy.csv").read_text()
    volume.publish(policy_files(base))
    assert (volume.root / "policy.csv").is_symlink()
    assert (volume.root / "tests").is_symlink()
    stub = live_server(create_stub_app("findings"))
    settings = make_settings(
        {"findings": stub.url}, policy={"dir": str(volume.root), "watch_interval": 0.1}
    )
    gateway = live_server(create_app(settings))
    first = readiness_policy(gateway)
    with httpx.Client(base_url=gateway.url, auth=signer("zack"), timeout=10) as zack:
        assert zack.get(FINDINGS).status_code == 403

        volume.publish(policy_files(base + "g, zack, analyst, acme-2026\n"))
        wait_until(lambda: readiness_policy(gateway) != first)
        assert zack.get(FINDINGS).status_code == 200
        granted = readiness_policy(gateway)

        # A broken version (a grouping line without its engagement) is swapped in the
        # same way: the gate refuses it and the last good policy stays in force.
        volume.publish(policy_files(base + "g, zack, analyst\n"))
        wait_until(lambda: any(e["event"] == "policy_reload_rejected" for e in captured_logs))
        assert zack.get(FINDINGS).status_code == 200
        kept = readiness_policy(gateway)
        assert kept.startswith(granted)
        assert "last reload rejected, last good policy kept" in kept
    reloads = [e for e in captured_logs if e["event"] == "policy_reloaded"]
    assert [e["reason"] for e in reloads if e["outcome"] == "swapped"] == ["file_change"]
