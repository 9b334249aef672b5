"""Key rotation on a live gateway: the keys file is watched and reloaded without restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.authn.signer import HttpSignatureAuth
from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
OLD = ("proxy-old", "GATEWAY_TEST_ROTATION_OLD", "rotation-old-secret-0123456789abcdef-0001")
NEW = ("proxy-new", "GATEWAY_TEST_ROTATION_NEW", "rotation-new-secret-0123456789abcdef-0002")


def keys_yaml(*keys: tuple[str, str, str]) -> str:
    return "keys:\n" + "".join(f"  - id: {kid}\n    secret_env: {env}\n" for kid, env, _ in keys)


def status(gateway: LiveServer, key_id: str) -> int:
    kid, _, secret = next(k for k in (OLD, NEW) if k[0] == key_id)
    auth = HttpSignatureAuth(kid, secret.encode(), "alice")
    return httpx.get(gateway.url + FINDINGS, auth=auth, timeout=10).status_code


def readiness_detail(gateway: LiveServer) -> str:
    checks: list[dict[str, Any]] = httpx.get(gateway.url + "/readyz").json()["checks"]
    return next(str(c["detail"]) for c in checks if c["name"] == "signing_keys")


def wait_until(condition: Callable[[], bool], limit_s: float = 20.0) -> bool:
    """Poll a condition until it holds or the (generous) limit passes."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_rotation_overlap_retirement_and_bad_file_keeps_last_good(
    live_server: Callable[[FastAPI], LiveServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for _, env, secret in (OLD, NEW):
        monkeypatch.setenv(env, secret)
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(keys_yaml(OLD))
    findings = live_server(create_stub_app("findings"))
    settings = make_settings(
        {"findings": findings.url}, signing={"keys": [], "keys_file": str(keys_file)}
    )
    gateway = live_server(create_app(settings))
    assert (status(gateway, "proxy-old"), status(gateway, "proxy-new")) == (200, 401)

    keys_file.write_text(keys_yaml(OLD, NEW))  # overlap: both accepted
    assert wait_until(lambda: "proxy-new" in readiness_detail(gateway))
    assert (status(gateway, "proxy-old"), status(gateway, "proxy-new")) == (200, 200)

    replacement = tmp_path / "keys.yaml.tmp"  # atomic rename, as deploy tools do
    replacement.write_text(keys_yaml(NEW))
    replacement.replace(keys_file)
    assert wait_until(lambda: "proxy-old" not in readiness_detail(gateway))
    assert (status(gateway, "proxy-old"), status(gateway, "proxy-new")) == (401, 200)

    keys_file.write_text("keys: [")  # broken: the last good ring stays in force
    assert wait_until(lambda: "last reload failed" in readiness_detail(gateway))
    assert status(gateway, "proxy-new") == 200
    assert str(keys_file) not in readiness_detail(gateway)
