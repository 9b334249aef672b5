"""The example policy on the compiled path: roles, inheritance, groups, closed engagements."""

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
    ("subject", "groups", "engagement", "action", "allowed"),
    [
        ("alice", (), "acme-2026", "GET", True),
        ("alice", (), "acme-2026", "POST", True),
        ("alice", (), "initech-redteam", "GET", False),
        ("bob", (), "acme-2026", "POST", True),
        ("bob", (), "globex-cloud", "GET", False),
        ("carol", (), "acme-2026", "GET", True),
        ("carol", (), "acme-2026", "POST", False),
        ("dana", (), "initech-redteam", "GET", True),
        ("dana", (), "initech-redteam", "POST", False),
        ("mallory", (), "acme-2026", "GET", False),
        ("gina", ("red-team",), "initech-redteam", "POST", True),
        ("gina", ("red-team",), "acme-2026", "GET", False),
        ("alice", ("acme-client",), "acme-2026", "POST", False),
        ("erin", (), "initech-2025", "GET", True),
        ("erin", (), "initech-2025", "POST", False),
        ("rita", (), "initech-2025", "POST", True),
    ],
)
def test_example_policy(
    engine: PolicyEngine,
    subject: str,
    groups: tuple[str, ...],
    engagement: str,
    action: str,
    allowed: bool,
) -> None:
    decision = engine.decide(subject, engagement, FINDINGS.format(engagement), action, groups)
    assert decision.allowed is allowed
    assert decision.revision == engine.revision


def test_explicit_deny_names_the_rule_and_its_line(engine: PolicyEngine) -> None:
    decision = engine.decide("carol", "acme-2026", FINDINGS.format("acme-2026"), "POST")
    assert decision.matched_rule[-1] == "deny"
    assert decision.reason == "denied_by_rule"
    assert decision.rule_location is not None
    line = int(decision.rule_location.rpartition(":")[2])
    text = (POLICY_DIR / "policy.csv").read_text().splitlines()[line - 1]
    assert text.replace(" ", "") == "p," + ",".join(decision.matched_rule)


def test_inherited_role_shows_its_chain(engine: PolicyEngine) -> None:
    decision = engine.decide("bob", "acme-2026", FINDINGS.format("acme-2026"), "POST")
    assert decision.role_chain == ("bob", "engagement_lead", "analyst")


def test_group_deny_beats_subject_allow_and_names_the_group(engine: PolicyEngine) -> None:
    decision = engine.decide(
        "alice", "acme-2026", FINDINGS.format("acme-2026"), "POST", ("acme-client",)
    )
    assert not decision.allowed
    assert decision.role_chain == ("group:acme-client", "client_viewer")


def test_closed_engagement_reason(engine: PolicyEngine) -> None:
    decision = engine.decide("erin", "initech-2025", FINDINGS.format("initech-2025"), "POST")
    assert decision.reason == "closed_engagement_read_only"
    assert decision.matched_rule == ()


def test_subject_named_like_a_role_is_refused(engine: PolicyEngine) -> None:
    decision = engine.decide("security_admin", GLOBAL_DOMAIN, "/admin/policy", "GET")
    assert not decision.allowed
    assert decision.reason == "principal_is_role"


def test_security_admin_is_global(engine: PolicyEngine) -> None:
    assert engine.decide("sam", GLOBAL_DOMAIN, "/admin/policy", "GET").allowed
    assert not engine.decide("alice", GLOBAL_DOMAIN, "/admin/policy", "GET").allowed


def test_mixed_case_path_matches_no_rule(engine: PolicyEngine) -> None:
    decision = engine.decide("alice", "acme-2026", "/V1/Engagements/acme-2026/findings", "GET")
    assert not decision.allowed
    assert decision.reason == "no_matching_allow"


def test_decision_log_line_has_the_fixed_fields(
    engine: PolicyEngine, captured_logs: list[dict[str, Any]]
) -> None:
    engine.decide("bob", "acme-2026", FINDINGS.format("acme-2026"), "POST", ("ops",))
    line = next(entry for entry in captured_logs if entry["event"] == "decision")
    assert line["policy_revision"] == engine.revision
    assert line["decision"] == "allow"
    assert line["matched_rule"].startswith("analyst,")
    assert line["role_chain"] == ["bob", "engagement_lead", "analyst"]
    assert line["reason"] == "allowed_by_rule"
    assert line["groups"] == ["ops"]
    assert {"corr_id", "subject", "engagement", "object", "action"} <= set(line)


def test_explain_writes_no_decision_line(
    engine: PolicyEngine, captured_logs: list[dict[str, Any]]
) -> None:
    engine.explain("bob", "acme-2026", FINDINGS.format("acme-2026"), "POST")
    assert not [entry for entry in captured_logs if entry["event"] == "decision"]


def test_unsupported_model_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text("[request_definition]\nr = sub\n[matchers]\nm = (\n")
    (tmp_path / "policy.csv").write_text("")
    with pytest.raises(ConfigError, match="unsupported_model"):
        PolicyEngine.load(PolicySettings(dir=tmp_path))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a readable file"):
        PolicyEngine.load(PolicySettings(dir=tmp_path))
