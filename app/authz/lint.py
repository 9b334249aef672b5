"""``gateway policy lint``: errors block a load; warnings point at likely mistakes.

Errors come from parsing (``app.authz.source``). Warnings: duplicate lines,
unknown roles (granted but with no rule anywhere up their inheritance), rules
shadowed by a deny of the same role, roles never granted, engagements never
referenced by a grant, and ``closed_writer`` granted per engagement (it only
counts as a global role).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from app.authz.source import CLOSED_WRITER, GLOBAL_DOMAIN, Issue, PolicyLine, PolicySource

GROUP_PREFIX = "group:"


def lint(source: PolicySource) -> list[Issue]:
    """Every error and warning, errors first, each with its ``file:line``."""
    warnings = [
        *_duplicates(source),
        *_unknown_roles(source),
        *_shadowed(source),
        *_never_granted(source),
        *_unreferenced_engagements(source),
        *_closed_writer_per_engagement(source),
    ]
    return [*source.errors, *sorted(warnings, key=_order)]


def _order(issue: Issue) -> tuple[str, int]:
    name, _, line = issue.location.rpartition(":")
    return name, int(line) if line.isdigit() else 0


def _warn(line: PolicyLine, code: str, message: str) -> Issue:
    return Issue("warning", line.location, code, message)


def _duplicates(source: PolicySource) -> Iterator[Issue]:
    seen: dict[tuple[str, ...], str] = {}
    for line in source.lines:
        key = (line.ptype, *line.fields)
        if key in seen:
            yield _warn(line, "duplicate", f"duplicate of {seen[key]}")
        else:
            seen[key] = line.location


def _inheritance(source: PolicySource) -> dict[str, set[str]]:
    parents: dict[str, set[str]] = defaultdict(set)
    for line in source.lines:
        if line.ptype in ("g", "g2"):
            parents[line.fields[0]].add(line.fields[1])
    return parents


def _ancestors(role: str, parents: dict[str, set[str]]) -> set[str]:
    """The role and every role it inherits, through any engagement."""
    seen, todo = {role}, [role]
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _unknown_roles(source: PolicySource) -> Iterator[Issue]:
    ruled = {line.fields[0] for line in source.of_type("p")} | {CLOSED_WRITER}
    parents = _inheritance(source)
    for line in source.lines:
        if line.ptype in ("g", "g2") and not _ancestors(line.fields[1], parents) & ruled:
            yield _warn(line, "unknown_role", f"role {line.fields[1]!r} has no rule")


def _covers(deny: PolicyLine, allow: PolicyLine, inherited: set[str]) -> bool:
    d_sub, d_dom, d_obj, d_act, _ = deny.fields
    _, a_dom, a_obj, a_act, _ = allow.fields
    same_scope = d_sub in inherited and d_dom in (GLOBAL_DOMAIN, a_dom) and d_act in ("*", a_act)
    wider = d_obj in ("*", a_obj) or (d_obj.endswith("/*") and a_obj.startswith(d_obj[:-1]))
    return same_scope and wider


def _shadowed(source: PolicySource) -> Iterator[Issue]:
    rules = source.of_type("p")
    denies = [r for r in rules if r.fields[4] == "deny"]
    parents = _inheritance(source)
    for allow in (r for r in rules if r.fields[4] == "allow"):
        inherited = _ancestors(allow.fields[0], parents)
        deny = next((d for d in denies if _covers(d, allow, inherited)), None)
        if deny is not None:
            yield _warn(allow, "shadowed_by_deny", f"never allows: {deny.location} denies it")


def _never_granted(source: PolicySource) -> Iterator[Issue]:
    granted = {line.fields[1] for line in source.lines if line.ptype in ("g", "g2")}
    reported: set[str] = set()
    for line in source.of_type("p"):
        role = line.fields[0]
        if role not in granted and role not in reported and not role.startswith(GROUP_PREFIX):
            reported.add(role)
            yield _warn(line, "role_never_granted", f"no g or g2 line grants {role!r}")


def _unreferenced_engagements(source: PolicySource) -> Iterator[Issue]:
    granted = {line.fields[2] for line in source.of_type("g")}
    for line in source.lines:
        engagement = line.fields[1] if line.ptype == "p" else line.fields[0]
        if line.ptype in ("p", "g3") and engagement != GLOBAL_DOMAIN and engagement not in granted:
            yield _warn(line, "engagement_unreferenced", f"no grant mentions {engagement!r}")


def _closed_writer_per_engagement(source: PolicySource) -> Iterator[Issue]:
    for line in source.of_type("g"):
        if line.fields[1] == CLOSED_WRITER:
            yield _warn(line, "closed_writer_not_global", "closed_writer only counts with g2")
