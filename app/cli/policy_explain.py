"""``gateway policy explain | who-can | what-can``: one decision explained, and the two queries.

The engagement is the path's, as the gateway decides it; ``--engagement`` may
be given and must then agree. ``--closed`` decides as if the engagement state
(the close saga) held the engagement closed; asked of a gateway-wide path (domain
``*``, which no close reaches) it is an error, and ``what-can`` listing every
engagement leaves the ``*`` row open.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.authz.closed import ClosedFact
from app.authz.explain import Explanation, explain
from app.authz.fields import FieldError, check_action, check_closable, resolve_engagement
from app.authz.policy import Decision
from app.authz.query import WhatCan, WhoCan, engagements_for, what_can, who_can
from app.authz.reference import casbin_enforcer_of, reference_decide
from app.authz.source import GLOBAL_DOMAIN
from app.cli.policy_io import PolicyRead, fail, load_engine, read_directory, split_groups
from app.core.errors import ConfigError, InvalidPath
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN
from app.edge.paths import normalize_path

MAX_GROUPS = 32  # as the admin API's explain and query (admin_query_schemas.Groups)


def register(actions: Any, default_dir: Path) -> None:
    cmd = actions.add_parser("explain", help="decide one request and show why")
    cmd.add_argument("method", help="HTTP method (upper case) or named action")
    cmd.add_argument("path")
    cmd.add_argument("--subject", required=True)
    _common(cmd, default_dir, groups=True)
    cmd.add_argument("--casbin", action="store_true", help="also ask plain pycasbin")
    cmd.set_defaults(handler=run_explain)
    who = actions.add_parser("who-can", help="subjects, groups and roles allowed a request")
    who.add_argument("action", help="HTTP method (upper case) or named action")
    who.add_argument("object", metavar="PATH")
    _common(who, default_dir, groups=False)
    who.set_defaults(handler=run_who_can)
    what = actions.add_parser("what-can", help="objects and actions a subject is allowed")
    what.add_argument("subject")
    _common(what, default_dir, groups=True)
    what.set_defaults(handler=run_what_can)


def _common(cmd: Any, default_dir: Path, groups: bool) -> None:
    if groups:  # what-can: no path to agree with
        cmd.add_argument("--engagement", help="only this engagement (* for /admin routes)")
    else:
        cmd.add_argument(
            "--engagement", help="must agree with the path's engagement (* for /admin)"
        )
    if groups:
        cmd.add_argument("--groups", default="", help="comma-separated X-Auth-Groups")
    cmd.add_argument("--closed", action="store_true", help="as if the close saga closed it")
    cmd.add_argument("--dir", type=Path, default=default_dir)


def _request(args: argparse.Namespace, method: str, raw_path: str) -> tuple[str, str, str]:
    """``(engagement, path, action)`` as the gateway would decide them, or ``FieldError``."""
    try:
        path = normalize_path(raw_path.partition("?")[0])
    except InvalidPath as exc:
        raise FieldError(exc.detail) from None
    return resolve_engagement(path, args.engagement), path, check_action(method)


def _what_if(args: argparse.Namespace, engagement: str) -> ClosedFact | None:
    """``--closed`` as the close saga's fact; ``FieldError`` for ``*``, which none reaches."""
    if not args.closed:
        return None
    return ClosedFact(check_closable(engagement, "--closed"), "case", "--closed")


def _identity(subject: str, raw_groups: str) -> tuple[str, ...]:
    """The groups, after checking subject and groups as the admin API does (``FieldError``)."""
    if not SUBJECT_PATTERN.fullmatch(subject):
        raise FieldError(f"subject {subject!r} must match {SUBJECT_PATTERN.pattern}")
    groups = split_groups(raw_groups)
    bad = [g for g in groups if not GROUP_PATTERN.fullmatch(g)]
    if bad:
        raise FieldError(f"group {bad[0]!r} must match {GROUP_PATTERN.pattern}")
    if len(groups) > MAX_GROUPS:
        raise FieldError(f"at most {MAX_GROUPS} groups")
    return groups


def run_explain(args: argparse.Namespace) -> int:
    try:
        groups = _identity(args.subject, args.groups)
        request = _request(args, args.method, args.path)
        closed = _what_if(args, request[0])
        read = read_directory(args.dir)
    except FieldError as exc:
        return fail(str(exc))
    except ConfigError as exc:
        return fail(exc.detail)
    dom, path, action = request
    answer = explain(read.engine, args.subject, groups, request, closed)
    print(f"request: {args.subject} groups={list(groups)} {action} {path} in {dom}")
    print("\n".join(describe(answer)))
    if args.casbin:
        allowed, rule = reference_decide(
            _casbin(read), read.engine.compiled.role_names, args.subject, groups, request
        )
        print(f"casbin: {'allow' if allowed else 'deny'}, rule: {', '.join(rule) or 'none'}")
        closed = answer.decision.closed
        if closed is not None and closed.source != "policy":
            # Plain pycasbin reads the files only: a close from elsewhere is not in them.
            origin = closed.ref if closed.source == "case" else closed.source
            print(
                "casbin: asked without the engagement closed (it reads only the policy's "
                f"own g3 lines; this close comes from {origin}), so it may disagree"
            )
    return 0


def _casbin(read: PolicyRead) -> Any:
    """Plain pycasbin on the very bytes explained: a second read of the paths could
    meet another version of the files (an edit or a directory swap since)."""
    model, policy = read.snapshot.model.data, read.snapshot.policy.data
    assert model is not None  # read_directory parsed both
    assert policy is not None
    return casbin_enforcer_of(model, policy)


def describe_decision(decision: Decision) -> list[str]:
    rule = ", ".join(decision.matched_rule) or "none"
    where = f" ({decision.rule_location})" if decision.rule_location else ""
    return [
        f"decision: {'allow' if decision.allowed else 'deny'}",
        f"reason: {decision.reason}",
        f"matched rule: {rule}{where}",
        f"role chain: {' > '.join(decision.role_chain) or '-'}",
        f"revision: {decision.revision}",
        f"engagement: {decision.closed.describe() if decision.closed else 'open'}",
    ]


def describe(answer: Explanation) -> list[str]:
    d = answer.decision
    out = describe_decision(d)
    out.append(f"roles in {d.engagement}: " + ("none" if not answer.roles_here else ""))
    out += [f"  {role.describe()}" for role in answer.roles_here]
    out.append("global roles: " + ("none" if not answer.roles_global else ""))
    out += [f"  {role.describe()}" for role in answer.roles_global]
    if not d.allowed:
        out.append("nearly matched: " + ("nothing" if not answer.near_misses else ""))
        out += [f"  {miss.describe()}" for miss in answer.near_misses]
    return [line.rstrip() for line in out]


def run_who_can(args: argparse.Namespace) -> int:
    try:
        request = _request(args, args.action, args.object)
        closed = _what_if(args, request[0])
        engine = load_engine(args.dir)
    except FieldError as exc:
        return fail(str(exc))
    except ConfigError as exc:
        return fail(exc.detail)
    answer = who_can(engine, request, closed)
    print("\n".join(describe_who_can(answer)))
    return 0


def describe_who_can(answer: WhoCan) -> list[str]:
    closed = f"; {answer.closed.describe()}" if answer.closed else ""
    out = [
        f"who may {answer.action} {answer.obj} in {answer.engagement} "
        f"(revision {answer.revision}){closed}"
    ]
    for kind in ("subject", "group", "role"):
        found = answer.of_kind(kind)
        out.append(f"{kind}s: " + ("none" if not found else ""))
        for grantee in found:
            rule = grantee.rule
            out.append(
                f"  {grantee.name}: {rule.location}: p, {', '.join(rule.fields)}"
                f" (via {' > '.join(grantee.role_chain)})"
            )
    return [line.rstrip() for line in out]


def run_what_can(args: argparse.Namespace) -> int:
    try:
        groups = _identity(args.subject, args.groups)
        engine = load_engine(args.dir)
        engagements = engagements_for(engine, args.subject, groups, args.engagement)
        # Listing every engagement, --closed closes each of them but *, which no close
        # reaches; asked of * alone it is an error, as for explain.
        closes = {
            engagement: _what_if(args, engagement)
            for _, engagement in engagements
            if engagement != GLOBAL_DOMAIN or args.engagement is not None
        }
    except FieldError as exc:
        return fail(str(exc))
    except ConfigError as exc:
        return fail(exc.detail)
    print(f"what {args.subject} groups={list(groups)} may do (revision {engine.revision})")
    for label, engagement in engagements:
        answer = what_can(engine, args.subject, groups, engagement, closes.get(engagement))
        print("\n".join(describe_what_can(answer, label)))
    return 0


def describe_what_can(answer: WhatCan, label: str) -> list[str]:
    closed = f"; {answer.closed.describe()}" if answer.closed else ""
    out = [f"in {label}{closed}:"]
    if answer.refused:
        return [*out, f"  nothing: {answer.refused} (a subject named like a role is refused)"]
    if not answer.allows:
        out.append("  nothing allowed")
    for p in answer.allows:
        reads = " (reads only: the engagement is closed)" if p.reads_only else ""
        out.append(
            f"  allow {p.rule.act} {p.rule.obj}{reads}: {p.rule.location}"
            f" via {' > '.join(p.role_chain)}"
        )
    for p in answer.denies:
        out.append(
            f"  except {p.rule.act} {p.rule.obj}: denied by {p.rule.location}"
            f" via {' > '.join(p.role_chain)}"
        )
    return out
