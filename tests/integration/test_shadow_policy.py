"""Shadow policy on a real gateway under concurrent signed traffic: measured, never enforced.

The candidate grants zed a client-viewer seat in acme-2026 (his reads flip deny
-> allow) and denies the acme-client group the findings list (cleo's reads flip
allow -> deny); alice's reads are the same on both. Every answer must be the
live policy's; every flip is logged with both results and rules and counted by
direction, in the status and the metric. Then the candidate is promoted through
the normal gated reload, and a broken candidate never touches an answer.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.authz.shadow import ShadowPolicy
from app.main import create_app
from app.stubs.server import create_stub_app
from tests.conftest import POLICY_DIR, LiveServer, make_settings, signer
from tests.integration.ops.conftest import metric_value

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"
CALLERS = {  # who: (groups, live status, flip direction or None)
    "zed": ((), 403, "deny_to_allow"),
    "cleo": (("acme-client",), 200, "allow_to_deny"),
    "alice": ((), 200, None),
}
CANDIDATE = (
    "g, zed, client_viewer, acme-2026\n"
    "p, group:acme-client, acme-2026, /v1/engagements/:engagement/findings, GET, deny\n"
)
ROUNDS = 4  # per caller and thread
THREADS = 4


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    live, shadow = tmp_path / "live", tmp_path / "shadow"
    shutil.copytree(POLICY_DIR, live)
    shutil.copytree(POLICY_DIR, shadow)
    with (shadow / "policy.csv").open("a") as policy:
        policy.write(CANDIDATE)
    return live, shadow


@pytest.fixture
def gateway(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, dirs: tuple[Path, Path]
) -> LiveServer:
    live, shadow = dirs
    findings = live_server(create_stub_app("findings"))
    policy = {"dir": str(live), "shadow_dir": str(shadow), "watch_interval": 0.05}
    settings = make_settings({"findings": findings.url}, policy=policy)
    return live_server(create_app(settings))


def read_as(url: str, subject: str) -> int:
    groups = CALLERS[subject][0]
    with httpx.Client(base_url=url, auth=signer(subject, groups), timeout=15) as client:
        return client.get(FINDINGS).status_code


def admin(url: str, method: str, path: str) -> httpx.Response:
    with httpx.Client(base_url=url, auth=signer("sam"), timeout=15) as client:
        return client.request(method, path)


def traffic(url: str) -> Counter[tuple[str, int]]:
    """Every caller's reads, from several threads at once; answers counted by (caller, status)."""
    jobs = [name for name in CALLERS for _ in range(ROUNDS)] * THREADS
    with ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(lambda name: (name, read_as(url, name)), jobs))
    return Counter(statuses)


def test_flips_are_logged_and_counted_and_never_change_an_answer(
    gateway: LiveServer, captured_logs: list[dict[str, Any]]
) -> None:
    before = httpx.get(gateway.url + "/metrics", timeout=10).text
    answers = traffic(gateway.url)
    per_caller = ROUNDS * THREADS
    assert answers == Counter({(n, CALLERS[n][1]): per_caller for n in CALLERS})  # all live
    status = admin(gateway.url, "GET", "/admin/policy").json()
    shadow = status["shadow"]
    assert shadow["revision"] not in (None, status["revision"])
    assert shadow["flips"] == {"allow_to_deny": per_caller, "deny_to_allow": per_caller}
    assert shadow["decisions"] >= 3 * per_caller
    flips = [e for e in captured_logs if e["event"] == "decision_shadow_flip"]
    assert Counter(e["direction"] for e in flips) == Counter(
        {"allow_to_deny": per_caller, "deny_to_allow": per_caller}
    )
    cleo = next(e for e in flips if e["subject"] == "cleo")
    assert cleo["live"]["decision"] == "allow"
    assert cleo["live"]["rule"] == "client_viewer,*,/v1/engagements/:engagement/findings,GET,allow"
    assert cleo["shadow"]["decision"] == "deny"
    assert cleo["shadow"]["rule"].startswith("group:acme-client,acme-2026,")
    assert cleo["shadow"]["policy_revision"] == shadow["revision"]
    assert cleo["corr_id"]
    zed = next(e for e in flips if e["subject"] == "zed")
    assert (zed["live"]["reason"], zed["shadow"]["reason"]) == (
        "no_matching_allow",
        "allowed_by_rule",
    )
    after = httpx.get(gateway.url + "/metrics", timeout=10).text
    for direction in ("allow_to_deny", "deny_to_allow"):
        grew = metric_value(after, "gateway_policy_shadow_flips_total", direction=direction)
        was = metric_value(before, "gateway_policy_shadow_flips_total", direction=direction)
        assert grew - was == per_caller


def test_a_candidate_becomes_live_through_the_gated_reload(
    gateway: LiveServer, dirs: tuple[Path, Path]
) -> None:
    live, shadow = dirs
    candidate = admin(gateway.url, "GET", "/admin/policy").json()["shadow"]["revision"]
    assert read_as(gateway.url, "zed") == 403
    shutil.copy(shadow / "policy.csv", live / "policy.csv")
    reloaded = admin(gateway.url, "POST", "/admin/policy/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["revision"] == candidate
    assert read_as(gateway.url, "zed") == 200  # enforced now
    counted = admin(gateway.url, "GET", "/admin/policy").json()["shadow"]
    read_as(gateway.url, "cleo")
    now = admin(gateway.url, "GET", "/admin/policy").json()["shadow"]
    assert now["decisions"] == counted["decisions"]  # same revision: nothing left to compare


def test_a_changed_candidate_is_picked_up_and_a_broken_one_keeps_the_last(
    gateway: LiveServer, dirs: tuple[Path, Path]
) -> None:
    _, shadow = dirs
    first = admin(gateway.url, "GET", "/admin/policy").json()["shadow"]["revision"]
    with (shadow / "policy.csv").open("a") as policy:
        policy.write("g, yuri, analyst, acme-2026\n")
    deadline = time.monotonic() + 10  # a bound for the watcher, not a timing claim
    while admin(gateway.url, "GET", "/admin/policy").json()["shadow"]["revision"] == first:
        assert time.monotonic() < deadline, "the candidate was not re-read"
        time.sleep(0.05)
    second = admin(gateway.url, "GET", "/admin/policy").json()["shadow"]["revision"]
    with (shadow / "policy.csv").open("a") as policy:
        policy.write("p, analyst, *, /v1/*, GET\n")
    while admin(gateway.url, "GET", "/admin/policy").json()["shadow"]["last_error"] is None:
        assert time.monotonic() < deadline + 10, "the broken candidate was not noticed"
        time.sleep(0.05)
    status = admin(gateway.url, "GET", "/admin/policy").json()["shadow"]
    assert status["revision"] == second  # the last good candidate stays
    assert "p needs 5 fields" in status["last_error"]


def test_a_failing_candidate_never_touches_an_answer(
    gateway: LiveServer, monkeypatch: pytest.MonkeyPatch, captured_logs: list[dict[str, Any]]
) -> None:
    def broken(self: ShadowPolicy, *args: object) -> None:
        raise RuntimeError("candidate exploded")

    monkeypatch.setattr(ShadowPolicy, "observe", broken)
    assert traffic(gateway.url)[("zed", 403)] == ROUNDS * THREADS
    assert any(e["event"] == "decision_shadow_failed" for e in captured_logs)
