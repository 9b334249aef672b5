"""Policy test suites: decide every case, report failures readably, and what no case covers.

Cases come from ``app.authz.suite_files``. ``run_suites`` decides each on a
``PolicyEngine`` without logging. A case passes when the decision, and the
``reason`` and ``matched_rule`` it asserts, are as expected. Coverage names the
``p`` lines no case's decision matched and the ``g``/``g2``/``g3`` lines no
case's decision went through (the links of its role chain, the ``closed_writer``
grant a write in a closed engagement used, the ``g3`` line that closed it).
``junit_xml`` renders the report for CI.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree

from app.authz.closed import ClosedFact
from app.authz.compiled import CompiledPolicy, Rule, chain_of
from app.authz.policy import Decision, PolicyEngine
from app.authz.source import CLOSED_WRITER, GLOBAL_DOMAIN, READ_ACTIONS, clip
from app.authz.suite_files import (
    TESTS_DIR,
    PolicyCase,
    SuiteError,
    load_suites,
    read_suites,
)

__all__ = [
    "TESTS_DIR",
    "CaseResult",
    "PolicyCase",
    "SuiteError",
    "SuiteReport",
    "junit_xml",
    "load_suites",
    "read_suites",
    "run_suites",
]


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    decision: Decision

    @property
    def passed(self) -> bool:
        c, d = self.case, self.decision
        return (
            ("allow" if d.allowed else "deny") == c.expect
            and (c.reason is None or c.reason == d.reason)
            and (c.matched_rule is None or c.matched_rule == d.matched_rule)
        )

    def describe_failure(self) -> str:
        c, d = self.case, self.decision
        expected = c.expect + (f", reason {c.reason}" if c.reason else "")
        if c.matched_rule is not None:
            expected += f", rule {clip(', '.join(c.matched_rule)) or 'none'}"
        got = ("allow" if d.allowed else "deny") + f", reason {d.reason}"
        rule = (
            f"{d.rule_location} ({clip(', '.join(d.matched_rule))})" if d.rule_location else "none"
        )
        lines = [
            f"{c.location}: {c.suite} / {c.name}: expected {expected}; got {got}",
            f"    request: {c.subject} groups={clip(str(list(c.groups)))} {c.method} {clip(c.path)}"
            f" in {c.engagement}",
            f"    matched rule: {rule}; role chain: {' > '.join(d.role_chain) or '-'}",
        ]
        if d.closed is not None:
            lines.append(f"    engagement: {d.closed.describe()}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SuiteReport:
    results: tuple[CaseResult, ...]
    uncovered: tuple[Rule, ...]
    uncovered_links: tuple[tuple[str, str], ...]  # (file:line, line text)
    links: int

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]


def decide_case(engine: PolicyEngine, case: PolicyCase) -> Decision:
    closed = ClosedFact(case.engagement, "case", case.location) if case.closed else None
    return engine.explain(
        case.subject, case.engagement, case.path, case.method, case.groups, closed
    )


def run_suites(engine: PolicyEngine, cases: Sequence[PolicyCase]) -> SuiteReport:
    """Decide every case; coverage counts the lines each decision went through."""
    results = tuple(CaseResult(case, decide_case(engine, case)) for case in cases)
    compiled = engine.compiled
    covered_rules = {r.decision.rule_location for r in results}
    used: set[str] = set()
    for result in results:
        used |= links_used(compiled, result.decision)
    links = {loc: _text(key) for key, loc in compiled.link_locations.items()}
    return SuiteReport(
        results,
        tuple(r for r in compiled.rules if r.location not in covered_rules),
        tuple(sorted(((loc, text) for loc, text in links.items() if loc not in used), key=_order)),
        len(links),
    )


def links_used(compiled: CompiledPolicy, decision: Decision) -> set[str]:
    """``file:line`` of every ``g``/``g2``/``g3`` line this decision went through."""
    used = set()
    if decision.closed is not None and decision.closed.source == "policy":
        used.add(decision.closed.ref)
    chain, dom = decision.role_chain, decision.engagement
    if chain:
        in_domain = compiled.domain_roles(chain[0], dom)
        if chain[-1] in in_domain and chain_of(in_domain, chain[-1]) == chain:
            used |= {compiled.g_link_location(a, b, dom)[1] for a, b in itertools.pairwise(chain)}
        else:
            used |= _g2_links(compiled, chain)
        if decision.allowed and decision.closed is not None and decision.action not in READ_ACTIONS:
            global_ = compiled.global_roles(chain[0])
            if CLOSED_WRITER in global_:
                used |= _g2_links(compiled, chain_of(global_, CLOSED_WRITER))
    return used


def _g2_links(compiled: CompiledPolicy, chain: tuple[str, ...]) -> set[str]:
    return {
        compiled.link_locations.get(("g2", GLOBAL_DOMAIN, a, b), "?")
        for a, b in itertools.pairwise(chain)
    }


def _text(key: tuple[str, str, str, str]) -> str:
    ptype, dom, child, parent = key
    return f"{ptype}, {child}, {parent}" + (f", {dom}" if ptype == "g" else "")


def _order(item: tuple[str, str]) -> tuple[str, int]:
    name, _, line = item[0].rpartition(":")
    return name, int(line) if line.isdigit() else 0


def junit_xml(report: SuiteReport) -> str:
    """The report as JUnit XML: one testsuite per suite, one testcase per case."""
    root = ElementTree.Element("testsuites", name="policy")
    by_suite: dict[str, ElementTree.Element] = {}
    for result in report.results:
        name = result.case.suite
        suite = by_suite.get(name)
        if suite is None:
            suite = ElementTree.SubElement(root, "testsuite", name=name, file=result.case.file)
            by_suite[name] = suite
        case = ElementTree.SubElement(suite, "testcase", name=result.case.name, classname=name)
        if not result.passed:
            failure = ElementTree.SubElement(case, "failure", message="unexpected decision")
            failure.text = result.describe_failure()
    for suite in by_suite.values():
        cases = list(suite)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if len(c))))
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True)
