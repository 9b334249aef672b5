"""Policy test suites: YAML files in ``<policy dir>/tests/`` that admins write.

Each file holds a suite of cases (subject, groups, engagement, method, path,
expected decision). ``run_suites`` decides every case on a ``PolicyEngine``
without logging, reports readable failures and rule coverage (``p`` lines no
case matched), and ``junit_xml`` renders the report for CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from xml.etree import ElementTree

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.authz.compiled import Rule
from app.authz.fields import DecisionPath, EngagementOrGlobal
from app.authz.policy import Decision, PolicyEngine
from app.authz.source import CLOSED_WRITER, PolicyLine
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN

TESTS_DIR = "tests"


class SuiteError(ValueError):
    """A suite file that cannot be read or does not validate."""


class Case(BaseModel):
    """One expected decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=200)]
    subject: Annotated[str, Field(pattern=SUBJECT_PATTERN.pattern)]
    groups: tuple[Annotated[str, Field(pattern=GROUP_PATTERN.pattern)], ...] = ()
    engagement: EngagementOrGlobal
    method: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z_]{0,31}$")]
    path: DecisionPath
    expect: Literal["allow", "deny"]


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: Annotated[str, Field(min_length=1, max_length=200)]
    cases: Annotated[list[Case], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    suite: str
    case: Case
    decision: Decision

    @property
    def passed(self) -> bool:
        return (self.decision.allowed and self.case.expect == "allow") or (
            not self.decision.allowed and self.case.expect == "deny"
        )

    def describe_failure(self) -> str:
        c, d = self.case, self.decision
        got = "allow" if d.allowed else "deny"
        rule = f"{d.rule_location} ({', '.join(d.matched_rule)})" if d.rule_location else "none"
        return (
            f"{self.file}: {self.suite} / {c.name}: expected {c.expect}, got {got}\n"
            f"    request: {c.subject} groups={list(c.groups)} {c.method} {c.path}"
            f" in {c.engagement}\n"
            f"    reason: {d.reason}; matched rule: {rule}; role chain: {' > '.join(d.role_chain)}"
        )


@dataclass(frozen=True, slots=True)
class SuiteReport:
    results: tuple[CaseResult, ...]
    uncovered: tuple[Rule, ...]

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]


def load_suites(policy_dir: Path) -> list[tuple[str, Suite]]:
    """Every ``tests/*.yaml`` suite under ``policy_dir``, sorted by name; ``SuiteError`` if bad."""
    suites = []
    for path in sorted((policy_dir / TESTS_DIR).glob("*.y*ml")):
        name = f"{TESTS_DIR}/{path.name}"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            suites.append((name, Suite.model_validate(data)))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SuiteError(f"{name}: cannot read: {exc}") from None
        except ValidationError as exc:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise SuiteError(f"{name}: {where}") from None
    return suites


def run_suites(engine: PolicyEngine, suites: Sequence[tuple[str, Suite]]) -> SuiteReport:
    """Decide every case; coverage counts a ``p`` line once it is some case's matched rule."""
    results = []
    covered: set[str] = set()
    for file, suite in suites:
        for case in suite.cases:
            decision = engine.explain(
                case.subject, case.engagement, case.path, case.method, case.groups
            )
            if decision.rule_location:
                covered.add(decision.rule_location)
            results.append(CaseResult(file, suite.suite, case, decision))
    uncovered = tuple(r for r in engine.compiled.rules if r.location not in covered)
    return SuiteReport(tuple(results), uncovered)


def unused_grants(lines: Sequence[PolicyLine], report: SuiteReport) -> list[PolicyLine]:
    """``g``/``g2`` lines whose link appears in no case's role chain (any engagement).

    ``closed_writer`` grants are left out: that capability is never a rule's
    role, so no chain shows it; the closed-engagement cases exercise it.
    """
    used = {
        pair
        for result in report.results
        for pair in zip(result.decision.role_chain, result.decision.role_chain[1:], strict=False)
    }
    return [
        line
        for line in lines
        if line.ptype in ("g", "g2")
        and line.fields[1] != CLOSED_WRITER
        and (line.fields[0], line.fields[1]) not in used
    ]


def junit_xml(report: SuiteReport) -> str:
    """The report as JUnit XML: one testsuite per suite, one testcase per case."""
    root = ElementTree.Element("testsuites", name="policy")
    by_suite: dict[str, ElementTree.Element] = {}
    for result in report.results:
        suite = by_suite.get(result.suite)
        if suite is None:
            suite = ElementTree.SubElement(root, "testsuite", name=result.suite, file=result.file)
            by_suite[result.suite] = suite
        case = ElementTree.SubElement(
            suite, "testcase", name=result.case.name, classname=result.suite
        )
        if not result.passed:
            failure = ElementTree.SubElement(case, "failure", message="unexpected decision")
            failure.text = result.describe_failure()
    for suite in by_suite.values():
        cases = list(suite)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if len(c))))
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
