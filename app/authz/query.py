"""Policy queries: who may do this here, and what may this person do.

``who_can`` answers for one request (engagement, path, action): the subjects,
groups and roles the policy allows, each with the rule Casbin's ``enforce_ex``
names for it. Candidates come from a reverse walk of the role links from every
allow rule that matches, then each is decided exactly (so denies and closed
engagements count). A subject is decided on its own, without groups; a role
answers "would a principal holding only this role be allowed".

``what_can`` answers for one subject and its groups in one engagement: every
allow rule its roles reach (object pattern, action), the deny rules that carve
out of them, and whether a closed engagement leaves an allow for reads only.
``WhatCan.permits`` evaluates exactly those lists, and is proven equal to
pycasbin by brute force (``tests/unit/test_policy_query.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from app.authz.closed import ClosedFact
from app.authz.compiled import GROUP_PREFIX, CompiledPolicy, Rule, chain_of, principals
from app.authz.fields import FieldError
from app.authz.policy import PolicyEngine
from app.authz.source import CLOSED_WRITER, ENGAGEMENT, GLOBAL_DOMAIN, READ_ACTIONS


@dataclass(frozen=True, slots=True)
class Grantee:
    """A principal allowed, the rule that allows it and how it reached the rule's role."""

    name: str
    kind: str
    rule: Rule
    role_chain: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WhoCan:
    engagement: str
    obj: str
    action: str
    revision: str
    closed: ClosedFact | None
    grantees: tuple[Grantee, ...]

    def of_kind(self, kind: str) -> list[Grantee]:
        return [g for g in self.grantees if g.kind == kind]


@dataclass(frozen=True, slots=True)
class Permission:
    """One rule a subject's roles reach; ``reads_only`` when a closed engagement limits it."""

    rule: Rule
    principal: str
    role_chain: tuple[str, ...]
    reads_only: bool = False

    def applies(self, obj: str, act: str) -> bool:
        reads_ok = not self.reads_only or act in READ_ACTIONS
        return reads_ok and self.rule.act in (act, "*") and self.rule.matches(obj)


@dataclass(frozen=True, slots=True)
class WhatCan:
    subject: str
    groups: tuple[str, ...]
    engagement: str
    revision: str
    closed: ClosedFact | None
    allows: tuple[Permission, ...]
    denies: tuple[Permission, ...]
    refused: str | None = None

    def permits(self, obj: str, act: str) -> bool:
        """The decision these lists give: any deny that applies wins, else any allow."""
        if any(d.applies(obj, act) for d in self.denies):
            return False
        return any(a.applies(obj, act) for a in self.allows)


def kind_of(compiled: CompiledPolicy, name: str) -> str:
    if name.startswith(GROUP_PREFIX):
        return "group"
    return "role" if name in compiled.role_names else "subject"


def who_can(
    engine: PolicyEngine, request: tuple[str, str, str], closed: ClosedFact | None = None
) -> WhoCan:
    """Every principal the policy allows ``(engagement, path, action)``, with its rule."""
    dom, obj, act = request
    compiled = engine.compiled
    fact = engine.closed_fact(dom) or closed
    seeds = {
        rule.sub
        for rule in compiled.rules
        if rule.eft == "allow"
        and rule.dom in (dom, GLOBAL_DOMAIN)
        and rule.act in (act, "*")
        and rule.matches(obj)
    }
    grantees = []
    for name in sorted(_reverse_closure(compiled, dom, seeds)):
        verdict = compiled.evaluate_principal(name, dom, obj, act, fact is not None)
        if verdict.allowed and verdict.rule is not None:
            grantees.append(
                Grantee(name, kind_of(compiled, name), verdict.rule, verdict.role_chain)
            )
    return WhoCan(dom, obj, act, engine.revision, fact, tuple(grantees))


def _reverse_closure(compiled: CompiledPolicy, dom: str, seeds: Iterable[str]) -> set[str]:
    """Every name whose links (in ``dom`` or global) lead to one of ``seeds``."""
    children: dict[str, set[str]] = defaultdict(set)
    for links in (*compiled.domain_links(dom), compiled.links("g2")):
        for child, parents in links.items():
            for parent in parents:
                children[parent].add(child)
    found = set(seeds)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def what_can(
    engine: PolicyEngine,
    subject: str,
    groups: Sequence[str],
    engagement: str,
    closed: ClosedFact | None = None,
) -> WhatCan:
    """Every rule the subject's and its groups' roles reach in ``engagement``."""
    compiled = engine.compiled
    fact = engine.closed_fact(engagement) or closed
    answer = WhatCan(subject, tuple(groups), engagement, engine.revision, fact, (), ())
    if subject in compiled.role_names:
        return replace(answer, refused="principal_is_role")
    allows: dict[int, Permission] = {}
    denies: dict[int, Permission] = {}
    for principal in principals(subject, groups):
        for permission in _reached(compiled, principal, engagement, fact is not None):
            target = denies if permission.rule.eft == "deny" else allows
            known = target.get(permission.rule.index)
            if known is None or (known.reads_only and not permission.reads_only):
                target[permission.rule.index] = permission
    useful = [p for p in allows.values() if not p.reads_only or _may_read(p.rule)]
    return replace(
        answer,
        allows=tuple(sorted(useful, key=lambda p: p.rule.index)),
        denies=tuple(sorted(denies.values(), key=lambda p: p.rule.index)),
    )


def _may_read(rule: Rule) -> bool:
    return rule.act == "*" or rule.act in READ_ACTIONS


def _reached(
    compiled: CompiledPolicy, principal: str, engagement: str, closed: bool
) -> list[Permission]:
    in_domain = compiled.domain_roles(principal, engagement)
    global_ = compiled.global_roles(principal)
    writes_ok = not (closed or compiled.is_closed(engagement)) or CLOSED_WRITER in global_
    keys = (engagement,) if engagement == GLOBAL_DOMAIN else (engagement, GLOBAL_DOMAIN)
    found = []
    for role in {**global_, **in_domain}:
        parents = in_domain if role in in_domain else global_
        chain = chain_of(parents, role)
        for key in keys:
            for rule in compiled.rules_for(key, role):
                # A closed engagement limits allows to reads; a deny it never limits.
                limited = not writes_ok and rule.eft == "allow"
                found.append(Permission(rule, principal, chain, limited))
    return found


ANY_OTHER = "(any other engagement)"
GATEWAY_WIDE = "* (gateway-wide: /admin)"


def engagements_for(
    engine: PolicyEngine,
    subject: str,
    groups: Sequence[str],
    given: str | None,
    closed: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """``(label, engagement)`` to answer ``what_can`` for: the given one, or else every
    engagement whose answer may differ from one no line names (the caller's ``g`` lines
    name it, a rule the caller's roles reach is written for it, or it is closed: by a
    ``g3`` line or in ``closed``, the engagement state), ``*``, and one no line names."""
    if given is not None:
        if given != GLOBAL_DOMAIN and not ENGAGEMENT.fullmatch(given):
            raise FieldError(f"engagement {given!r} must be an engagement id or *")
        return [(given, given)]
    compiled = engine.compiled
    names = principals(subject, groups)
    named = {
        domain
        for domain in compiled.grant_domains
        if "*" not in domain and any(n in compiled.links("g", domain) for n in names)
    }
    closed_set = {*compiled.closed_domains(), *closed}
    # Every engagement the policy or the state names at all; the one no line names
    # is the yardstick: an engagement is listed when the caller reaches other rules
    # there (its own rules, roles granted or inherited there, a close).
    mentioned = {
        *compiled.grant_domains,
        *(r.dom for r in compiled.rules),
        *closed_set,
    } - {GLOBAL_DOMAIN}
    taken = {*mentioned, *named}
    other = next(f"other-{n}" for n in range(len(taken) + 1) if f"other-{n}" not in taken)
    fresh = _reached_set(compiled, names, other, closed=False)
    named |= {
        domain
        for domain in mentioned - named
        if "*" not in domain
        and _reached_set(compiled, names, domain, domain in closed_set) != fresh
    }
    listed = sorted(named)
    return [*((d, d) for d in listed), (GATEWAY_WIDE, GLOBAL_DOMAIN), (ANY_OTHER, other)]


def _reached_set(
    compiled: CompiledPolicy, names: Sequence[str], engagement: str, closed: bool
) -> frozenset[tuple[int, bool]]:
    """The rules (and whether only for reads) the principals reach in ``engagement``."""
    return frozenset(
        (p.rule.index, p.reads_only)
        for name in names
        for p in _reached(compiled, name, engagement, closed)
    )
