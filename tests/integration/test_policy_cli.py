"""``gateway policy lint|test|explain|diff`` as admins run them: the real command, real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POLICY_DIR

pytestmark = pytest.mark.integration


def gateway_policy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.cli.main", "policy", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    target = tmp_path / "new"
    shutil.copytree(POLICY_DIR, target)
    return target


def test_lint_shipped_policy_is_clean() -> None:
    result = gateway_policy("lint", "--strict", POLICY_DIR)
    assert result.returncode == 0, result.stdout
    assert "0 error(s), 0 warning(s)" in result.stdout


def test_lint_reports_file_and_line(policy_copy: Path) -> None:
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("p, analyst, *, /v1/*, GET\ng, bob, engagement_lead, acme-2026\n")
    result = gateway_policy("lint", policy_copy)
    assert result.returncode == 1
    lines = (policy_copy / "policy.csv").read_text().splitlines()
    bad, duplicate = len(lines) - 1, len(lines)
    assert f"policy.csv:{bad}: error: p needs 5 fields, got 4 [syntax]" in result.stdout
    assert f"policy.csv:{duplicate}: warning: duplicate of" in result.stdout


def test_lint_warnings_fail_only_when_strict(policy_copy: Path) -> None:
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("g, bob, engagement_lead, acme-2026\n")
    assert gateway_policy("lint", policy_copy).returncode == 0
    assert gateway_policy("lint", "--strict", policy_copy).returncode == 1


def test_test_command_writes_junit_and_coverage(tmp_path: Path) -> None:
    junit = tmp_path / "policy.xml"
    result = gateway_policy("test", POLICY_DIR, "--junit", junit)
    assert result.returncode == 0, result.stdout
    assert "0 failed" in result.stdout
    lines = (POLICY_DIR / "policy.csv").read_text().splitlines()
    rules = sum(1 for line in lines if line.startswith("p,"))
    assert f"rule coverage: {rules}/{rules} p lines matched by a case" in result.stdout
    assert junit.read_text().startswith("<?xml")


def test_test_command_fails_readably(policy_copy: Path) -> None:
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("g, bob, client_viewer, acme-2026\n")
    result = gateway_policy("test", policy_copy)
    assert result.returncode == 1
    assert "lead inherits analyst rights: expected allow, got deny" in result.stdout
    assert "reason: denied_by_rule; matched rule: policy.csv:" in result.stdout


def test_explain_agrees_with_casbin() -> None:
    result = gateway_policy(
        "explain",
        "--subject", "bob",
        "--engagement", "acme-2026",
        "--dir", POLICY_DIR,
        "--casbin",
        "POST", "/v1/engagements/acme-2026/./findings/?draft=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "request: bob groups=[] POST /v1/engagements/acme-2026/findings in acme-2026"
    assert "decision: allow" in out
    assert "role chain: bob > engagement_lead > analyst" in out
    rule = next(line for line in out if line.startswith("matched rule: "))
    assert rule.startswith("matched rule: analyst, *, /v1/engagements/:engagement/findings, POST")
    casbin = next(line for line in out if line.startswith("casbin: "))
    assert casbin == "casbin: allow, rule: " + rule.removeprefix("matched rule: ").split(" (")[0]


def test_explain_rejects_a_bypass_path() -> None:
    result = gateway_policy(
        "explain", "--subject", "bob", "--engagement", "acme-2026", "GET", "/v1/%2e%2e/%2e%2e/x"
    )
    assert result.returncode == 2
    assert "climbs above the root" in result.stderr


def test_diff_shows_flips_from_suites_and_decision_log(policy_copy: Path, tmp_path: Path) -> None:
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("p, auditor, *, /v1/engagements/:engagement/findings, GET, deny\n")
    log = tmp_path / "decisions.jsonl"
    entries = [
        {"event": "request_completed", "path": "/x"},
        {
            "event": "decision",
            "stage": "authz",
            "subject": "dana",
            "groups": ["auditors"],
            "engagement": "globex-cloud",
            "object": "/v1/engagements/globex-cloud/findings",
            "action": "GET",
        },
        {"event": "decision", "stage": "authn", "reason": "stale"},
    ]
    log.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    result = gateway_policy("diff", POLICY_DIR, policy_copy, "--log", log)
    assert result.returncode == 0, result.stderr
    assert "allow -> deny: dana GET /v1/engagements/initech-redteam/findings" in result.stdout
    flip = "allow -> deny: dana groups=['auditors'] GET /v1/engagements/globex-cloud/findings"
    assert f"{flip} in globex-cloud\n    from decisions.jsonl:2" in result.stdout
    assert "decision(s) flip between" in result.stdout


def test_diff_rejects_a_malformed_log(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    log.write_text("{not json\n")
    result = gateway_policy("diff", POLICY_DIR, POLICY_DIR, "--log", log)
    assert result.returncode == 2
    assert "decisions.jsonl:1: not a JSON line" in result.stderr
