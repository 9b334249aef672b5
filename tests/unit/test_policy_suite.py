"""Policy test suites: loading, readable failures, coverage and JUnit output."""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

from app.authz.policy import PolicyEngine
from app.authz.source import read_policy
from app.authz.suite import SuiteError, junit_xml, load_suites, run_suites, unused_grants
from app.core.config import PolicySettings
from tests.conftest import POLICY_DIR

CASE = """
suite: s
cases:
  - name: {name}
    subject: {subject}
    engagement: acme-2026
    method: GET
    path: {path}
    expect: {expect}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copy(POLICY_DIR / "model.conf", tmp_path)
    shutil.copy(POLICY_DIR / "policy.csv", tmp_path)
    (tmp_path / "tests").mkdir()
    return tmp_path


def write_case(policy_dir: Path, **values: str) -> None:
    defaults = {"name": "n", "subject": "alice", "path": "/v1/engagements/acme-2026/findings"}
    text = CASE.format(**{**defaults, "expect": "allow", **values})
    (policy_dir / "tests" / "case.yaml").write_text(text)


def run(policy_dir: Path) -> tuple[PolicyEngine, list[str], list[str]]:
    engine = PolicyEngine.load(PolicySettings(dir=policy_dir))
    report = run_suites(engine, load_suites(policy_dir))
    failures = [f.describe_failure() for f in report.failures]
    return engine, failures, [rule.location for rule in report.uncovered]


def test_shipped_suites_pass_and_cover_every_rule() -> None:
    _, failures, uncovered = run(POLICY_DIR)
    assert failures == []
    assert uncovered == []


def test_failure_is_readable(policy_dir: Path) -> None:
    write_case(policy_dir, name="mallory reads", subject="mallory")
    _, failures, _ = run(policy_dir)
    assert failures == [
        "tests/case.yaml: s / mallory reads: expected allow, got deny\n"
        "    request: mallory groups=[] GET /v1/engagements/acme-2026/findings in acme-2026\n"
        "    reason: no_matching_allow; matched rule: none; role chain: "
    ]


def test_paths_in_cases_are_normalised(policy_dir: Path) -> None:
    write_case(policy_dir, path="/v1/engagements/x/../acme-2026/findings/?page=2")
    _, failures, _ = run(policy_dir)
    assert failures == []


def test_uncovered_rules_are_listed(policy_dir: Path) -> None:
    write_case(policy_dir)
    engine, _, uncovered = run(policy_dir)
    assert len(uncovered) == len(engine.compiled.rules) - 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("suite: s\ncases: []\n", "cases"),
        ("suite: s\ncases: [{name: n}]\n", "cases.0.subject"),
        (CASE.format(name="n", subject="a", path="/a/%2f", expect="allow"), "forbidden encoded"),
        (CASE.format(name="n", subject="a", path="/a", expect="maybe"), "cases.0.expect"),
        ("suite: [unclosed\n", "cannot read"),
    ],
)
def test_bad_suite_files_name_the_file(policy_dir: Path, text: str, message: str) -> None:
    (policy_dir / "tests" / "bad.yaml").write_text(text)
    with pytest.raises(SuiteError, match=r"tests/bad\.yaml") as info:
        load_suites(policy_dir)
    assert message in str(info.value)


def test_junit_xml_counts_failures(policy_dir: Path) -> None:
    write_case(policy_dir, subject="mallory")
    engine = PolicyEngine.load(PolicySettings(dir=policy_dir))
    xml = junit_xml(run_suites(engine, load_suites(policy_dir)))
    root = ElementTree.fromstring(xml)  # noqa: S314 - our own output, not untrusted input
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert "expected allow, got deny" in (failure.text or "")


def test_unused_grants_are_listed(policy_dir: Path) -> None:
    write_case(policy_dir)  # alice reads: uses only "g, alice, analyst, acme-2026"
    engine = PolicyEngine.load(PolicySettings(dir=policy_dir))
    report = run_suites(engine, load_suites(policy_dir))
    source = read_policy(policy_dir / "model.conf", policy_dir / "policy.csv")
    unused = {line.text for line in unused_grants(source.lines, report)}
    assert "g, alice, analyst, acme-2026" not in unused
    assert "g, bob, engagement_lead, acme-2026" in unused
    assert "g2, records_officer, closed_writer" not in unused  # a capability, not in chains
