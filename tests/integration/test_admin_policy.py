"""The admin API on a real gateway: status, gated reload, explain, guarded by the policy."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import POLICY_DIR, LiveServer, make_settings, signer

pytestmark = pytest.mark.integration

EXPLAIN = {
    "subject": "bob",
    "engagement": "acme-2026",
    "method": "POST",
    "path": "/v1/engagements/acme-2026/./findings/?draft=1",
}
WHO_CAN = {"query": "who_can", "action": "POST", "path": "/v1/engagements/acme-2026/findings"}


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, target)
    return target


@pytest.fixture
def gateway(
    live_server: Callable[[FastAPI], LiveServer], test_key_env: str, policy_dir: Path
) -> LiveServer:
    settings = make_settings(policy={"dir": str(policy_dir), "watch_interval": 0})
    return live_server(create_app(settings))


@pytest.fixture
def admin(gateway: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, auth=signer("sam"), timeout=10) as client:
        yield client


def test_status_shows_the_policy_in_force(admin: httpx.Client, policy_dir: Path) -> None:
    response = admin.get("/admin/policy")
    assert response.status_code == 200
    body = response.json()
    assert len(body["revision"]) == 16
    assert {Path(f["path"]).name for f in body["files"]} >= {"model.conf", "policy.csv"}
    assert body["tests"] > 0
    assert body["rules"] > 0
    assert body["last_error"] is None
    assert body["shadow"] is None
    assert body["engagement_state"] == {
        "shared": False,
        "synced": True,
        "closed": 0,
        "version": 0,
        "last_error": None,
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/policy"),
        ("POST", "/admin/policy/reload"),
        ("POST", "/admin/policy/explain"),
        ("POST", "/admin/policy/query"),
    ],
)
def test_non_admin_is_forbidden(gateway: LiveServer, method: str, path: str) -> None:
    body = EXPLAIN if "explain" in path else WHO_CAN if "query" in path else None
    with httpx.Client(base_url=gateway.url, auth=signer("alice"), timeout=10) as client:
        response = client.request(method, path, json=body)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["corr_id"] == response.headers["x-request-id"]


def test_unsigned_request_is_unauthenticated(gateway: LiveServer) -> None:
    response = httpx.get(f"{gateway.url}/admin/policy", timeout=10)
    assert response.status_code == 401


def test_reload_unchanged_then_swapped(admin: httpx.Client, policy_dir: Path) -> None:
    first = admin.post("/admin/policy/reload", json={"reason": "ticket 42"})
    assert first.status_code == 200
    assert first.json()["outcome"] == "unchanged"
    with (policy_dir / "policy.csv").open("a") as policy:
        policy.write("g, zoe, analyst, acme-2026\n")
    second = admin.post("/admin/policy/reload")
    assert second.status_code == 200
    body = second.json()
    assert body["outcome"] == "swapped"
    assert body["previous_revision"] == first.json()["revision"] != body["revision"]
    assert admin.get("/admin/policy").json()["revision"] == body["revision"]


def test_broken_reload_keeps_last_good_and_says_so_everywhere(
    admin: httpx.Client, gateway: LiveServer, policy_dir: Path, captured_logs: list[dict[str, Any]]
) -> None:
    good = admin.get("/admin/policy").json()["revision"]
    with (policy_dir / "policy.csv").open("a") as policy:
        policy.write("p, analyst, *, /v1/*, GET\n")
    response = admin.post("/admin/policy/reload", json={"reason": "bad edit"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith("policy_rejected")
    assert "The last good policy stays in force" in problem["detail"]
    assert "p needs 5 fields" in problem["detail"]
    status = admin.get("/admin/policy").json()
    assert status["revision"] == good
    assert status["last_error"]["reason"] == "bad edit"
    ready = httpx.get(f"{gateway.url}/readyz", timeout=10)
    check = next(c for c in ready.json()["checks"] if c["name"] == "policy")
    assert check["ok"] is True  # still serving the last good policy
    assert f"revision {good}; last reload rejected" in check["detail"]
    assert any(e["event"] == "policy_reload_rejected" for e in captured_logs)


@pytest.mark.parametrize(
    "body",
    [
        {"reason": ""},
        {"reason": "x" * 101},
        {"reason": "drop\ntable"},
        {"reason": "ok", "force": True},
    ],
)
def test_reload_rejects_a_bad_body(admin: httpx.Client, body: dict[str, Any]) -> None:
    response = admin.post("/admin/policy/reload", json=body)
    assert response.status_code == 422
    assert response.json()["type"].endswith("validation_error")


def test_explain_shows_rule_chain_and_normalised_path(admin: httpx.Client) -> None:
    response = admin.post("/admin/policy/explain", json=EXPLAIN)
    assert response.status_code == 200
    body = response.json()
    assert body["decision"] == "allow"
    assert body["path"] == "/v1/engagements/acme-2026/findings"
    assert body["role_chain"] == ["bob", "engagement_lead", "analyst"]
    assert body["matched_rule"][0] == "analyst"
    assert body["rule_location"].startswith("policy.csv:")


@pytest.mark.parametrize(("length", "status"), [(3_000, 200), (4_096, 200), (4_097, 422)])
def test_explain_takes_every_path_the_edge_decides(
    admin: httpx.Client, length: int, status: int
) -> None:
    """Paths of 2,049-4,096 characters, which the gateway decides, were a 422 here."""
    prefix = "/v1/engagements/acme-2026/findings/F-"
    path = prefix + "1" * (length - len(prefix))
    response = admin.post("/admin/policy/explain", json={**EXPLAIN, "path": path})
    assert response.status_code == status, response.text
    if status == 422:
        assert "longer than 4096 characters" in response.text


def test_explain_of_a_group_deny(admin: httpx.Client) -> None:
    body = {**EXPLAIN, "subject": "alice", "groups": ["acme-client"]}
    result = admin.post("/admin/policy/explain", json=body).json()
    assert (result["decision"], result["reason"]) == ("deny", "denied_by_rule")
    assert result["role_chain"] == ["group:acme-client", "client_viewer"]


@pytest.mark.parametrize(
    "change",
    [
        {"path": "/v1/engagements%2facme-2026/findings"},
        {"path": "/v1/../../admin"},
        # The edge refuses a fragment anywhere; after a query it was explained (allow).
        {"path": "/v1/engagements/acme-2026/findings?x=1#f"},
        {"path": "/v1/engagements/acme-2026/findings#f"},
        {"engagement": "ACME"},
        {"subject": "bad subject"},
        {"groups": ["ok", "not ok"]},
        {"method": "GET /x"},
        {"method": "post"},
        {"engagement": "initech-redteam"},
        {"extra": 1},
    ],
)
def test_explain_rejects_bad_input(admin: httpx.Client, change: dict[str, Any]) -> None:
    response = admin.post("/admin/policy/explain", json={**EXPLAIN, **change})
    assert response.status_code == 422
    assert response.json()["corr_id"] == response.headers["x-request-id"]


def test_admin_decision_is_logged_with_corr_id(
    admin: httpx.Client, captured_logs: list[dict[str, Any]]
) -> None:
    response = admin.get("/admin/policy", headers={"x-request-id": "admin-check-0001"})
    assert response.status_code == 200
    line = next(e for e in captured_logs if e["event"] == "decision" and e.get("stage") == "authz")
    assert line["corr_id"] == "admin-check-0001"
    assert (line["subject"], line["engagement"], line["decision"]) == ("sam", "*", "allow")
    assert line["role_chain"] == ["sam", "security_admin"]


def test_explain_takes_the_engagement_from_the_path_and_teaches_on_a_deny(
    admin: httpx.Client,
) -> None:
    """The issue's case: the engagement given disagrees with the path, so it is refused."""
    path = "/v1/engagements/initech-redteam/findings"
    body = {"subject": "alice", "engagement": "acme-2026", "method": "GET", "path": path}
    refused = admin.post("/admin/policy/explain", json=body)
    assert refused.status_code == 422
    assert "disagrees with the path" in refused.text
    body.pop("engagement")
    result = admin.post("/admin/policy/explain", json=body).json()
    assert (result["decision"], result["engagement"]) == ("deny", "initech-redteam")
    assert result["roles"] == []
    assert result["closed"] is None
    miss = next(m for m in result["near_misses"] if m["rule"][0] == "analyst")
    assert miss["differs"] == "role"
    assert "it holds it in acme-2026 (policy.csv:" in miss["detail"]


def test_explain_lists_roles_with_their_lines_and_the_g3_line(admin: httpx.Client) -> None:
    path = "/v1/engagements/initech-2025/findings"
    result = admin.post(
        "/admin/policy/explain", json={"subject": "erin", "method": "POST", "path": path}
    ).json()
    assert result["reason"] == "closed_engagement_read_only"
    assert result["closed"]["source"] == "policy"
    assert result["closed"]["ref"].startswith("policy.csv:")
    assert result["roles"] == [
        {
            "principal": "erin",
            "role": "analyst",
            "scope": "initech-2025",
            "links": [
                {
                    "kind": "g",
                    "child": "erin",
                    "role": "analyst",
                    "domain": "initech-2025",
                    "location": result["roles"][0]["links"][0]["location"],
                }
            ],
        }
    ]
    assert result["near_misses"][0]["differs"] == "closed"


def test_who_can_and_what_can_queries(admin: httpx.Client) -> None:
    who = admin.post("/admin/policy/query", json=WHO_CAN)
    assert who.status_code == 200, who.text
    body = who.json()
    assert [s["name"] for s in body["subjects"]] == ["alice", "bob", "rita"]
    assert body["subjects"][1]["role_chain"] == ["bob", "engagement_lead", "analyst"]
    assert body["subjects"][1]["rule"]["location"].startswith("policy.csv:")
    assert body["groups"] == []
    what = admin.post(
        "/admin/policy/query",
        json={"query": "what_can", "subject": "gina", "groups": ["red-team"]},
    ).json()
    by_label = {e["label"]: e for e in what["engagements"]}
    redteam = by_label["initech-redteam"]
    assert {(p["action"], p["object"]) for p in redteam["allows"]} >= {
        ("POST", "/v1/engagements/:engagement/findings")
    }
    assert by_label["(any other engagement)"]["allows"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"query": "who_can", "action": "post", "path": "/v1/engagements/acme-2026/findings"},
        {**WHO_CAN, "engagement": "globex-cloud"},
        {"query": "who_can", "action": "GET"},
        {"query": "what_can", "subject": "bad subject"},
        {"query": "who_knows"},
    ],
)
def test_queries_reject_bad_input(admin: httpx.Client, body: dict[str, Any]) -> None:
    response = admin.post("/admin/policy/query", json=body)
    assert response.status_code == 422
    assert response.json()["corr_id"] == response.headers["x-request-id"]


SECRET_LIKE = "TOPSECRET-hunter2"


@pytest.mark.parametrize(
    "body",
    [
        {**WHO_CAN, "query": SECRET_LIKE},  # a discriminator's unknown tag
        {**WHO_CAN, "action": SECRET_LIKE},  # the gateway's own field check
        {**WHO_CAN, "path": f"/v1/engagements/{SECRET_LIKE}!/findings"},
        {**WHO_CAN, f"token={SECRET_LIKE}": 1},  # an undeclared key
        {**WHO_CAN, "query": SECRET_LIKE * 40_000},  # 680 kB
        {**WHO_CAN, SECRET_LIKE.replace("-", "_") * 40_000: 1},
    ],
)
def test_a_422_names_where_and_what_but_never_the_input(
    admin: httpx.Client, body: dict[str, Any]
) -> None:
    """errors.md: the offending input is never echoed (a 900 kB tag came back whole)."""
    response = admin.post("/admin/policy/query", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"].endswith(":validation_error")
    assert problem["errors"]
    assert SECRET_LIKE.lower() not in response.text.lower()
    assert SECRET_LIKE.replace("-", "_").lower() not in response.text.lower()
    assert len(response.content) < 4096


def test_a_422_still_names_a_mistyped_field(admin: httpx.Client) -> None:
    response = admin.post("/admin/policy/query", json={**WHO_CAN, "acton": "POST"})
    assert response.status_code == 422
    assert {"loc": ["body", "who_can", "acton"], "msg": "Extra inputs are not permitted"} in (
        response.json()["errors"]
    )
