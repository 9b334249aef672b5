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
    assert "0 error(s), 0 warning(s), 0 note(s)" in result.stdout


def test_lint_accepts_a_per_subject_deny_under_strict(policy_copy: Path) -> None:
    """'Block this user now' must not break CI: alice is granted roles, so she is a subject."""
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("p, alice, globex-cloud, /v1/engagements/:engagement/findings, POST, deny\n")
    result = gateway_policy("lint", "--strict", policy_copy)
    assert result.returncode == 0, result.stdout


def test_lint_reports_suite_errors_with_file_and_line(policy_copy: Path) -> None:
    (policy_copy / "tests" / "bad.yaml").write_text(
        "suite: s\ncases:\n  - name: wrong engagement\n    subject: alice\n"
        "    engagement: acme-2026\n    method: GET\n"
        "    path: /v1/engagements/initech-redteam/findings\n    expect: deny\n"
    )
    result = gateway_policy("lint", policy_copy)
    assert result.returncode == 1
    assert "tests/bad.yaml:3: error: cases.0: engagement 'acme-2026' disagrees" in result.stdout
    assert "[engagement_mismatch]" in result.stdout


@pytest.mark.parametrize("suites", ["none", "fixtures-only"])
def test_lint_refuses_a_directory_the_gateway_would_refuse_for_want_of_test_cases(
    policy_copy: Path, suites: str
) -> None:
    """Lint passed a directory with no test case (exit 0) that start-up and every
    reload refuse (``no test cases found``): a security admin's check said go."""
    for suite in (policy_copy / "tests").glob("*.yaml"):
        suite.unlink()
    if suites == "fixtures-only":  # a valid file (fixtures for other files), no case
        (policy_copy / "tests" / "people.yaml").write_text(
            "fixtures:\n  staff: {subject: dora, groups: [consultants]}\n"
        )
    result = gateway_policy("lint", policy_copy)
    assert result.returncode == 1, result.stdout
    assert "tests/*.yaml: error: no test case: the gateway refuses" in result.stdout
    assert "[no_test_cases]" in result.stdout
    assert gateway_policy("test", policy_copy).returncode == 1  # as test says already


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


@pytest.mark.parametrize("where", ["missing/policy.xml", "."])
def test_a_junit_file_that_cannot_be_written_is_exit_2_not_a_traceback(
    tmp_path: Path, where: str
) -> None:
    """It was a traceback and exit 1, the code of failing tests: CI could not tell."""
    result = gateway_policy("test", POLICY_DIR, "--junit", tmp_path / where)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("gateway policy: --junit ")


def test_test_command_writes_junit_and_coverage(tmp_path: Path) -> None:
    junit = tmp_path / "policy.xml"
    result = gateway_policy("test", POLICY_DIR, "--junit", junit)
    assert result.returncode == 0, result.stdout
    assert "0 failed" in result.stdout
    lines = (POLICY_DIR / "policy.csv").read_text().splitlines()
    rules = sum(1 for line in lines if line.startswith("p,"))
    assert f"rule coverage: {rules}/{rules} p lines matched by a case" in result.stdout
    assert "grant coverage: 15/15 g/g2/g3 lines used by a case's decision" in result.stdout
    assert junit.read_text().startswith("<?xml")


def test_test_command_fails_readably(policy_copy: Path) -> None:
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("g, bob, client_viewer, acme-2026\n")
    result = gateway_policy("test", policy_copy)
    assert result.returncode == 1
    assert "lead inherits analyst rights: expected allow; got deny" in result.stdout
    assert "got deny, reason denied_by_rule" in result.stdout
    assert "    matched rule: policy.csv:" in result.stdout


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


def test_explain_casbin_says_it_was_asked_without_a_simulated_close() -> None:
    """With ``--closed`` the decision denies the write while plain pycasbin, which only
    reads the files, allows it: the two lines read like a disagreement without this."""
    result = gateway_policy(
        "explain", "--subject", "alice", "--dir", POLICY_DIR, "--casbin", "--closed",
        "POST", "/v1/engagements/acme-2026/findings",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "decision: deny" in out
    assert next(line for line in out if line.startswith("casbin: ")).startswith("casbin: allow")
    assert out[-1] == (
        "casbin: asked without the engagement closed (it reads only the policy's own g3 "
        "lines; this close comes from --closed), so it may disagree"
    )
    plain = gateway_policy(
        "explain", "--subject", "alice", "--dir", POLICY_DIR, "--casbin",
        "POST", "/v1/engagements/acme-2026/findings",
    )  # fmt: skip
    assert "asked without" not in plain.stdout


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
    assert "read 1 decision(s) from decisions.jsonl; skipped 2 line(s)" in result.stdout
    assert "decision(s) flip between" in result.stdout
    gated = gateway_policy("diff", POLICY_DIR, policy_copy, "--log", log, "--exit-code")
    assert gated.returncode == 1
    assert gated.stdout == result.stdout


def test_diff_exit_code_is_zero_without_flips(tmp_path: Path) -> None:
    log = tmp_path / "gateway.out"
    log.write_text("{not json\nINFO: Started\n")
    result = gateway_policy("diff", POLICY_DIR, POLICY_DIR, "--log", log, "--exit-code")
    assert result.returncode == 0, result.stderr
    assert "skipped 2 line(s) that are not authz decisions (2 not JSON)" in result.stdout
    assert "0 decision(s) flip" in result.stdout


def test_explain_takes_the_engagement_from_the_path() -> None:
    """The issue's case: an explicit engagement must not make a denied request look allowed."""
    path = "/v1/engagements/initech-redteam/findings"
    mismatch = gateway_policy(
        "explain", "--subject", "alice", "--engagement", "acme-2026", "GET", path
    )
    assert mismatch.returncode == 2
    assert "disagrees with the path" in mismatch.stderr
    result = gateway_policy("explain", "--subject", "alice", "GET", path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "in initech-redteam\ndecision: deny\nreason: no_matching_allow" in out
    assert "roles in initech-redteam: none" in out
    assert "needs role 'analyst', which 'alice' does not hold in 'initech-redteam'" in out
    assert "it holds it in acme-2026 (policy.csv:" in out


def test_explain_refuses_a_lower_case_method() -> None:
    result = gateway_policy(
        "explain", "--subject", "alice", "get", "/v1/engagements/acme-2026/findings"
    )
    assert result.returncode == 2
    assert "HTTP methods are upper case: use 'GET'" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("explain", "--subject", "", "GET", "/v1/engagements/acme-2026/findings"), "subject ''"),
        (("what-can", ""), "subject ''"),
        (("what-can", "alice", "--groups", "red team"), "group 'red team'"),
        (("what-can", "alice", "--groups", ",".join(f"g{i}" for i in range(33))), "at most 32"),
    ],
    ids=["explain, empty subject", "what-can, empty subject", "bad group", "too many groups"],
)
def test_the_cli_checks_the_identity_as_the_admin_api_does(
    args: tuple[str, ...], message: str
) -> None:
    """Found by an audit: an empty subject was explained (exit 0) where the API says 422."""
    result = gateway_policy(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_explain_shows_the_g3_line_of_a_closed_engagement() -> None:
    path = "/v1/engagements/initech-2025/findings"
    result = gateway_policy("explain", "--subject", "erin", "POST", path)
    assert "reason: closed_engagement_read_only" in result.stdout
    assert (
        "engagement: closed by the policy: g3, initech-2025, closed (policy.csv:" in result.stdout
    )
    closed = gateway_policy(
        "explain", "--subject", "alice", "--closed", "POST", "/v1/engagements/acme-2026/findings"
    )
    assert "reason: closed_engagement_read_only" in closed.stdout


def test_who_can_and_what_can() -> None:
    who = gateway_policy("who-can", "POST", "/v1/engagements/acme-2026/findings")
    assert who.returncode == 0, who.stderr
    assert "  bob: policy.csv:" in who.stdout
    assert "(via bob > engagement_lead > analyst)" in who.stdout
    assert "groups: none" in who.stdout
    what = gateway_policy(
        "what-can", "gina", "--groups", "red-team", "--engagement", "initech-redteam"
    )
    assert what.returncode == 0, what.stderr
    assert "allow POST /v1/engagements/:engagement/findings: policy.csv:" in what.stdout
    assert "via group:red-team > analyst" in what.stdout
    bad = gateway_policy("who-can", "post", "/v1/engagements/acme-2026/findings")
    assert bad.returncode == 2


DEMO_CONFIG = POLICY_DIR.parent / "config" / "demo.yaml"


def test_lint_with_the_gateway_config_checks_each_rule_has_a_route(policy_copy: Path) -> None:
    """A deny with a typo in its path protects nothing and nobody notices: with the
    gateway's settings, lint names it (the shipped policy and demo config are clean)."""
    clean = gateway_policy("lint", "--strict", "--config", DEMO_CONFIG, POLICY_DIR)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with (policy_copy / "policy.csv").open("a") as policy:
        policy.write("p, client_viewer, *, /v1/engagements/:engagement/finding, POST, deny\n")
    result = gateway_policy("lint", "--strict", "--config", DEMO_CONFIG, policy_copy)
    assert result.returncode == 1, result.stdout
    assert "policy.csv:65: warning: no route of this gateway" in result.stdout
    assert "nothing is denied by it" in result.stdout
    without = gateway_policy("lint", "--strict", policy_copy)  # no routes known: not checked
    assert without.returncode == 0, without.stdout


def test_lint_with_a_missing_config_is_unusable_input(tmp_path: Path) -> None:
    result = gateway_policy("lint", "--config", tmp_path / "none.yaml", POLICY_DIR)
    assert result.returncode == 2
    assert "--config" in result.stderr
    assert "no such file" in result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('authorizer:\n  routes: ["/v1/{x:badconv}"]\n', "Unknown path convertor 'badconv'"),
        (
            "orchestration:\n  passthrough:\n"
            "    - {path: /v1/x, service: nosuch, upstream_path: /x}\n",
            "service 'nosuch' is not configured",
        ),
    ],
    ids=["authorizer-template", "passthrough-service"],
)
def test_lint_refuses_route_settings_the_gateway_would_not_start_with(
    tmp_path: Path, settings: str, message: str
) -> None:
    """Found by an audit: lint checked rules against routes that could not exist."""
    config = tmp_path / "gateway.yaml"
    config.write_text(settings)
    result = gateway_policy("lint", "--config", config, POLICY_DIR)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
