"""``gateway policy lint``: errors block a load; warnings are likely mistakes; notes inform.

Errors come from parsing (``app.authz.source``) and from the suites
(``app.authz.suite_files``). Warnings (``--strict`` fails on them): duplicate
lines, roles granted that have no rule anywhere up their inheritance, allows a
deny of the same role always beats, rules for a name nobody is granted and no
suite uses, ``closed_writer`` granted per engagement (it only counts with
``g2``), lower-case HTTP methods in rules (no request carries them), denies of ``GET`` that
leave ``HEAD`` allowed to the same holders (``head_not_denied``), role
inheritance that loops back on itself, roles reached only through more links
than the decision path follows (``MAX_HOPS``: the grant has no effect), and, when
the gateway's routes are given (``--config``), rules whose object and action no
route is decided as, rules of one engagement on gateway-wide routes, and grants in
one engagement of roles whose rules are all on such routes (``no_route``:
``app.authz.routes``). Notes:
engagements no ``g`` line mentions (only global roles reach them). Every
message says what to change.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence, Set

from app.authz.compiled import MAX_HOPS, REGEX_SPECIALS, CompiledPolicy, key_match2_pattern
from app.authz.fields import ENGAGEMENT_PREFIX, HTTP_METHODS
from app.authz.routes import RouteShape, routes_for
from app.authz.source import (
    CLOSED_WRITER,
    GLOBAL_DOMAIN,
    Issue,
    PolicyLine,
    PolicySource,
    clip,
    quote,
)

GROUP_PREFIX = "group:"


def lint(
    source: PolicySource,
    suite_subjects: Set[str] = frozenset(),
    routes: Sequence[RouteShape] | None = None,
) -> list[Issue]:
    """Every error, warning and note, errors first, each with its ``file:line``.

    ``suite_subjects``: the subjects the suites decide for; a rule written for
    one of them is a per-subject rule, not a role nobody holds. ``routes``: what
    the gateway decides (``app.api.route_shapes``); ``None`` skips that check.
    """
    findings = [
        *_duplicates(source),
        *_unknown_roles(source),
        *_shadowed(source),
        *_never_granted(source, suite_subjects),
        *_unreferenced_engagements(source),
        *_closed_writer_per_engagement(source),
        *_global_roles_inheriting_per_engagement(source),
        *_lower_case_methods(source),
        *_engagement_mismatch(source),
        *_any_character(source),
        *_head_not_denied(source),
        *_role_graphs(source),
        *(_no_route(source, routes) if routes is not None else ()),
        *(_grants_outside_routes(source, routes) if routes is not None else ()),
    ]
    return [*source.errors, *sorted(findings, key=_order)]


def _order(issue: Issue) -> tuple[str, int]:
    return _location_order(issue.location)


def _location_order(location: str) -> tuple[str, int]:
    name, _, line = location.rpartition(":")
    return name, int(line) if line.isdigit() else 0


def _warn(line: PolicyLine, code: str, message: str) -> Issue:
    return Issue("warning", line.location, code, message)


def _duplicates(source: PolicySource) -> Iterator[Issue]:
    seen: dict[tuple[str, ...], str] = {}
    for line in source.lines:
        key = (line.ptype, *line.fields)
        if key in seen:
            yield _warn(line, "duplicate", f"duplicate of {seen[key]}: delete one of them")
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
    return _reach(role, lambda name: parents.get(name, ()))


def _unknown_roles(source: PolicySource) -> Iterator[Issue]:
    ruled = {line.fields[0] for line in source.of_type("p")} | {CLOSED_WRITER}
    # The roles that have a rule or inherit (through any engagement) one that has: one
    # walk down from the ruled roles, not one walk up per line (quadratic on a long chain).
    heirs: dict[str, set[str]] = defaultdict(set)
    for child, parents in _inheritance(source).items():
        for parent in parents:
            heirs[parent].add(child)
    grounded = _reach_from(ruled, lambda name: heirs.get(name, ()))
    for line in source.lines:
        role = line.fields[1] if line.ptype in ("g", "g2") else None
        if role is not None and role not in grounded:
            yield _warn(
                line,
                "unknown_role",
                f"role {role!r} has no rule, nor does any role it inherits: add a p line for "
                f"{role!r}, or grant a role that has rules (is the name misspelt?)",
            )


def _covers(deny: PolicyLine, allow: PolicyLine, inherited: set[str]) -> bool:
    d_sub, d_dom, d_obj, d_act, _ = deny.fields
    _, a_dom, a_obj, a_act, _ = allow.fields
    same_scope = d_sub in inherited and d_dom in (GLOBAL_DOMAIN, a_dom) and d_act in ("*", a_act)
    wider = d_obj in ("*", a_obj) or (d_obj.endswith("/*") and a_obj.startswith(d_obj[:-1]))
    return same_scope and wider


def _shadowed(source: PolicySource) -> Iterator[Issue]:
    rules = source.of_type("p")
    # The denies by subject, in file order: an allow is compared with the denies of the
    # roles it inherits only (comparing every pair took minutes on a 100k-line policy).
    denies: dict[str, list[tuple[int, PolicyLine]]] = defaultdict(list)
    for position, rule in enumerate(rules):
        if rule.fields[4] == "deny":
            denies[rule.fields[0]].append((position, rule))
    parents = _inheritance(source)
    ancestors: dict[str, set[str]] = {}
    for allow in (r for r in rules if r.fields[4] == "allow"):
        role = allow.fields[0]
        if role not in ancestors:
            ancestors[role] = _ancestors(role, parents)
        inherited = ancestors[role]
        covering = [
            (position, deny)
            for sub in inherited
            for position, deny in denies.get(sub, ())
            if _covers(deny, allow, inherited)
        ]
        deny = min(covering, key=lambda found: found[0])[1] if covering else None
        if deny is not None:
            yield _warn(
                allow,
                "shadowed_by_deny",
                f"never allows: {deny.location} denies the same requests for "
                f"{deny.fields[0]!r}: narrow that deny, or delete this allow",
            )


def _never_granted(source: PolicySource, suite_subjects: Set[str]) -> Iterator[Issue]:
    """Rules for a name nobody is granted.

    Granted: the parent of a ``g``/``g2`` line. The child of one counts too for a
    name with deny rules only: a person who holds roles and is blocked by name
    (``p, alice, …, deny``; blocking someone must not fail CI). A name with allow
    rules that is only ever a child is a role whose holders are gone: its own
    inheritance line (``g, engagement_lead, analyst, *``) grants it to nobody, and
    until someone holds it again only a *subject* of that name gets its rules
    (``principal_is_role`` refuses the names some line grants). A suite case for
    that subject says it is a person.
    """
    parents = {line.fields[1] for line in source.lines if line.ptype in ("g", "g2")}
    children = {line.fields[0] for line in source.lines if line.ptype in ("g", "g2")}
    allowing = {line.fields[0] for line in source.of_type("p") if line.fields[4] == "allow"}
    named = parents | (children - allowing)
    reported: set[str] = set()
    for line in source.of_type("p"):
        name = line.fields[0]
        if name in named or name in suite_subjects or name.startswith(GROUP_PREFIX):
            continue
        if name not in reported:
            reported.add(name)
            yield _warn(
                line,
                "role_never_granted",
                f"nobody holds {name!r} and no suite case is for a subject {name!r}: if it is "
                f"a role, grant it (g, <who>, {name}, <engagement>) or delete its rules (until "
                f"then a subject named {name!r} gets them); if it is a person, add a suite "
                f"case with subject: {name}; otherwise fix the name",
            )


def _unreferenced_engagements(source: PolicySource) -> Iterator[Issue]:
    granted = {line.fields[2] for line in source.of_type("g")}
    for line in source.lines:
        engagement = line.fields[1] if line.ptype == "p" else line.fields[0]
        if line.ptype in ("p", "g3") and engagement != GLOBAL_DOMAIN and engagement not in granted:
            yield Issue(
                "note",
                line.location,
                "engagement_unreferenced",
                f"no g line grants a role in {engagement!r}, so only global roles (g2) and "
                "engagement-* grants reach it: check the engagement id",
            )


def _closed_writer_per_engagement(source: PolicySource) -> Iterator[Issue]:
    for line in source.of_type("g"):
        if line.fields[1] == CLOSED_WRITER:
            yield _warn(
                line,
                "closed_writer_not_global",
                f"closed_writer only counts as a global role: write g2, {line.fields[0]}, "
                "closed_writer instead",
            )


def _global_roles_inheriting_per_engagement(source: PolicySource) -> Iterator[Issue]:
    """A role held globally (``g2``) whose inheritance is written only with ``g`` lines.

    The model follows a ``g2`` role through ``g2`` lines only: ``g, trainee, no_write, *``
    gives every engagement's trainees the no_write denies, but not a ``g2`` trainee
    (an audit saw the deny apply to one and not the other).
    """
    global_roles = {line.fields[1] for line in source.of_type("g2")}
    g2_parents = {(line.fields[0], line.fields[1]) for line in source.of_type("g2")}
    for line in source.of_type("g"):
        role, parent = line.fields[0], line.fields[1]
        if role in global_roles and (role, parent) not in g2_parents:
            yield _warn(
                line,
                "g2_does_not_inherit",
                f"{role} is also granted globally (g2), and a g2 holder of {role} does not "
                f"inherit {parent} through this g line: add g2, {role}, {parent} if it should",
            )


def _lower_case_methods(source: PolicySource) -> Iterator[Issue]:
    for line in source.of_type("p"):
        action = line.fields[3]
        if action != action.upper() and action.upper() in HTTP_METHODS:
            yield _warn(
                line,
                "action_case",
                f"action {action!r} never matches a request: HTTP methods are upper case, "
                f"write {action.upper()}",
            )


def _engagement_mismatch(source: PolicySource) -> Iterator[Issue]:
    """A rule for one engagement whose path names another: it can never apply.

    ``/v1/engagements/acme-2026/…`` is always decided in ``acme-2026``, so
    ``p, alice, globex-cloud, /v1/engagements/acme-2026/findings, GET, deny`` denies
    nothing.
    """
    for line in source.of_type("p"):
        domain, obj = line.fields[1], line.fields[2]
        if domain == GLOBAL_DOMAIN or not obj.startswith(ENGAGEMENT_PREFIX):
            continue
        segment = obj[len(ENGAGEMENT_PREFIX) :].partition("/")[0]
        if segment and not segment.startswith(":") and segment != "*" and segment != domain:
            yield _warn(
                line,
                "engagement_mismatch",
                f"a path under engagement {quote(segment)} is decided in {quote(segment)}, "
                f"never in {domain!r}: this rule never applies (for a deny, nothing is "
                f"denied); write {clip(segment)} or * as its engagement, or :engagement in its "
                "path",
            )


def _any_character(source: PolicySource) -> Iterator[Issue]:
    """A ``.`` in a rule's path: keyMatch2 is a regular expression, so it is any character."""
    for line in source.of_type("p"):
        obj = line.fields[2]
        if "." in obj:
            widened = obj.replace(".", "x", 1)
            yield _warn(
                line,
                "object_any_character",
                f"'.' in {quote(obj)} matches any character (keyMatch2 is a regular expression), "
                f"so the rule also covers {quote(widened)}: use :name for the segment if that "
                "is meant",
            )


def _head_not_denied(source: PolicySource) -> Iterator[Issue]:
    """A deny of ``GET`` that leaves ``HEAD`` allowed to the same holders, on the same paths.

    A ``HEAD`` answer is the ``GET`` answer's head (RFC 9110 section 9.3.2), and the
    services behind the gateway answer it with their ``GET`` handler: with
    ``p, r, *, /x/*, *, allow`` and ``p, r, *, /x/secret, GET, deny``, ``HEAD
    /x/secret`` is still allowed and shows that the resource exists, its size and its
    fields. The model decides the method it is given (the decision is Casbin's, and a
    policy may allow ``HEAD`` alone on purpose), so this is a warning, raised when an
    allow of ``HEAD`` or ``*`` that one request may also hold meets the denied path, and
    no deny of ``HEAD`` or ``*`` surely covers it.

    Both sides err towards the warning. Who may also hold the allow: any role a holder
    of the denied role holds besides, through any engagement; and, since a request's
    principals are its subject and all its groups (``X-Auth-Groups``, never in the
    policy), any role of any group, or of anyone when a group holds the denied role.
    Paths meet when some path matches both (``_meet``), not only when one pattern's
    spelling matches the other. What surely covers: a ``HEAD`` deny whose path holds
    every path of the ``GET`` deny's (``_holds``), on the denied role or on a role every
    holder of it inherits in the deny's engagement (``_Holding.surely_held``: a ``g``
    link of another engagement, or a ``g2`` link for a ``g`` holder, does not count).
    """
    rules = source.of_type("p")
    gets = [r for r in rules if r.fields[4] == "deny" and r.fields[3] == "GET"]
    head_allows: dict[str, list[PolicyLine]] = defaultdict(list)
    for rule in rules:
        if rule.fields[4] == "allow" and rule.fields[3] in ("HEAD", "*"):
            head_allows[rule.fields[0]].append(rule)
    if not gets or not head_allows:
        return
    head_denies: dict[str, list[PolicyLine]] = defaultdict(list)
    for rule in rules:
        if rule.fields[4] == "deny" and rule.fields[3] in ("HEAD", "*"):
            head_denies[rule.fields[0]].append(rule)
    parents = _inheritance(source)
    children: dict[str, set[str]] = defaultdict(set)
    for child, held in parents.items():
        for parent in held:
            children[parent].add(child)
    ancestors: dict[str, set[str]] = {}

    def ancestors_of(name: str) -> set[str]:
        if name not in ancestors:
            ancestors[name] = _ancestors(name, parents)
        return ancestors[name]

    groups = {name for name in (*parents, *head_allows) if name.startswith(GROUP_PREFIX)}
    of_groups = {role for group in groups for role in ancestors_of(group)}
    related: dict[str, set[str]] = {}
    holding: _Holding | None = None  # built once a deny meets an allow: it costs
    for deny in gets:
        sub, dom, obj = deny.fields[:3]
        if sub not in related:  # every name one request's principals may hold with ``sub``
            holders = _ancestors(sub, children)
            if any(holder.startswith(GROUP_PREFIX) for holder in holders):
                related[sub] = set(head_allows)  # any subject may be in that group
            else:
                related[sub] = of_groups.union(*(ancestors_of(holder) for holder in holders))
        meeting = [
            allow
            for holder in related[sub] & head_allows.keys()
            for allow in head_allows[holder]
            if GLOBAL_DOMAIN in (dom, allow.fields[1]) or dom == allow.fields[1]
            if _meet(allow.fields[2], obj)
        ]
        if not meeting:
            continue
        if head_denies:
            holding = holding or _Holding(source, children.keys() | {r.fields[0] for r in rules})
            if _head_denied_too(deny, holding.surely_held(sub, dom), head_denies):
                continue
        allow = min(meeting, key=lambda line: _location_order(line.location))
        yield _warn(
            deny,
            "head_not_denied",
            f"denies GET but not HEAD, which {allow.location} allows "
            f"({allow.fields[3]} for {allow.fields[0]!r}): a HEAD answer carries the GET "
            "answer's fields (RFC 9110 section 9.3.2), so the path's existence and size stay "
            f"visible; add p, {sub}, {dom}, {clip(obj)}, HEAD, deny",
        )


def _head_denied_too(
    deny: PolicyLine, held: set[str], head_denies: dict[str, list[PolicyLine]]
) -> bool:
    """A deny of ``HEAD`` (or ``*``) on a role in ``held`` covers every path ``deny`` does."""
    dom, obj = deny.fields[1:3]
    return any(
        other.fields[1] in (GLOBAL_DOMAIN, dom) and _holds(other.fields[2], obj)
        for role in held & head_denies.keys()
        for other in head_denies[role]
    )


class _Holding:
    """The ``g`` links per engagement and the ``g2`` links, for ``surely_held``."""

    def __init__(self, source: PolicySource, names: Set[str]) -> None:
        """Only the links from ``names`` (the roles and the rules' subjects: every walk
        starts from a rule's subject), not the many from principals to their roles."""
        self.g: dict[tuple[str, str], set[str]] = defaultdict(set)  # (engagement, child)
        self.g2: dict[str, set[str]] = defaultdict(set)
        self.granted: dict[str, set[str]] = {"g": set(), "g2": set()}  # roles, per line type
        for line in source.lines:
            if line.ptype not in ("g", "g2"):
                continue
            child, parent = line.fields[:2]
            self.granted[line.ptype].add(parent)
            if child not in names:
                continue
            if line.ptype == "g":
                self.g[line.fields[2], child].add(parent)
            else:
                self.g2[child].add(parent)

    def surely_held(self, role: str, dom: str) -> set[str]:
        """``role`` and the roles every holder of it holds too, in ``dom``.

        A ``g`` holder inherits through ``g`` links of ``*`` (and of ``dom``, when it is
        one engagement), a ``g2`` holder through ``g2`` links only (the model's
        matcher); a role granted both ways gets only what both give, and a principal
        (a name nobody is granted) what either gives it.
        """
        domains = {GLOBAL_DOMAIN, dom}
        by_g = _reach(role, lambda name: [p for d in domains for p in self.g.get((d, name), ())])
        by_g2 = _reach(role, lambda name: self.g2.get(name, ()))
        kinds = [by for by, kind in ((by_g, "g"), (by_g2, "g2")) if role in self.granted[kind]]
        return set.intersection(*kinds) if kinds else by_g | by_g2


def _reach(start: str, neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """``start`` and every name reached from it through ``neighbours``."""
    return _reach_from({start}, neighbours)


def _reach_from(starts: Set[str], neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """``starts`` and every name reached from any of them through ``neighbours``."""
    seen, todo = set(starts), list(starts)
    while todo:
        for name in neighbours(todo.pop()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _segments(pattern: str) -> tuple[list[str], bool]:
    """A path pattern's segments, and whether a final ``/*`` lets it go on below them."""
    if pattern.endswith("/*"):
        return pattern[:-2].split("/"), True
    return pattern.split("/"), False


@functools.lru_cache(maxsize=4096)  # a policy's segments repeat (``:e``, ``findings``)
def _segment_meets(one: str, other: str) -> bool:
    """Some segment matches both (``:name`` is any one; a literal only itself)."""
    if one == other:
        return True
    if REGEX_SPECIALS.search(one) and REGEX_SPECIALS.search(other):
        return True  # both regular expressions: assume they meet
    literal, pattern = (other, one) if REGEX_SPECIALS.search(one) else (one, other)
    return key_match2_pattern(pattern)(literal)


def _meet(one: str, other: str) -> bool:
    """Some path matches both patterns (when unsure: ``True``)."""
    if "*" in (one, other):
        return True
    (a, a_below), (b, b_below) = _segments(one), _segments(other)
    if a_below and b_below:
        deep_enough = True
    elif a_below or b_below:  # the other goes on past the segments above the ``/*``
        deep_enough = len(b) > len(a) if a_below else len(a) > len(b)
    else:
        deep_enough = len(a) == len(b)
    return deep_enough and all(_segment_meets(x, y) for x, y in zip(a, b, strict=False))


def _holds(pattern: str, obj: str) -> bool:
    """``pattern`` matches every path ``obj`` matches (when unsure: ``False``)."""
    if pattern in ("*", obj):
        return True
    if obj == "*":
        return False
    (p, p_below), (o, o_below) = _segments(pattern), _segments(obj)
    if p_below:  # below p's segments: o must go on past them, or itself go on below
        deep_enough = len(o) > len(p) or (o_below and len(o) == len(p))
    else:
        deep_enough = len(o) == len(p) and not o_below
    return deep_enough and all(x == y or x.startswith(":") for x, y in zip(p, o, strict=False))


# child -> [(parent, file:line)] of one domain's g links (or of the g2 links).
Graph = dict[str, list[tuple[str, str]]]


def _graphs(source: PolicySource) -> Iterator[tuple[str, Graph, Graph]]:
    """Each role graph a decision walks, from the decision path's own index
    (``CompiledPolicy``: ``g2``, and per domain ``domain_links``, its ``g`` links with
    those of every pattern domain matching it), each link with its ``file:line``, and
    the links written for the domain itself. Walks start from those only, so the ``*``
    links are walked once per domain that uses them, not once per domain."""
    compiled = CompiledPolicy(source.lines)
    g2 = {
        child: [
            (parent, compiled.link_locations[("g2", GLOBAL_DOMAIN, child, parent)])
            for parent in parents
        ]
        for child, parents in compiled.links("g2").items()
    }
    yield "every engagement (g2)", g2, g2
    for domain in compiled.grant_domains:
        merged: Graph = defaultdict(list)
        for links in compiled.domain_links(domain):
            for child, parents in links.items():
                merged[child] += [
                    (parent, compiled.g_link_location(child, parent, domain)[1])
                    for parent in parents
                ]
        own = {child: merged[child] for child in compiled.links("g", domain)}
        yield domain, own, merged


def _role_graphs(source: PolicySource) -> Iterator[Issue]:
    reported: set[str] = set()
    for domain, own, graph in _graphs(source):
        for issue in (*_cycles(domain, own, graph), *_too_far(domain, own, graph)):
            if issue.location + issue.code not in reported:
                reported.add(issue.location + issue.code)
                yield issue


def _cycles(domain: str, starts: Graph, graph: Graph) -> Iterator[Issue]:
    """A link that leads back to where it starts: its role inherits itself."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in list(starts):
        if start in state:
            continue
        stack = [(start, iter(graph.get(start, ())))]
        state[start] = 1
        while stack:
            node, links = stack[-1]
            step = next(links, None)
            if step is None:
                state[node] = 2
                stack.pop()
                continue
            parent, location = step
            if state.get(parent) == 1:
                message = (
                    f"inheritance loops back: {parent!r} already inherits {node!r} in {domain}, "
                    f"so this link makes a cycle: delete one of the links"
                )
                yield Issue("warning", location, "inheritance_cycle", message)
            elif parent not in state:
                state[parent] = 1
                stack.append((parent, iter(graph.get(parent, ()))))


def _too_far(domain: str, starts: Graph, graph: Graph) -> Iterator[Issue]:
    """A role reached only through more than ``MAX_HOPS`` links is never inherited.

    Each walk stops one link past the limit (the nearest such role is the one named):
    walking on from every start made a long chain quadratic (36 s at 5,000 links).
    """
    for start in starts:
        distance, first = {start: 0}, {start: ""}
        frontier = [start]
        for _ in range(MAX_HOPS + 1):
            following = []
            for node in frontier:
                for parent, location in graph.get(node, ()):
                    if parent not in distance:
                        distance[parent] = distance[node] + 1
                        first[parent] = first[node] or location
                        following.append(parent)
            frontier = following
        beyond = sorted(r for r, hops in distance.items() if hops > MAX_HOPS)
        if beyond:
            role = beyond[0]
            message = (
                f"{start!r} reaches {role!r} in {domain} only through {distance[role]} links; "
                f"a decision follows at most {MAX_HOPS} (as Casbin does), so that grant has no "
                "effect: shorten the chain"
            )
            yield Issue("warning", first[role], "chain_too_long", message)


def _no_route(source: PolicySource, routes: Sequence[RouteShape]) -> Iterator[Issue]:
    """Rules no route's object, action and domain can match: they never apply."""
    for line in source.lines:
        if line.ptype != "p":
            continue
        dom, obj, act, eft = line.fields[1], line.fields[2], line.fields[3], line.fields[4]
        if act != "*" and act.upper() in HTTP_METHODS and act != act.upper():
            continue  # action_case says it already
        effect = "nothing is denied by it" if eft == "deny" else "it grants nothing"
        matched = routes_for(obj, act, routes)
        if matched:
            if dom != GLOBAL_DOMAIN and not any(route.scoped for route in matched):
                yield _warn(
                    line,
                    "no_route",
                    f"the routes at {clip(obj)} are decided gateway-wide (domain *), never in "
                    f"engagement {dom}: the rule never applies ({effect}); write * as its "
                    "domain, or delete the rule",
                )
            continue
        same_object = [r for r in routes if routes_for(obj, "*", [r])]
        if same_object:
            taken = ", ".join(sorted({a for r in same_object for a in (r.actions or {"*"})}))
            message = (
                f"no route at {clip(obj)} takes {act} (they take {taken}): the rule never applies "
                f"({effect}); correct the action, or delete the rule"
            )
        else:
            message = (
                f"no route of this gateway is decided as {clip(obj)}: the rule never applies "
                f"({effect}); correct the path to a route's, or delete the rule"
            )
        yield _warn(line, "no_route", message)


def _grants_outside_routes(source: PolicySource, routes: Sequence[RouteShape]) -> Iterator[Issue]:
    """``g`` grants in one engagement of a role whose rules are all on gateway-wide routes.

    A grant in engagement E only counts for requests decided in E, which only the
    routes whose path names the engagement are; a role whose rules (its own and its
    parents', through any engagement: an over-estimate, so no false warning) only
    match the others (``/admin``) gains nothing from it.
    """
    scoped = [route for route in routes if route.scoped]
    parents = _inheritance(source)
    rules: dict[str, list[PolicyLine]] = defaultdict(list)
    for line in source.of_type("p"):
        rules[line.fields[0]].append(line)
    for line in source.of_type("g"):
        role, dom = line.fields[1], line.fields[2]
        if dom == GLOBAL_DOMAIN or role == CLOSED_WRITER:
            continue
        reached = [p for name in _ancestors(role, parents) for p in rules.get(name, ())]
        if not reached:
            continue  # unknown_role says it already
        if any(routes_for(p.fields[2], p.fields[3], scoped) for p in reached):
            continue
        if not any(routes_for(p.fields[2], p.fields[3], routes) for p in reached):
            yield _warn(
                line,
                "no_route",
                f"no rule of {role} matches a route of this gateway (see the no_route "
                f"warnings on its rules), so this grant in {dom} gives nothing: correct "
                "those rules, or delete this line",
            )
            continue
        yield _warn(
            line,
            "no_route",
            f"every rule of {role} is on routes decided gateway-wide (domain *), where a "
            f"grant in {dom} never counts: grant it with * as the engagement "
            f"(g, {line.fields[0]}, {role}, *) or with g2, or delete this line",
        )
