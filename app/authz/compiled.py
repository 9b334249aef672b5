"""The compiled decision path: indexed, so a decision's cost does not grow with policy size.

pycasbin's ``enforce()`` evaluates the matcher against every ``p`` line (about
5 µs a line). This module answers the same question for the model in
``policies/model.conf`` by looking only at the lines that can match: rules are
indexed by ``(engagement, role)``, a principal's roles come from a bounded
breadth-first walk of the role links (the same 10-level limit as Casbin's role
manager), and object patterns are pre-classified (plain strings compare
directly; patterns become the regex ``keyMatch2`` builds, compiled once).

Casbin's ``enforce_ex`` names the *first* matching deny, or else the *last*
matching allow, in file order; ``evaluate_principal`` reproduces that choice so
the matched rule agrees too. ``tests/unit/test_policy_differential.py`` proves
decision and matched rule equal to plain pycasbin on thousands of random
requests over random policies.

Design choice: index + bounded walk (chosen) versus a decision cache in front of
pycasbin. A cache keeps Casbin on the hot path for every miss (0.5 s at 100k
lines), so a cold or adversarial request stream still stalls the loop; the index
bounds every decision, at the cost of re-implementing one fixed model, which the
differential test and the reload gate's model check keep honest.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from casbin.util import key_match

from app.authz.source import CLOSED, CLOSED_WRITER, GLOBAL_DOMAIN, READ_ACTIONS, PolicyLine
from app.core.frozen import quick_init

MAX_HOPS = 9  # Casbin's RoleManager(max_hierarchy_level=10) finds links up to 9 hops away
GROUP_PREFIX = "group:"
# A pattern (or segment) with one of these is a regular expression to keyMatch2.
REGEX_SPECIALS = re.compile(r"[.^$*+?{}\[\]\\|():]")
_KEY_MATCH2_PARAM = re.compile(r"(.*?):[^\/]+(.*?)")

Links = dict[str, list[str]]


def key_match2_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher equal to Casbin's ``keyMatch2(obj, pattern)``, built once."""
    if not REGEX_SPECIALS.search(pattern):
        return pattern.__eq__
    regex = pattern.replace("/*", "/.*")
    regex = _KEY_MATCH2_PARAM.sub(r"\g<1>[^\/]+\g<2>", regex, 0)
    if regex == "*":
        regex = "(.*)"
    # ``match`` with ``$`` (a final "\n" passes), as Casbin's own regex_match: kept equal
    # to it, since decided objects are normalised paths (normalize_path), never with "\n".
    compiled = re.compile("^" + regex + "$")
    return lambda obj: compiled.match(obj) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``p`` line, its position in file order and its location."""

    index: int
    sub: str
    dom: str
    obj: str
    act: str
    eft: str
    location: str
    matches: Callable[[str], bool]

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.sub, self.dom, self.obj, self.act, self.eft)


@quick_init
@dataclass(frozen=True, slots=True)
class PrincipalVerdict:
    """Casbin's answer for one principal, plus the role chain and why."""

    principal: str
    allowed: bool
    rule: Rule | None
    role_chain: tuple[str, ...]
    closed_blocked: bool


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """The combined answer for a subject and its groups."""

    allowed: bool
    rule: Rule | None
    role_chain: tuple[str, ...]
    reason: str


def principals(subject: str, groups: Sequence[str]) -> tuple[str, ...]:
    """The subject first, then each group as ``group:<name>``."""
    return (subject, *(GROUP_PREFIX + group for group in groups))


def combine(verdicts: Sequence[PrincipalVerdict]) -> Verdict:
    """Deny beats allow across principals; the first deciding principal names the rule."""
    for v in verdicts:
        if v.rule is not None and v.rule.eft == "deny":
            return Verdict(False, v.rule, v.role_chain, "denied_by_rule")
    for v in verdicts:
        if v.allowed:
            return Verdict(True, v.rule, v.role_chain, "allowed_by_rule")
    blocked = any(v.closed_blocked for v in verdicts)
    return Verdict(
        False, None, (), "closed_engagement_read_only" if blocked else "no_matching_allow"
    )


def _walk(start: str, neighbours: Callable[[str], Iterable[str]]) -> dict[str, str | None]:
    """Every name reachable from ``start`` within ``MAX_HOPS``, with its parent."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    for _ in range(MAX_HOPS):
        next_frontier = []
        for name in frontier:
            for role in neighbours(name):
                if role not in parents:
                    parents[role] = name
                    next_frontier.append(role)
        if not next_frontier:
            break
        frontier = next_frontier
    return parents


def chain_of(parents: dict[str, str | None], role: str) -> tuple[str, ...]:
    chain = [role]
    parent = parents[role]
    while parent is not None:
        chain.append(parent)
        parent = parents[parent]
    return tuple(reversed(chain))


class CompiledPolicy:
    """An immutable, indexed form of one policy; safe to share once built."""

    def __init__(self, lines: Sequence[PolicyLine]) -> None:
        self.rules: list[Rule] = []
        self._index: dict[tuple[str, str], list[Rule]] = defaultdict(list)
        self._g: dict[str, Links] = defaultdict(lambda: defaultdict(list))
        self._g2: Links = defaultdict(list)
        self._g3: Links = defaultdict(list)
        # Where each link was written (explain, queries): (ptype, domain, child, parent).
        self.link_locations: dict[tuple[str, str, str, str], str] = {}
        patterns: dict[str, Callable[[str], bool]] = {}
        for line in lines:
            self._add(line, patterns)
        self._pattern_domains = [d for d in self._g if "*" in d]
        self.role_names = frozenset(
            {CLOSED_WRITER} | {line.fields[1] for line in lines if line.ptype in ("g", "g2")}
        )

    def _add(self, line: PolicyLine, patterns: dict[str, Callable[[str], bool]]) -> None:
        f = line.fields
        if line.ptype == "p":
            matcher = patterns.get(f[2]) or patterns.setdefault(f[2], key_match2_pattern(f[2]))
            rule = Rule(len(self.rules), f[0], f[1], f[2], f[3], f[4], line.location, matcher)
            self.rules.append(rule)
            self._index[(rule.dom, rule.sub)].append(rule)
        elif line.ptype == "g":
            self._g[f[2]][f[0]].append(f[1])
            self.link_locations.setdefault(("g", f[2], f[0], f[1]), line.location)
        elif line.ptype == "g2":
            self._g2[f[0]].append(f[1])
            self.link_locations.setdefault(("g2", GLOBAL_DOMAIN, f[0], f[1]), line.location)
        else:
            self._g3[f[0]].append(f[1])
            self.link_locations.setdefault(("g3", GLOBAL_DOMAIN, f[0], f[1]), line.location)

    def release(self) -> None:
        """Empty this policy in small steps; it decides nothing afterwards.

        Freeing 100k rules in one go is one long C-level cascade that holds the
        GIL (~70 ms measured); popping entries from a worker thread lets the
        event loop run in between. Only for a replaced policy nobody else holds.
        """
        containers: list[dict[Any, Any]] = [
            self._index,
            self._g,
            self._g2,
            self._g3,
            self.link_locations,
        ]
        for container in containers:
            while container:
                container.popitem()
        while self.rules:
            del self.rules[-256:]

    def domain_links(self, dom: str) -> list[Links]:
        """The ``g`` links in force in ``dom``: its own plus every pattern domain matching it."""
        own = self._g.get(dom)
        merged = [own] if own is not None else []
        merged += [self._g[p] for p in self._pattern_domains if p != dom and key_match(dom, p)]
        return merged

    def closed_domains(self) -> list[str]:
        """Every engagement a ``g3`` line closes."""
        return [dom for dom in self._g3 if self.is_closed(dom)]

    def is_closed(self, dom: str) -> bool:
        return dom in self._g3 and CLOSED in _walk(dom, lambda name: self._g3.get(name, ()))

    def closed_location(self, dom: str) -> str | None:
        """The ``g3`` line that closes ``dom``, if the policy closes it."""
        if not self.is_closed(dom):
            return None
        return self.link_locations.get(("g3", GLOBAL_DOMAIN, dom, CLOSED), "policy")

    @property
    def grant_domains(self) -> list[str]:
        """Every domain a ``g`` line names (``*`` and patterns included)."""
        return list(self._g)

    def g_link_location(self, child: str, parent: str, dom: str) -> tuple[str, str]:
        """``(domain, file:line)`` of the ``g`` line linking ``child`` to ``parent`` in ``dom``."""
        for domain in (dom, *(p for p in self._pattern_domains if p != dom)):
            location = self.link_locations.get(("g", domain, child, parent))
            if location is not None and (domain == dom or key_match(dom, domain)):
                return domain, location
        return dom, "?"

    def links(self, kind: str, dom: str = GLOBAL_DOMAIN) -> Links:
        """The ``g`` links written for ``dom`` (exactly), or every ``g2`` link."""
        return self._g2 if kind == "g2" else self._g.get(dom, {})

    def rules_for(self, dom: str, role: str) -> list[Rule]:
        """The ``p`` lines written for ``role`` in ``dom`` (exactly), in file order."""
        return self._index.get((dom, role), [])

    def global_roles(self, principal: str) -> dict[str, str | None]:
        return _walk(principal, lambda name: self._g2.get(name, ()))

    def domain_roles(self, principal: str, dom: str) -> dict[str, str | None]:
        links = self.domain_links(dom)
        return _walk(principal, lambda name: [r for link in links for r in link.get(name, ())])

    def evaluate_principal(
        self, principal: str, dom: str, obj: str, act: str, closed: bool = False
    ) -> PrincipalVerdict:
        """Casbin's ``enforce_ex(principal, dom, obj, act)``, answered from the index.

        ``closed``: the engagement is closed by a fact outside the policy (the
        engagement state), exactly as if the policy had its ``g3`` line.
        """
        in_domain = self.domain_roles(principal, dom)
        global_ = self.global_roles(principal)
        writes_ok = (
            act in READ_ACTIONS or CLOSED_WRITER in global_ or not (closed or self.is_closed(dom))
        )
        dom_keys = (dom,) if dom == GLOBAL_DOMAIN else (dom, GLOBAL_DOMAIN)
        deny: Rule | None = None
        allow: Rule | None = None
        blocked = False
        for role in {**global_, **in_domain}:
            for key in dom_keys:
                for rule in self._index.get((key, role), ()):
                    if (rule.act != act and rule.act != "*") or not rule.matches(obj):
                        continue
                    if rule.eft == "deny":
                        deny = rule if deny is None or rule.index < deny.index else deny
                    elif not writes_ok:
                        blocked = True
                    elif allow is None or rule.index > allow.index:
                        allow = rule
        chosen = deny or allow
        chain = () if chosen is None else self._chain_to(chosen.sub, in_domain, global_)
        return PrincipalVerdict(
            principal, deny is None and allow is not None, chosen, chain, blocked
        )

    @staticmethod
    def _chain_to(
        role: str, in_domain: dict[str, str | None], global_: dict[str, str | None]
    ) -> tuple[str, ...]:
        return chain_of(in_domain, role) if role in in_domain else chain_of(global_, role)

    def evaluate(
        self,
        subject: str,
        groups: Sequence[str],
        dom: str,
        obj: str,
        act: str,
        closed: bool = False,
    ) -> Verdict:
        """The decision for a subject and its groups; a subject named like a role is refused."""
        if subject in self.role_names:
            return Verdict(False, None, (), "principal_is_role")
        verdicts = [
            self.evaluate_principal(p, dom, obj, act, closed) for p in principals(subject, groups)
        ]
        return combine(verdicts)
