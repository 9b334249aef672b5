"""``gateway policy``: lint, test, explain, query (who-can, what-can), diff policies.

Exit codes: 0 clean, 1 findings (lint errors, or warnings with ``--strict``;
failed tests; flips with ``diff --exit-code``), 2 unusable input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from app.authz.lint import lint
from app.authz.routes import RouteShape
from app.authz.source import Issue
from app.authz.suite import SuiteError, SuiteReport, junit_xml, run_suites
from app.authz.suite_files import parse_suites
from app.cli import policy_diff, policy_explain
from app.cli.policy_io import DEFAULT_DIR, fail, read_directory, read_source, snapshot_of
from app.core.config import CONFIG_FILE_ENV, load_settings
from app.core.errors import ConfigError


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "policy", help="lint, test, explain, who-can, what-can and diff policies"
    )
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    lint_cmd = actions.add_parser("lint", help="syntax errors and likely mistakes")
    lint_cmd.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    lint_cmd.add_argument("--strict", action="store_true", help="warnings fail too")
    lint_cmd.add_argument(
        "--config",
        metavar="FILE",
        help="the gateway's settings: also warn of rules no route is decided as (no_route)",
    )
    lint_cmd.set_defaults(handler=run_lint)
    test_cmd = actions.add_parser("test", help="run the YAML suites in DIR/tests")
    test_cmd.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    test_cmd.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML")
    test_cmd.set_defaults(handler=run_test)
    policy_explain.register(actions, DEFAULT_DIR)
    policy_diff.register(actions)


def run_lint(args: argparse.Namespace) -> int:
    try:
        snapshot = snapshot_of(args.dir)  # policy and suites of one version
        source = read_source(snapshot)
    except ConfigError as exc:
        return fail(str(exc))
    routes = None
    if args.config:
        try:
            routes = _route_shapes(args.config)
        except ConfigError as exc:
            return fail(f"--config: {exc.detail}")
    cases, suite_issues = parse_suites(snapshot.suites)
    if not cases and not suite_issues:
        # Lint's errors are what the gateway refuses to load, and it refuses this at
        # start-up and on reload (app.authz.store): with no suite, any edit would pass.
        suite_issues = [_NO_TEST_CASES]
    issues = [*lint(source, {case.subject for case in cases}, routes), *suite_issues]
    for issue in issues:
        print(issue)
    count = {level: sum(1 for i in issues if i.severity == level) for level in ("error", "warning")}
    notes = len(issues) - sum(count.values())
    print(f"{args.dir}: {count['error']} error(s), {count['warning']} warning(s), {notes} note(s)")
    return 1 if count["error"] or (args.strict and count["warning"]) else 0


_NO_TEST_CASES = Issue(
    "error",
    "tests/*.yaml",
    "no_test_cases",
    "no test case: the gateway refuses to load a policy directory without one (at start-up "
    "and on reload), since with no suite any edit would pass its gate; add a suite",
)


def _route_shapes(config: str) -> list[RouteShape]:
    """What the gateway configured by ``config`` decides (its typed, pass-through and
    authorizer routes); imported here, so the other policy commands need no app."""
    from app.api.route_shapes import route_shapes

    if not Path(config).is_file():
        raise ConfigError(f"{config}: no such file")
    os.environ[CONFIG_FILE_ENV] = config
    return route_shapes(load_settings())


def run_test(args: argparse.Namespace) -> int:
    try:
        read = read_directory(args.dir)  # policy and suites of one version, as a reload
        report = run_suites(read.engine, read.cases())
    except (ConfigError, SuiteError) as exc:
        return fail(str(exc))
    for failure in report.failures:
        print(failure.describe_failure())
    total, failed = len(report.results), len(report.failures)
    print(f"{args.dir}: {total - failed} passed, {failed} failed (revision {read.engine.revision})")
    print("files tested, as read together (GET /admin/policy lists the loaded ones so):")
    print("\n".join(read.files_lines()))
    print_coverage(report, len(read.engine.compiled.rules))
    if args.junit:
        try:
            args.junit.write_text(junit_xml(report), encoding="utf-8")
        except OSError as exc:  # not "tests failed" (1): CI must tell the two apart
            return fail(f"--junit {args.junit}: cannot write: {exc.strerror}")
    if total == 0:
        print(f"{args.dir}: no test cases found in tests/*.yaml", file=sys.stderr)
        return 1
    return 1 if failed else 0


def print_coverage(report: SuiteReport, rules: int) -> None:
    """The rules and grants no case went through, named by ``file:line``."""
    print(f"rule coverage: {rules - len(report.uncovered)}/{rules} p lines matched by a case")
    for rule in report.uncovered:
        print(f"  not exercised: {rule.location}: p, {', '.join(rule.fields)}")
    links, unused = report.links, len(report.uncovered_links)
    print(f"grant coverage: {links - unused}/{links} g/g2/g3 lines used by a case's decision")
    for location, text in report.uncovered_links:
        print(f"  not exercised: {location}: {text}")
