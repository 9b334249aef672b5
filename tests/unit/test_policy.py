"""The example policy: staffed roles, global roles, explicit deny, deny by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.authz.policy import GLOBAL_DOMAIN, PolicyEngine
from app.core.config import PolicySettings
from app.core.errors import ConfigError
from tests.conftest import POLICY_DIR

FINDINGS = "/v1/engagements/{}/findings"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.load(PolicySettings(dir=POLICY_DIR))


@pytest.mark.parametrize(
    ("subject", "engagement", "action", "allowed"),
    [
        ("alice", "acme-2026", "GET", True),
        ("alice", "acme-2026", "POST", True),
        ("alice", "initech-redteam", "GET", False),
        ("bob", "acme-2026", "POST", True),
        ("bob", "globex-cloud", "GET", False),
        ("carol", "acme-2026", "GET", True),
        ("carol", "acme-2026", "POST", False),
        ("dana", "initech-redteam", "GET", True),
        ("dana", "initech-redteam", "POST", False),
        ("mallory", "acme-2026", "GET", False),
    ],
)
def test_example_policy(
    engine: PolicyEngine, subject: str, engagement: str, action: str, allowed: bool
) -> None:
    decision = engine.decide(subject, engagement, FINDINGS.format(engagement), action)
    assert decision.allowed is allowed
    assert decision.revision == engine.revision


def test_explicit_deny_names_the_rule(engine: PolicyEngine) -> None:
    decision = engine.decide("carol", "acme-2026", FINDINGS.format("acme-2026"), "POST")
    assert decision.matched_rule[-1] == "deny"


def test_security_admin_is_global(engine: PolicyEngine) -> None:
    assert engine.decide("sam", GLOBAL_DOMAIN, "/admin/policy", "GET").allowed
    assert not engine.decide("alice", GLOBAL_DOMAIN, "/admin/policy", "GET").allowed


def test_decision_is_logged_with_revision(
    engine: PolicyEngine, captured_logs: list[dict[str, Any]]
) -> None:
    engine.decide("alice", "acme-2026", FINDINGS.format("acme-2026"), "GET")
    line = next(entry for entry in captured_logs if entry["event"] == "decision")
    assert line["policy_revision"] == engine.revision
    assert line["decision"] == "allow"
    assert line["matched_rule"].startswith("analyst,")


def test_broken_model_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text("[request_definition]\nr = sub\n[matchers]\nm = (\n")
    (tmp_path / "policy.csv").write_text("")
    with pytest.raises(ConfigError, match="cannot load"):
        PolicyEngine.load(PolicySettings(dir=tmp_path))
