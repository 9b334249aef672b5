"""Policy test suites: loading with file:line, fixtures, assertions, coverage and JUnit output."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from app.authz.policy import PolicyEngine
from app.authz.source import HIDING
from app.authz.suite import SuiteError, SuiteReport, junit_xml, load_suites, run_suites
from app.authz.suite_files import read_suites
from app.cli.main import main
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


def write_suite(policy_dir: Path, text: str, name: str = "case.yaml") -> None:
    (policy_dir / "tests" / name).write_text(textwrap.dedent(text))


def report_of(policy_dir: Path) -> SuiteReport:
    engine = PolicyEngine.load(PolicySettings(dir=policy_dir))
    return run_suites(engine, load_suites(policy_dir))


def failures_of(policy_dir: Path) -> list[str]:
    return [f.describe_failure() for f in report_of(policy_dir).failures]


def test_shipped_suites_pass_and_cover_every_rule_and_grant() -> None:
    report = report_of(POLICY_DIR)
    assert report.failures == []
    assert report.uncovered == ()
    assert report.uncovered_links == ()
    assert report.links > 0


def test_failure_is_readable_and_located(policy_dir: Path) -> None:
    write_case(policy_dir, name="mallory reads", subject="mallory")
    assert failures_of(policy_dir) == [
        "tests/case.yaml:4: s / mallory reads: expected allow; got deny, reason no_matching_allow\n"
        "    request: mallory groups=[] GET /v1/engagements/acme-2026/findings in acme-2026\n"
        "    matched rule: none; role chain: -"
    ]


def test_paths_in_cases_are_normalised(policy_dir: Path) -> None:
    write_case(policy_dir, path="/v1/engagements/x/../acme-2026/findings/?page=2")
    assert failures_of(policy_dir) == []


def test_uncovered_rules_and_grants_are_named(policy_dir: Path) -> None:
    write_case(policy_dir)  # alice reads acme-2026: one rule, one grant
    engine = PolicyEngine.load(PolicySettings(dir=policy_dir))
    report = run_suites(engine, load_suites(policy_dir))
    assert len(report.uncovered) == len(engine.compiled.rules) - 1
    unused = dict(report.uncovered_links)
    assert "g, alice, analyst, acme-2026" not in unused.values()
    assert "g, alice, analyst, globex-cloud" in unused.values()  # same pair, other engagement
    assert "g3, initech-2025, closed" in unused.values()
    assert "g2, records_officer, closed_writer" in unused.values()
    assert all(location.startswith("policy.csv:") for location in unused)


def test_closed_writer_and_g3_lines_count_as_used_by_a_closed_write(policy_dir: Path) -> None:
    write_suite(
        policy_dir,
        """
        suite: closed
        cases:
          - name: records officer corrects a closed engagement
            subject: rita
            method: POST
            path: /v1/engagements/initech-2025/findings
            expect: allow
        """,
    )
    unused = set(dict(report_of(policy_dir).uncovered_links).values())
    assert "g2, records_officer, closed_writer" not in unused
    assert "g3, initech-2025, closed" not in unused
    assert "g2, rita, records_officer" not in unused


def test_reason_and_matched_rule_are_asserted(policy_dir: Path) -> None:
    write_suite(
        policy_dir,
        """
        suite: precise
        cases:
          - name: right reason, right rule
            subject: carol
            method: POST
            path: /v1/engagements/acme-2026/findings
            expect: deny
            reason: denied_by_rule
            matched_rule: client_viewer, *, /v1/engagements/:engagement/findings, POST, deny
          - name: right decision, wrong reason
            subject: mallory
            method: POST
            path: /v1/engagements/acme-2026/findings
            expect: deny
            reason: denied_by_rule
          - name: right decision, wrong rule
            subject: alice
            method: GET
            path: /v1/engagements/acme-2026/findings
            expect: allow
            matched_rule: none
        """,
    )
    failures = failures_of(policy_dir)
    assert len(failures) == 2
    assert failures[0].startswith(
        "tests/case.yaml:11: precise / right decision, wrong reason: expected deny, reason "
        "denied_by_rule; got deny, reason no_matching_allow"
    )
    assert "expected allow, rule none; got allow, reason allowed_by_rule" in failures[1]


def test_fixtures_are_shared_across_files(policy_dir: Path) -> None:
    write_suite(
        policy_dir,
        """
        fixtures:
          red-teamer: {subject: gina, groups: [red-team]}
        """,
        "fixtures.yaml",
    )
    write_suite(
        policy_dir,
        """
        suite: uses a fixture
        cases:
          - name: red team records a finding
            as: red-teamer
            method: POST
            path: /v1/engagements/initech-redteam/findings
            expect: allow
        """,
    )
    (case,) = load_suites(policy_dir)
    assert (case.subject, case.groups, case.engagement) == (
        "gina",
        ("red-team",),
        "initech-redteam",
    )
    assert failures_of(policy_dir) == []


def test_engagement_state_closed_is_decided_and_shown(policy_dir: Path) -> None:
    write_suite(
        policy_dir,
        """
        suite: closing
        cases:
          - name: closed by the saga, analysts cannot write
            subject: alice
            engagement_state: closed
            method: POST
            path: /v1/engagements/acme-2026/findings
            expect: allow
        """,
    )
    (failure,) = failures_of(policy_dir)
    assert "got deny, reason closed_engagement_read_only" in failure
    assert "engagement: closed by case" in failure
    assert "tests/case.yaml:4" in failure


def test_policy_g3_shows_where_it_was_written(policy_dir: Path) -> None:
    write_suite(
        policy_dir,
        """
        suite: g3
        cases:
          - {name: n, subject: erin, method: POST, path: /v1/engagements/initech-2025/findings,
             expect: allow}
        """,
    )
    (failure,) = failures_of(policy_dir)
    assert "engagement: closed by the policy: g3, initech-2025, closed (policy.csv:64)" in failure


FIRST = """suite: s
cases:
  - {name: first, subject: bob, method: GET, path: /x, expect: deny}
  - name: bad one
"""


@pytest.mark.parametrize(
    ("fields", "line", "code", "message"),
    [
        ({"engagement": "acme-2026", "path": "/v1/engagements/initech-redteam/findings"},
         4, "engagement_mismatch", "disagrees with the path"),
        ({"engagement": "'*'"}, 4, "engagement_mismatch", "decides in 'acme-2026'"),
        ({"path": "/v1/engagements/ACME/findings"}, 4, "engagement_mismatch", "malformed"),
        ({"method": "get"}, 6, "invalid_action", "use 'GET'"),
        ({"method": "Fetch"}, 6, "invalid_action", "neither an HTTP method"),
        ({"subject": None, "as": "nobody"}, 4, "unknown_fixture", "no fixture 'nobody'"),
        ({"as": "lead"}, 4, "caller", "either subject"),
        ({"matched_rule": "analyst, *"}, 4, "matched_rule", "role, engagement, object"),
        ({"reason": "because"}, 9, "suite", "reason"),
        ({"path": "/admin/policy/reload", "engagement_state": "closed"},
         4, "engagement_state", "no close applies to the gateway-wide routes"),
    ],
)  # fmt: skip
def test_bad_cases_are_errors_with_file_and_line(
    policy_dir: Path, fields: dict[str, str | None], line: int, code: str, message: str
) -> None:
    case = {"subject": "alice", "method": "GET", "path": "/v1/engagements/acme-2026/findings"}
    case = {k: v for k, v in {**case, "expect": "deny", **fields}.items() if v is not None}
    text = FIRST + "".join(f"    {key}: {value}\n" for key, value in case.items())
    (policy_dir / "tests" / "bad.yaml").write_text(text)
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [(f"tests/bad.yaml:{line}", code)]
    assert message in issues[0].message
    with pytest.raises(SuiteError, match=rf"tests/bad\.yaml:{line}"):
        load_suites(policy_dir)


# YAML escapes put into a value what the file does not show: "\e[8m" in a case name was
# printed raw by ``policy test`` and concealed everything after it, the summary included.
@pytest.mark.parametrize(
    ("text", "location", "code"),
    [
        ('suite: s\ncases: [{name: "reads\\e[8m", subject: a, method: GET, path: /x, '
         "expect: deny}]\n", "tests/bad.yaml:2", "hidden_character"),
        ('suite: "s\\u202e"\ncases: [{name: n, subject: a, method: GET, path: /x, '
         "expect: deny}]\n", "tests/bad.yaml:1", "hidden_character"),
        ("suite: s\ncases:\n  - name: |\n      two\n      lines\n    subject: a\n"
         "    method: GET\n    path: /x\n    expect: deny\n", "tests/bad.yaml:3",
         "hidden_character"),
        ('suite: s\ncases: [{name: n, subject: a, method: GET, path: /x, expect: deny, '
         'matched_rule: "a\\r, *, /x, GET, allow"}]\n', "tests/bad.yaml:2", "hidden_character"),
    ],
)  # fmt: skip
def test_a_value_that_would_print_unseen_is_an_error(
    policy_dir: Path, text: str, location: str, code: str
) -> None:
    (policy_dir / "tests" / "bad.yaml").write_text(text)
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [(location, code)]


def test_policy_test_never_prints_a_suite_s_escape_sequence(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither a case's own text nor an unknown key quoted by an error reaches the terminal."""
    case = '{name: "n\\e[8m", subject: a, method: GET, path: /x, expect: deny}'
    key = '{"\\e[31mkey": 1}'
    (policy_dir / "tests" / "bad.yaml").write_text(f"suite: s\ncases: [{case}, {key}]\n")
    assert main(["policy", "lint", str(policy_dir)]) == 1
    out = capsys.readouterr().out
    assert "cases.1.\\u001b[31mkey" in out
    assert "\x1b" not in out


@settings(max_examples=50, deadline=None)
@given(name=st.text(min_size=1, max_size=20))
def test_a_case_name_is_read_only_when_it_prints_as_written(name: str) -> None:
    """Any name YAML can carry: refused with hidden_character, or kept without such a character."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "tests").mkdir()
        document = {"suite": "s", "cases": [
            {"name": name, "subject": "a", "method": "GET", "path": "/x", "expect": "deny"}
        ]}  # fmt: skip
        (root / "tests" / "p.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
        cases, issues = read_suites(root)
    codes = {issue.code for issue in issues}
    if codes == {"hidden_character"}:
        assert HIDING.search(name) or "\n" in name
    elif not codes:
        assert [case.name for case in cases] == [name]
        assert not HIDING.search(name)
        assert "\n" not in name
    else:  # an empty or blank name YAML reads as no string, or the file itself
        assert codes <= {"suite", "hidden_character"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("suite: s\ncases: []\n", "a suite needs both"),
        ("suite: s\ncases: [{name: n}]\n", "cases.0.method"),
        (CASE.format(name="n", subject="a", path="/a/%2f", expect="allow"), "forbidden encoded"),
        (CASE.format(name="n", subject="a", path="/a", expect="maybe"), "cases.0.expect"),
        ("suite: [unclosed\n", "cannot read"),
        ("fixtures: {x: {subject: 'bad subject'}}\n", "fixtures.x.subject"),
    ],
)
def test_bad_suite_files_name_the_file(policy_dir: Path, text: str, message: str) -> None:
    (policy_dir / "tests" / "bad.yaml").write_text(text)
    with pytest.raises(SuiteError, match=r"tests/bad\.yaml") as info:
        load_suites(policy_dir)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (
            CASE.format(name="a", subject="alice", path="/a", expect="allow") + "cases: []\n",
            10,
            "cases",
        ),
        ("suite: s\nsuite: t\ncases: []\n", 2, "suite"),
        ("suite: s\ncases:\n  - name: n\n    expect: allow\n    expect: deny\n", 5, "expect"),
    ],
)
def test_a_repeated_key_is_an_error_not_a_silently_dropped_value(
    policy_dir: Path, text: str, line: int, key: str
) -> None:
    """PyYAML keeps the last value: a second ``cases:`` dropped every case of the first,
    and lint said nothing (an audit found 11 of 44 cases gone)."""
    (policy_dir / "tests" / "bad.yaml").write_text(text)
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [(f"tests/bad.yaml:{line}", "suite")]
    assert issues[0].message == f"repeated key {key!r}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("suite: s\ncases:\n  - name: n\n    path: [unclosed\n", 5),  # ends in the flow
        ("suite: s\ncases: []\n\n\n  bad: indent\n", 5),
        ("suite: s\n\tcases: []\n", 2),  # a tab where YAML wants spaces
    ],
)
def test_a_yaml_syntax_error_is_located_at_its_line(policy_dir: Path, text: str, line: int) -> None:
    """A syntax error was reported at ``file:1`` whatever its line (PyYAML's own text held
    the line, past the 500 characters a message may quote of it)."""
    (policy_dir / "tests" / "bad.yaml").write_text(text)
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [(f"tests/bad.yaml:{line}", "suite")]
    assert issues[0].message.startswith("cannot read: ")


def test_a_suite_that_is_not_a_regular_file_is_an_error_never_a_blocked_read(
    policy_dir: Path,
) -> None:
    """A FIFO named tests/*.yaml held every later reload in open() until a restart."""
    os.mkfifo(policy_dir / "tests" / "zz.yaml")
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.message) for i in issues] == [("tests/zz.yaml:1", "not a regular file")]


def _laughs(levels: int, width: int = 10) -> str:
    """A "billion laughs" document: each level a list of ``width`` aliases of the last."""
    lines = ['l0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\ncases: []\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_laughs(10), "aliases expand the document to"),  # 10**10 nodes
        ("x: &a [*a]\ncases: []\n", "an alias refers to a node containing it"),
    ],
)
def test_an_alias_bomb_is_an_error_never_a_runaway_read(
    policy_dir: Path, text: str, message: str
) -> None:
    """An audit's ten levels of ten aliases grew the gateway past 8 GB on reload, and the
    reload held every later one; now it is refused from the composed document alone."""
    (policy_dir / "tests" / "bomb.yaml").write_text(text)
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [("tests/bomb.yaml:1", "suite")]
    assert message in issues[0].message


def test_aliases_within_the_bound_still_load(policy_dir: Path) -> None:
    """Reusing a node is fine: four levels of ten is 11,111 nodes."""
    (policy_dir / "tests" / "ok.yaml").write_text(_laughs(4))
    _, issues = read_suites(policy_dir)
    # Read, then refused only for what it is: keys a suite does not have.
    assert issues
    assert all("alias" not in i.message for i in issues)
    assert {i.message.split(":")[0] for i in issues} == {"l0", "l1", "l2", "l3", "l4"}


def test_a_fixture_defined_twice_is_an_error(policy_dir: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        write_suite(policy_dir, "fixtures:\n  lead: {subject: bob}\n", name)
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [("tests/b.yaml:2", "duplicate_fixture")]
    assert "already defined in tests/a.yaml" in issues[0].message


def test_junit_xml_counts_failures(policy_dir: Path) -> None:
    write_case(policy_dir, subject="mallory")
    xml = junit_xml(report_of(policy_dir))
    root = ElementTree.fromstring(xml)  # noqa: S314 - our own output, not untrusted input
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    failure = suite.find("testcase/failure")
    assert failure is not None
    assert "expected allow; got deny" in (failure.text or "")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("1" * 5000, "... (5000 characters) is not a valid int (Exceeds the limit"),
        ("2001-13-45", "'2001-13-45' is not a valid timestamp (month must be in 1..12)"),
    ],
    ids=["integer too long", "impossible date"],
)
def test_a_value_yaml_cannot_hold_is_an_error_at_its_line(
    policy_dir: Path, value: str, shown: str
) -> None:
    """PyYAML raised ValueError for these: ``policy lint`` and ``policy test`` crashed
    with a traceback (exit 1, "findings"), and a reload was refused as "cannot read
    <dir>: ValueError" without the file."""
    (policy_dir / "tests" / "bad.yaml").write_text(f"suite: s\ncases:\n  - name: {value}\n")
    _, issues = read_suites(policy_dir)
    assert [(i.location, i.code) for i in issues] == [("tests/bad.yaml:3", "suite")]
    assert shown in issues[0].message
    assert issues[0].message.endswith("quote it to make it text")
    with pytest.raises(SuiteError, match=r"tests/bad\.yaml:3"):
        load_suites(policy_dir)


def test_the_guide_s_add_a_rule_example_passes_beside_the_shipped_suites(tmp_path: Path) -> None:
    """policies.md's "Add a rule" line and "Write a test" suite, pasted into a copy of
    ``policies/``, pass: the suite redefined the shipped fixture ``red-teamer`` (a
    ``duplicate_fixture`` error) and expected the red team, analysts in initech-redteam,
    not to delete that engagement's drafts, which the example rule allows."""
    guide = (POLICY_DIR.parent / "app" / "api" / "docs" / "policies.md").read_text()
    add_a_rule = guide.split("\n## Add a rule\n", 1)[1].split("\n## ", 1)[0]
    rule = re.findall(r"`(p, [^`]+)`", add_a_rule)
    suite = guide.split("\n## Write a test\n", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert len(rule) == 1, "the guide's example rule was not found"
    shutil.copytree(POLICY_DIR, tmp_path / "policies")
    policies = tmp_path / "policies"
    with (policies / "policy.csv").open("a") as csv:
        csv.write(rule[0] + "\n")
    (policies / "tests" / "drafts.yaml").write_text(suite)
    assert failures_of(policies) == []
