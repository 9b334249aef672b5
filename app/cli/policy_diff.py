"""``gateway policy diff OLD NEW [--log FILE] [--exit-code]``: the decisions a change flips.

``--exit-code`` makes any flip exit 1, so CI can gate a change on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.authz.diff import Flip, LogReading, flips, probes_from_suites, read_log
from app.authz.suite import SuiteError
from app.cli.policy_io import fail, read_directory
from app.core.errors import ConfigError


def register(actions: Any) -> None:
    cmd = actions.add_parser("diff", help="requests whose decision a change flips")
    cmd.add_argument("old", type=Path)
    cmd.add_argument("new", type=Path)
    cmd.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="replay the decisions in a gateway log (stdout or the decision-log file)",
    )
    cmd.add_argument("--exit-code", action="store_true", help="exit 1 when any decision flips")
    cmd.set_defaults(handler=run_diff)


def _print_flip(flip: Flip) -> None:
    p, old, new = flip.probe, flip.old, flip.new
    before = "allow" if old.allowed else "deny"
    after = "allow" if new.allowed else "deny"
    groups = f" groups={list(p.groups)}" if p.groups else ""
    closed = " (engagement closed)" if p.closed else ""
    print(f"{before} -> {after}: {p.subject}{groups} {p.action} {p.path} in {p.engagement}{closed}")
    print(f"    from {p.origin}")
    print(f"    old: {old.reason} {', '.join(old.matched_rule) or ''}".rstrip())
    print(f"    new: {new.reason} {', '.join(new.matched_rule) or ''}".rstrip())


def run_diff(args: argparse.Namespace) -> int:
    reading = LogReading()
    try:
        # Each directory's policy and suites of one version, as a reload reads them.
        old_read, new_read = read_directory(args.old), read_directory(args.new)
        old, new = old_read.engine, new_read.engine
        probes = [
            *probes_from_suites(args.old, old_read.cases()),
            *probes_from_suites(args.new, new_read.cases()),
        ]
        if args.log:
            reading = read_log(args.log)
    except (ConfigError, SuiteError, OSError) as exc:
        return fail(str(exc))
    changed = flips(old, new, [*probes, *reading.probes])
    for flip in changed:
        _print_flip(flip)
    if args.log:
        print(reading.summary(args.log.name))
    print(f"{len(changed)} decision(s) flip between {old.revision} and {new.revision}")
    return 1 if args.exit_code and changed else 0
