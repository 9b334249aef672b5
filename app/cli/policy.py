"""``gateway policy``: lint, test, explain and diff policy directories, for admins.

Exit codes: 0 clean, 1 findings (lint errors, failed tests), 2 unusable input;
``diff`` exits 0 whatever it finds (flips are information, not failures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.authz.diff import DecisionLogError, Flip, flips, probes_from_log, probes_from_suites
from app.authz.lint import lint
from app.authz.policy import Decision, PolicyEngine
from app.authz.reference import casbin_enforcer, reference_decide
from app.authz.source import CLOSED_WRITER, PolicySource, read_policy
from app.authz.suite import (
    SuiteError,
    SuiteReport,
    junit_xml,
    load_suites,
    run_suites,
    unused_grants,
)
from app.core.config import PolicySettings
from app.core.errors import ConfigError, InvalidPath
from app.edge.paths import normalize_path

DEFAULT_DIR = Path("policies")


def register(commands: Any) -> None:
    parser = commands.add_parser("policy", help="lint, test, explain and diff policies")
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    lint_cmd = actions.add_parser("lint", help="syntax errors and likely mistakes")
    lint_cmd.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    lint_cmd.add_argument("--strict", action="store_true", help="warnings fail too")
    lint_cmd.set_defaults(handler=run_lint)
    test_cmd = actions.add_parser("test", help="run the YAML suites in DIR/tests")
    test_cmd.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    test_cmd.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML")
    test_cmd.set_defaults(handler=run_test)
    _register_explain(actions)
    diff_cmd = actions.add_parser("diff", help="requests whose decision a change flips")
    diff_cmd.add_argument("old", type=Path)
    diff_cmd.add_argument("new", type=Path)
    diff_cmd.add_argument("--log", type=Path, metavar="DECISIONS.jsonl")
    diff_cmd.set_defaults(handler=run_diff)


def _register_explain(actions: Any) -> None:
    cmd = actions.add_parser("explain", help="decide one request and show why")
    cmd.add_argument("method")
    cmd.add_argument("path")
    cmd.add_argument("--subject", required=True)
    cmd.add_argument("--engagement", required=True, help="engagement id, or * for /admin")
    cmd.add_argument("--groups", default="", help="comma-separated X-Auth-Groups")
    cmd.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    cmd.add_argument("--casbin", action="store_true", help="also ask plain pycasbin")
    cmd.set_defaults(handler=run_explain)


def _fail(message: str) -> int:
    print(f"gateway policy: {message}", file=sys.stderr)
    return 2


def _source(directory: Path) -> PolicySource:
    """The parsed files, errors included: lint reports them rather than stopping."""
    settings = PolicySettings(dir=directory)
    for path in (settings.model_path, settings.policy_path):
        if not path.is_file():
            raise ConfigError(f"{path} is not a readable file")
    return read_policy(settings.model_path, settings.policy_path)


def run_lint(args: argparse.Namespace) -> int:
    try:
        issues = lint(_source(args.dir))
    except (ConfigError, OSError, UnicodeDecodeError) as exc:
        return _fail(str(exc))
    for issue in issues:
        print(issue)
    errors = sum(1 for i in issues if i.severity == "error")
    warnings = len(issues) - errors
    print(f"{args.dir}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors or (args.strict and warnings) else 0


def _engine(directory: Path) -> PolicyEngine:
    return PolicyEngine.load(PolicySettings(dir=directory))


def run_test(args: argparse.Namespace) -> int:
    try:
        engine = _engine(args.dir)
        report = run_suites(engine, load_suites(args.dir))
    except (ConfigError, SuiteError) as exc:
        return _fail(str(exc))
    for failure in report.failures:
        print(failure.describe_failure())
    total, failed = len(report.results), len(report.failures)
    print(f"{args.dir}: {total - failed} passed, {failed} failed (revision {engine.revision})")
    rules = len(engine.compiled.rules)
    print(f"rule coverage: {rules - len(report.uncovered)}/{rules} p lines matched by a case")
    for rule in report.uncovered:
        print(f"  not exercised: {rule.location}: p, {', '.join(rule.fields)}")
    _print_grant_coverage(args.dir, report)
    if args.junit:
        args.junit.write_text(junit_xml(report), encoding="utf-8")
    if total == 0:
        print(f"{args.dir}: no test cases found in tests/*.yaml", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _print_grant_coverage(directory: Path, report: SuiteReport) -> None:
    lines = _source(directory).lines
    grants = [g for g in lines if g.ptype in ("g", "g2") and g.fields[1] != CLOSED_WRITER]
    unused = unused_grants(lines, report)
    used = len(grants) - len(unused)
    print(f"grant coverage: {used}/{len(grants)} g/g2 lines used in a case's role chain")
    for line in unused:
        print(f"  not exercised: {line.location}: {line.text}")


def _describe(decision: Decision) -> list[str]:
    rule = ", ".join(decision.matched_rule) or "none"
    where = f" ({decision.rule_location})" if decision.rule_location else ""
    return [
        f"decision: {'allow' if decision.allowed else 'deny'}",
        f"reason: {decision.reason}",
        f"matched rule: {rule}{where}",
        f"role chain: {' > '.join(decision.role_chain) or '-'}",
        f"revision: {decision.revision}",
    ]


def run_explain(args: argparse.Namespace) -> int:
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    try:
        path = normalize_path(args.path.partition("?")[0])
        engine = _engine(args.dir)
    except (InvalidPath, ConfigError) as exc:
        return _fail(exc.detail)
    decision = engine.explain(args.subject, args.engagement, path, args.method, groups)
    print(
        f"request: {args.subject} groups={list(groups)} {args.method} {path} in {args.engagement}"
    )
    print("\n".join(_describe(decision)))
    if args.casbin:
        enforcer = casbin_enforcer(*engine.files)
        request = (args.engagement, path, args.method)
        allowed, rule = reference_decide(
            enforcer, engine.compiled.role_names, args.subject, groups, request
        )
        print(f"casbin: {'allow' if allowed else 'deny'}, rule: {', '.join(rule) or 'none'}")
    return 0


def _print_flip(flip: Flip) -> None:
    p, old, new = flip.probe, flip.old, flip.new
    before = "allow" if old.allowed else "deny"
    after = "allow" if new.allowed else "deny"
    groups = f" groups={list(p.groups)}" if p.groups else ""
    print(f"{before} -> {after}: {p.subject}{groups} {p.action} {p.path} in {p.engagement}")
    print(f"    from {p.origin}")
    print(f"    old: {old.reason} {', '.join(old.matched_rule) or ''}".rstrip())
    print(f"    new: {new.reason} {', '.join(new.matched_rule) or ''}".rstrip())


def run_diff(args: argparse.Namespace) -> int:
    try:
        old, new = _engine(args.old), _engine(args.new)
        probes = [*probes_from_suites(args.old), *probes_from_suites(args.new)]
        if args.log:
            probes += probes_from_log(args.log)
    except (ConfigError, SuiteError, DecisionLogError, OSError) as exc:
        return _fail(str(exc))
    changed = flips(old, new, probes)
    for flip in changed:
        _print_flip(flip)
    print(f"{len(changed)} decision(s) flip between {old.revision} and {new.revision}")
    return 0
