"""``explain`` that teaches: the decision, the roles behind it, and the rules that nearly matched.

On top of the decision (rule, role chain, reason) an explanation lists each
principal's roles in the engagement and its global roles, every link with the
``file:line`` that grants it; the engagement's closed fact and where it came
from; and, on a deny, the allow rules that missed by one thing (the role, the
engagement, the action or the object), with what differed. Never on the
request path: it scans the rules (milliseconds at 100k lines).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from app.authz.closed import ClosedFact
from app.authz.compiled import GROUP_PREFIX, CompiledPolicy, Rule, chain_of, principals
from app.authz.policy import Decision, PolicyEngine
from app.authz.source import CLOSED_WRITER, GLOBAL_DOMAIN, READ_ACTIONS

MAX_NEAR_MISSES = 8
_ORDER = {"closed": 0, "overridden": 0, "role": 1, "domain": 2, "action": 3, "object": 4}


@dataclass(frozen=True, slots=True)
class Link:
    """One ``g``/``g2`` line on the way from a principal to a role."""

    kind: str
    child: str
    role: str
    domain: str
    location: str

    def __str__(self) -> str:
        where = f", {self.domain}" if self.kind == "g" else ""
        return f"{self.kind}, {self.child}, {self.role}{where} ({self.location})"


@dataclass(frozen=True, slots=True)
class HeldRole:
    """A role a principal holds in the engagement (``scope``) or globally (``*``)."""

    principal: str
    role: str
    scope: str
    links: tuple[Link, ...]

    def describe(self) -> str:
        return f"{self.principal} > {self.role}: " + " > ".join(map(str, self.links))


@dataclass(frozen=True, slots=True)
class NearMiss:
    """An allow rule that missed by one thing, what differed and how."""

    rule: Rule
    differs: str
    detail: str

    def describe(self) -> str:
        rule = f"{self.rule.location}: p, {', '.join(self.rule.fields)}"
        return f"{rule}\n      {self.differs}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    roles_here: tuple[HeldRole, ...]
    roles_global: tuple[HeldRole, ...]
    near_misses: tuple[NearMiss, ...]


def explain(
    engine: PolicyEngine,
    subject: str,
    groups: Sequence[str],
    request: tuple[str, str, str],
    closed: ClosedFact | None = None,
) -> Explanation:
    """Decide ``(engagement, path, action)`` and gather what a person needs to act on it."""
    dom, obj, act = request
    groups = tuple(dict.fromkeys(groups))  # a group named twice is one principal, listed once
    decision = engine.explain(subject, dom, obj, act, groups, closed)
    compiled = engine.compiled
    here, global_ = [], []
    for principal in principals(subject, groups):
        here += held_roles(compiled, principal, dom)
        global_ += held_roles(compiled, principal, None)
    misses: tuple[NearMiss, ...] = ()
    if not decision.allowed and decision.reason != "principal_is_role":
        deny = decision.rule_location if decision.reason == "denied_by_rule" else None
        misses = near_misses(
            compiled, principals(subject, groups), request, decision.closed, overridden_by=deny
        )
    return Explanation(decision, tuple(here), tuple(global_), misses)


def held_roles(compiled: CompiledPolicy, principal: str, dom: str | None) -> list[HeldRole]:
    """Roles of ``principal`` in ``dom`` (``g`` lines), or global ones for ``None`` (``g2``)."""
    parents = (
        compiled.global_roles(principal) if dom is None else compiled.domain_roles(principal, dom)
    )
    held = []
    for role in parents:
        if role == principal:
            continue
        chain = chain_of(parents, role)
        links = tuple(_link(compiled, a, b, dom) for a, b in itertools.pairwise(chain))
        held.append(HeldRole(principal, role, dom or GLOBAL_DOMAIN, links))
    return held


def _link(compiled: CompiledPolicy, child: str, role: str, dom: str | None) -> Link:
    if dom is None:
        location = compiled.link_locations.get(("g2", GLOBAL_DOMAIN, child, role), "?")
        return Link("g2", child, role, GLOBAL_DOMAIN, location)
    domain, location = compiled.g_link_location(child, role, dom)
    return Link("g", child, role, domain, location)


def near_misses(
    compiled: CompiledPolicy,
    names: Sequence[str],
    request: tuple[str, str, str],
    closed: ClosedFact | None,
    overridden_by: str | None = None,
) -> tuple[NearMiss, ...]:
    """Allow rules that would have matched but for one field, closest first; an allow
    that did match (for any of the caller's principals) is listed as what beat it (the
    engagement closed, or the deny at ``overridden_by``), never as a miss of another
    principal's."""
    dom, obj, _ = request
    held_by = {
        principal: {**compiled.domain_roles(principal, dom), **compiled.global_roles(principal)}
        for principal in names
    }
    found: dict[int, NearMiss] = {}
    for principal, held in held_by.items():  # allows that matched in full come first
        for rule in compiled.rules:
            if rule.eft != "allow" or rule.index in found or _differences(rule, held, request):
                continue
            if closed is not None and _closure_blocks(compiled, principal, request[2]):
                found[rule.index] = NearMiss(rule, "closed", _closed_detail(closed, principal))
            else:
                found[rule.index] = NearMiss(
                    rule, "overridden", _overridden_detail(principal, overridden_by)
                )
    for principal, held in held_by.items():
        for rule in compiled.rules:
            if rule.eft != "allow" or rule.index in found:
                continue
            differs = _differences(rule, held, request)
            if len(differs) == 1:
                # A role miss is every principal's (the other fields do not depend on
                # who asks, and a principal holding the role matched in full above).
                who = names if differs[0] == "role" else (principal,)
                detail = _detail(compiled, differs[0], rule, who, request)
                found[rule.index] = NearMiss(rule, differs[0], detail)
    ranked = sorted(found.values(), key=lambda m: (_ORDER[m.differs], -_prefix(m, obj)))
    return tuple(ranked[:MAX_NEAR_MISSES])


def _closure_blocks(compiled: CompiledPolicy, principal: str, act: str) -> bool:
    """A closed engagement holds back this principal's allow: a write, and no closed_writer.

    Otherwise an allow that matched in full lost to a deny (a read in a closed engagement
    denied by a rule was explained as "read-only", sending the admin to reopen it).
    """
    return act not in READ_ACTIONS and CLOSED_WRITER not in compiled.global_roles(principal)


def _differences(
    rule: Rule, held: dict[str, str | None], request: tuple[str, str, str]
) -> list[str]:
    dom, obj, act = request
    checks = (
        ("role", rule.sub in held),
        ("domain", rule.dom in (dom, GLOBAL_DOMAIN)),
        ("action", rule.act in (act, "*")),
        ("object", rule.matches(obj)),
    )
    return [name for name, ok in checks if not ok]


def _detail(
    compiled: CompiledPolicy,
    differs: str,
    rule: Rule,
    who: Sequence[str],
    request: tuple[str, str, str],
) -> str:
    dom, obj, act = request
    if differs == "domain":
        return f"written for engagement {rule.dom!r}, the request is in {dom!r}"
    if differs == "action":
        return f"allows {rule.act}, the request is {act}"
    if differs == "object":
        return f"allows {rule.obj}, the request is {obj}"
    return _role_detail(compiled, rule.sub, who, dom)


def _role_detail(compiled: CompiledPolicy, role: str, who: Sequence[str], dom: str) -> str:
    """What a role miss needs, and where each of the caller's principals holds the role.

    ``who``: the subject, then its groups (``group:<name>``): a member of a group that
    holds the role in another engagement learns that the group, not only the subject,
    was looked at. One principal reads as before groups were listed.
    """
    if role.startswith(GROUP_PREFIX):
        return f"a rule for members of group {role.removeprefix(GROUP_PREFIX)!r} (X-Auth-Groups)"
    names = " or ".join(repr(principal) for principal in who)
    if role not in compiled.role_names:
        return f"a rule for {role!r} only, not for {names}"
    elsewhere = {principal: _held_elsewhere(compiled, role, principal, dom) for principal in who}
    if len(who) == 1:
        (principal,) = who
        needs = f"needs role {role!r}, which {principal!r} does not hold in {dom!r}"
        if not elsewhere[principal]:
            return f"{needs}; no g or g2 line grants it to {principal!r}"
        return f"{needs}; it holds it in {', '.join(elsewhere[principal])}"
    needs = f"needs role {role!r}, which none of {', '.join(map(repr, who))} holds in {dom!r}"
    held = [f"{p!r} holds it in {', '.join(where)}" for p, where in elsewhere.items() if where]
    if not held:
        return f"{needs}; no g or g2 line grants it to any of them"
    return f"{needs}; {'; '.join(held)}"


def _held_elsewhere(compiled: CompiledPolicy, role: str, principal: str, dom: str) -> list[str]:
    """The other engagements where ``principal`` holds ``role``, each with its ``g`` line."""
    found = []
    for domain in compiled.grant_domains:
        if domain != dom and role in compiled.domain_roles(principal, domain):
            held = held_roles(compiled, principal, domain)
            link = next(h.links[0] for h in held if h.role == role)
            found.append(f"{domain} ({link.location})")
    return found


def _overridden_detail(principal: str, deny: str | None) -> str:
    where = f"the deny rule at {deny}" if deny else "a deny rule that also matches"
    return f"matches for {principal!r}, but {where} overrides every allow"


def _closed_detail(closed: ClosedFact, principal: str) -> str:
    return (
        f"matches, but the engagement is read-only: {closed.describe()}; only principals "
        f"holding closed_writer (g2) may write, and {principal!r} does not"
    )


def _prefix(miss: NearMiss, obj: str) -> int:
    """How many leading characters the rule's object shares with the path (closest first)."""
    shared = 0
    for a, b in zip(miss.rule.obj, obj, strict=False):
        if a != b:
            break
        shared += 1
    return shared
