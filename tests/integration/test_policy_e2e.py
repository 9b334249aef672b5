"""Policy decisions through a real gateway: groups, closed engagements, bypass shapes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import signer
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def get(stack: Stack, path: str, subject: str, groups: tuple[str, ...] = ()) -> httpx.Response:
    with httpx.Client(base_url=stack.url, auth=signer(subject, groups), timeout=10) as client:
        return client.get(path)


def decisions(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "decision" and e.get("stage") == "authz"]


def test_a_signed_group_grants_access(stack: Stack, captured_logs: list[dict[str, Any]]) -> None:
    path = "/v1/engagements/initech-redteam/findings"
    assert get(stack, path, "gina").status_code == 403
    assert get(stack, path, "gina", ("red-team",)).status_code == 200
    allowed = decisions(captured_logs)[-1]
    assert allowed["groups"] == ["red-team"]
    assert allowed["role_chain"] == ["group:red-team", "analyst"]


def test_a_group_deny_beats_the_subjects_allow(stack: Stack) -> None:
    with httpx.Client(
        base_url=stack.url, auth=signer("alice", ("acme-client",)), timeout=10
    ) as client:
        response = client.post(
            "/v1/engagements/acme-2026/findings", json={"title": "XSS", "severity": "low"}
        )
    assert response.status_code == 403


def test_closed_engagement_is_read_only(stack: Stack, captured_logs: list[dict[str, Any]]) -> None:
    path = "/v1/engagements/initech-2025/findings"
    assert get(stack, path, "erin").status_code == 200
    with httpx.Client(base_url=stack.url, auth=signer("erin"), timeout=10) as client:
        response = client.post(path, json={"title": "Late finding", "severity": "low"})
    assert response.status_code == 403
    assert decisions(captured_logs)[-1]["reason"] == "closed_engagement_read_only"


def test_the_decided_path_is_the_forwarded_path(
    stack: Stack, captured_logs: list[dict[str, Any]]
) -> None:
    sneaky = "/v1/engagements/initech-redteam/%2e%2e/acme-2026/./findings/"
    response = get(stack, sneaky, "alice")
    assert response.status_code == 200
    decided = decisions(captured_logs)[-1]
    assert (decided["engagement"], decided["object"]) == (
        "acme-2026",
        "/v1/engagements/acme-2026/findings",
    )
    seen = httpx.get(f"{stack.stubs['findings'].url}/_seen", timeout=10).json()
    assert seen[-1]["path"] == "/engagements/acme-2026/findings"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/engagements/acme-2026/findings;jsessionid=x", 400),
        ("/v1/engagements/acme-2026%2ffindings", 400),
        ("/v1/engagements/acme-2026/%c0%ae%c0%ae/findings", 400),
        ("/v1/engagements/acme-2026/%252e%252e/findings", 400),
        ("/V1/Engagements/acme-2026/findings", 404),
    ],
)
def test_bypass_shapes_never_reach_a_decision_or_service(
    stack: Stack, captured_logs: list[dict[str, Any]], path: str, status: int
) -> None:
    assert get(stack, path, "alice").status_code == status
    assert decisions(captured_logs) == []
