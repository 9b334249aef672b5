"""``lint``: syntax errors with file:line, and each kind of warning on a small policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.authz.lint import lint
from app.authz.source import Issue, read_policy
from tests.conftest import POLICY_DIR


def lint_lines(tmp_path: Path, *lines: str) -> list[Issue]:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text("\n".join(lines) + "\n")
    return lint(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))


def codes(issues: list[Issue]) -> list[tuple[str, str, str]]:
    return [(i.severity, i.location, i.code) for i in issues]


def test_shipped_policy_is_clean() -> None:
    assert lint(read_policy(POLICY_DIR / "model.conf", POLICY_DIR / "policy.csv")) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x, analyst, *, /v1/*, GET, allow", "unknown line type"),
        ("p, analyst, *, /v1/*, GET", "p needs 5 fields, got 4"),
        ("p, analyst, *, /v1/*, GET, allow  # note", "inline comments"),
        ("p, analyst, *, /v1/*, GET, permit", "effect 'permit'"),
        ("p, analyst, *, v1/relative, GET, allow", "must be a path pattern"),
        ("p, analyst, *, /v1/*/findings, GET, allow", "a final /*"),
        ("p, analyst, *, /v1/acme*, GET, allow", "a final /*"),
        ("p, analyst, Acme, /v1/*, GET, allow", "engagement 'Acme'"),
        ('p, analyst, *, "/v1/a,b", GET, allow', "brackets and quotes"),
        ("g, bob, analyst", "g needs 3 fields"),
        ("g3, acme-2026, archived", "g3 lines read"),
        ("g, bob, , acme-2026", "empty field"),
    ],
)
def test_syntax_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    issues = lint_lines(tmp_path, "# header", "", line)
    assert len(issues) == 1
    assert issues[0].severity == "error"
    assert issues[0].location == "policy.csv:3"
    assert message in issues[0].message


def test_changed_model_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text(
        (POLICY_DIR / "model.conf").read_text().replace('p.act == "*"', "true")
    )
    (tmp_path / "policy.csv").write_text("")
    issues = lint(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    assert codes(issues) == [("error", "model.conf:1", "unsupported_model")]


def test_each_warning(tmp_path: Path) -> None:
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, POST, allow",  # 1 shadowed by 5 via lead
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",  # 3 duplicate
        "p, ghost, *, /v1/*, GET, allow",  # 4 never granted
        "p, viewer, *, /v1/*, POST, deny",
        "g, analyst, viewer, *",
        "g, alice, analyst, acme-2026",
        "g, bob, nobody, acme-2026",  # 8 unknown role
        "p, analyst, globex, /v1/*, GET, allow",  # 9 engagement never granted
        "g3, initech-2020, closed",  # 10 engagement never granted
        "g, rita, closed_writer, acme-2026",  # 11 closed_writer per engagement
        "g, viewer-x, viewer, acme-2026",
    )
    assert codes(issues) == [
        ("warning", "policy.csv:1", "shadowed_by_deny"),
        ("warning", "policy.csv:3", "duplicate"),
        ("warning", "policy.csv:4", "role_never_granted"),
        ("warning", "policy.csv:8", "unknown_role"),
        ("note", "policy.csv:9", "engagement_unreferenced"),
        ("note", "policy.csv:10", "engagement_unreferenced"),
        ("warning", "policy.csv:11", "closed_writer_not_global"),
    ]
    assert "policy.csv:5 denies the same requests" in issues[0].message
    assert str(issues[1]) == (
        "policy.csv:3: warning: duplicate of policy.csv:2: delete one of them [duplicate]"
    )


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("shadowed_by_deny", "narrow that deny, or delete this allow"),
        ("role_never_granted", "if it is a role, grant it"),
        ("unknown_role", "add a p line for 'nobody'"),
        ("closed_writer_not_global", "write g2, rita, closed_writer instead"),
        ("engagement_unreferenced", "check the engagement id"),
        ("action_case", "write GET"),
    ],
)
def test_every_message_says_what_to_change(tmp_path: Path, code: str, advice: str) -> None:
    issues = lint_lines(
        tmp_path,
        "p, viewer, *, /v1/x, GET, allow",
        "p, viewer, *, /v1/*, GET, deny",
        "p, ghost, *, /v1/*, GET, allow",
        "g, bob, nobody, acme-2026",
        "g, rita, closed_writer, acme-2026",
        "g, alice, viewer, acme-2026",
        "p, viewer, globex, /v1/y, get, allow",
    )
    assert advice in next(i.message for i in issues if i.code == code)


def test_a_per_subject_rule_is_valid_when_the_subject_is_granted(tmp_path: Path) -> None:
    """'Block this user now' must not break CI: alice holds roles, so she is a subject."""
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, POST, allow",
        "g, alice, analyst, acme-2026",
        "p, alice, globex-cloud, /v1/engagements/:e/findings, POST, deny",
    )
    assert [i for i in issues if i.severity != "note"] == []


def test_a_per_subject_rule_is_valid_when_a_suite_names_the_subject(tmp_path: Path) -> None:
    lines = ("p, zoe, *, /v1/engagements/:e/findings, GET, allow",)
    assert codes(lint_lines(tmp_path, *lines)) == [
        ("warning", "policy.csv:1", "role_never_granted")
    ]
    source = read_policy(tmp_path / "model.conf", tmp_path / "policy.csv")
    assert [i for i in lint(source, {"zoe"}) if i.severity != "note"] == []
